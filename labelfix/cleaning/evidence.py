"""The evidence ``labelfix clean`` reads from a run directory, beyond the model's own
statistics: which embedding to search for neighbours, and the neighbours' label votes.

Embedding spaces, in order of preference:

1. ``RUN/features/train.npy`` (``--frozen``): the pretrained backbone's features, which
   never saw a label: every image's neighbours among all training images;
2. a cross-fitted run (``RUN/folds.npy``): each fold model's final embedding
   (``folds/round<R>/fold<f>/stats/embeddings.npy``); a held-out image's neighbours are
   searched among that fold model's *training* images, so the vote is out of sample too;
3. ``RUN/stats/embeddings.npy``: the run's final model, every image among the others.

Votes count known labels only; in a run with rounds, the cells the last round trained as
unknown (the previous round's ``suspicious.npy``) do not vote either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.cleaning.neighbours import DEFAULT_K, duplicate_groups, neighbour_estimates
from labelfix.errors import LabelfixError
from labelfix.io.arrays import load_npy
from labelfix.labels import UNK
from labelfix.run import Run

NO_PAIRS = np.zeros((0, 2), dtype=np.int64)


def _complete_array(path: Path, n: int) -> np.ndarray | None:
    """The finished (n, D) embedding at ``path`` (memory-mapped), None when it is not
    there or not finished; a damaged one (unreadable, not float (n, D)) is one line
    naming it."""
    from labelfix.train.features import feature_info

    if not (path.exists() and feature_info(path).get("complete")):
        return None
    arr = load_npy(path, mmap_mode="r")
    if arr.dtype.kind != "f" or arr.ndim != 2 or arr.shape[0] != n:
        raise LabelfixError(f"{path}: {arr.dtype} {arr.shape}: expected a float embedding of the run's {n} images "
                            f"(rows, dimensions)")
    return arr


def voting_labels(run: Run) -> np.ndarray:
    """int8 (N, K): the given labels, with the cells the last cross-fitting round trained
    as unknown set to unknown."""
    given = np.array(run.labelset.labels, dtype=np.int8)
    rounds = int(run.stats_state.get("rounds") or 1)
    if rounds > 1:
        mask = run.path / "stats" / f"round{rounds - 1}" / "suspicious.npy"
        if mask.exists():
            given[load_npy(mask)] = UNK
    return given


def neighbour_votes(run: Run, k: int = DEFAULT_K) -> tuple[np.ndarray | None, np.ndarray]:
    """(estimate float32 (N, K) or None, near-duplicate pairs int64 (P, 2)): the k-NN
    label estimate of every image (NaN where no neighbour knows the class) from the run's
    best embedding space (module docstring), and the neighbour pairs that are near-
    duplicates."""
    n, kk = run.labelset.labels.shape
    votes = voting_labels(run)
    split = np.asarray(run.split)
    frozen = _complete_array(run.path / "features" / "train.npy", n)
    if frozen is not None:
        res = neighbour_estimates(frozen, votes, np.arange(n), np.flatnonzero(split == 0), k=k)
        return res.estimate, res.duplicates
    folds = run.folds
    if folds is not None:
        rounds = int(run.stats_state.get("rounds") or 1)
        out = np.full((n, kk), np.nan, dtype=np.float32)
        pairs = []
        for f in range(int(folds.max()) + 1):
            emb = _complete_array(run.path / "folds" / f"round{rounds}" / f"fold{f}" / "stats" / "embeddings.npy", n)
            if emb is None:
                return None, NO_PAIRS
            query = np.flatnonzero((folds == f) | ((folds < 0) if f == 0 else False))
            res = neighbour_estimates(emb, votes, query, np.flatnonzero((folds >= 0) & (folds != f)), k=k)
            out[res.rows] = res.estimate
            pairs.append(res.duplicates)
        return out, np.concatenate(pairs)
    emb = _complete_array(run.path / "stats" / "embeddings.npy", n)
    if emb is None:
        return None, NO_PAIRS
    res = neighbour_estimates(emb, votes, np.arange(n), np.flatnonzero(split == 0), k=k)
    return res.estimate, res.duplicates


def duplicates_table(run: Run, pairs: np.ndarray) -> pd.DataFrame:
    """Near-duplicate groups (``neighbours.duplicate_groups`` of the neighbour pairs) with
    image ids and file names: columns group, image_id, file_name, split ("train" /
    "validation"), conflicts, crosses_split."""
    ls = run.labelset
    groups = duplicate_groups(pairs, np.asarray(ls.labels), np.asarray(run.split), ls.class_names)
    rows = groups["row"].to_numpy(dtype=np.int64)
    return pd.DataFrame({
        "group": groups["group"].to_numpy(),
        "image_id": ls.images["image_id"].to_numpy()[rows],
        "file_name": ls.images["file_name"].astype(str).to_numpy()[rows],
        "split": np.where(np.asarray(run.split)[rows] == 1, "validation", "train"),
        "conflicts": groups["conflicts"].to_numpy(),
        "crosses_split": groups["crosses_split"].to_numpy(),
    })
