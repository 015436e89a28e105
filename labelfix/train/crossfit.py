"""Cross-fitting (``labelfix train --folds K``): out-of-sample statistics for every label.

A model trained on a label memorises it, so its own loss on that label is weak evidence
that the label is wrong. With K folds, fold f's model trains on the other K-1 folds (with
the run's mixing, loss and label management) and records the statistics of fold f, which
it never saw. Layout (docs/internals.md):

- ``RUN/folds.npy``: int8 (N,), the fold of every training image (-1: validation rows);
- ``RUN/folds/fold<f>/``: fold f's complete run directory (its split marks fold f as held
  out, 2); each resumes on its own;
- ``RUN/stats/``: the merged held-out statistics (``logits.npy``, ``loss_mean.npy``; each
  row from the model that did not see it), ``state.json`` with ``"out_of_sample": true``;
- ``RUN/checkpoints/{last,best}.pt``: the ensemble of the K fold models (mean of their
  logits), the run's one model for export and predict;
- ``RUN/metrics.csv``: every fold's rows with a ``fold`` column.

Folds are drawn with a seeded permutation, stratified on the rarest positive class of each
image, so every class has positives in every fold when it has at least K of them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.labels import POS, LabelSet
from labelfix.train import stats as stats_mod
from labelfix.train.config import TrainConfig, read_run_config, run_config_document

HELD_OUT = 2


def assign_folds(labels: np.ndarray, train_rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """int8 (N,): fold 0..k-1 of each training row, -1 elsewhere.

    Rows are ordered by the training-set frequency of their rarest positive class (rows
    without a positive last), ties in a seeded random order, and dealt round-robin, so
    each class's positives spread evenly over the folds. Raises one clear line when a
    class that has positives has fewer than ``k`` of them."""
    labels = np.asarray(labels)
    rows = np.asarray(train_rows)
    pos = labels[rows] == POS
    counts = pos.sum(0)
    thin = np.flatnonzero((counts > 0) & (counts < k))
    if thin.size:
        raise LabelfixError(f"--folds {k}: larger than the smallest class: class column {int(thin[0])} has "
                            f"{int(counts[thin[0]])} training positives; use --folds <= {int(counts[thin].min())}")
    rarity = np.where(pos, counts[None, :], np.iinfo(np.int64).max).min(1)
    shuffle = np.random.default_rng(seed + 7907).permutation(rows.size)
    order = shuffle[np.argsort(rarity[shuffle], kind="stable")]
    folds = np.full(labels.shape[0], -1, dtype=np.int8)
    folds[rows[order]] = np.arange(rows.size) % k
    return folds


def fold_dir(run: Path, f: int) -> Path:
    return Path(run) / "folds" / f"fold{f}"


def _complete(run: Path, epochs: int) -> bool:
    state = stats_mod.read_state(Path(run) / "stats")
    return bool(state.get("complete")) and int(state.get("last_epoch", -1)) + 1 >= epochs \
        and (Path(run) / "checkpoints" / "last.pt").exists()


def train_folds(cfg: TrainConfig, callbacks: list | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Cross-fit ``cfg.folds`` models into ``cfg.out`` (module docstring); returns the
    summary of :func:`labelfix.train.train` with every fold's metrics rows."""
    from labelfix.io import read_labels
    from labelfix.train.data import read_validation, split_indices
    from labelfix.train.distributed import cleanup, init_distributed, resolve_device
    from labelfix.train.engine import Trainer

    cfg = cfg.validate()
    out = Path(cfg.out)
    k = cfg.folds
    say = log or (lambda s: None)
    dist = init_distributed(resolve_device(cfg.device).type)
    try:
        if cfg.resume:
            if not (out / "folds.npy").exists():
                raise LabelfixError(f"{out / 'folds.npy'}: missing; not a cross-fitted run to resume")
            from labelfix.train.checkpoint import check_resume_compatible

            check_resume_compatible(read_run_config(out), cfg, out)
            labelset = LabelSet.load(out)
            split = np.load(out / "split.npy")
            folds = np.load(out / "folds.npy")
        else:
            if (out / "folds.npy").exists() or (out / "checkpoints" / "last.pt").exists():
                raise LabelfixError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
            labelset = read_labels(cfg.data, format=cfg.format, images=cfg.images, unlabeled=cfg.unlabeled,
                                   class_descriptions=cfg.class_descriptions)
            split = split_indices(labelset.num_images, cfg.val_split, cfg.seed)
            folds = assign_folds(labelset.labels, np.flatnonzero(split == 0), k, cfg.seed)
            if dist.is_main:
                out.mkdir(parents=True, exist_ok=True)
                labelset.save(out)
                atomic.write_npy(out / "split.npy", split)
                atomic.write_npy(out / "folds.npy", folds)
        if dist.is_main:
            extra = {"images": int(labelset.num_images), "classes": int(labelset.num_classes),
                     "folds": [int((folds == f).sum()) for f in range(k)],
                     "source": str(labelset.source.get("path", cfg.data))}
            atomic.write_text(out / "config.yaml", run_config_document(cfg, labelset.fingerprint(), extra))
        rows: list[dict] = []
        for f in range(k):
            sub = fold_dir(out, f)
            sub_cfg = dataclasses.replace(cfg, folds=0, out=str(sub), resume=(sub / "checkpoints" / "last.pt").exists())
            if sub_cfg.resume and _complete(sub, cfg.epochs):
                say(f"fold {f + 1}/{k}: complete")
            else:
                say(f"fold {f + 1}/{k}: training on {int(((folds >= 0) & (folds != f)).sum())} images, "
                    f"holding out {int((folds == f).sum())}")
                fold_split = np.where(folds == f, HELD_OUT, split).astype(np.int8)
                # --frozen: one embedding in RUN/features for every fold (the backbone does not train)
                Trainer(sub_cfg, callbacks=callbacks, log=log, labelset=labelset, split=fold_split,
                        features_dir=out / "features", keep_process_group=True).fit()
            frame = pd.read_csv(sub / "metrics.csv")
            frame.insert(0, "fold", f)
            rows += frame.to_dict("records")
        if dist.is_main:
            merge_folds(out, labelset, folds, k, cfg.epochs)
            atomic.write_csv(out / "metrics.csv", pd.DataFrame(rows))
        say(f"cross-fitted {k} folds: held-out statistics in {out / 'stats'}, ensemble in {out / 'checkpoints'}")
        return {"epochs": cfg.epochs, "metrics": rows, "skipped": 0, "out": str(out), "folds": k}
    finally:
        cleanup(dist)


def merge_folds(out: Path, labelset: LabelSet, folds: np.ndarray, k: int, epochs: int) -> None:
    """Write the held-out statistics and the ensemble checkpoints of a cross-fitted run
    (idempotent: a run killed here redoes it on resume)."""
    n, kk = labelset.labels.shape
    stats = out / "stats"
    stats.mkdir(parents=True, exist_ok=True)
    for name, dtype in (("logits", np.float16), ("loss_mean", np.float32)):
        with atomic.atomic_memmap(stats / f"{name}.npy", (n, kk), dtype, fill=np.nan) as dst:
            for f in range(k):
                src = np.load(fold_dir(out, f) / "stats" / f"{name}.npy", mmap_mode="r")
                rows = np.flatnonzero(folds == f) if f else np.flatnonzero((folds == f) | (folds < 0))
                dst[rows] = src[rows]
    stats_mod.write_state(stats, epochs, epochs - 1, complete=True, out_of_sample=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    for which in ("last", "best"):
        members = [torch.load(fold_dir(out, f) / "checkpoints" / f"{which}.pt", map_location="cpu",
                              weights_only=True) for f in range(k)]
        with atomic.atomic_path(out / "checkpoints" / f"{which}.pt") as tmp:
            torch.save(ensemble_checkpoint(members), tmp)


def ensemble_checkpoint(members: list[dict]) -> dict:
    """A labelfix checkpoint holding several models of one ``model_config``
    (``model_config["ensemble"]`` = their count; ``model`` keys ``members.<i>.<key>``);
    ``labelfix.models.model_from_checkpoint`` rebuilds it as the mean of their logits."""
    first = members[0]
    config = dict(first["model_config"], ensemble=len(members))
    state = {f"members.{i}.{key}": value for i, m in enumerate(members) for key, value in m["model"].items()}
    ema = None
    if all(m.get("ema") is not None for m in members):
        ema = {f"members.{i}.{key}": value for i, m in enumerate(members) for key, value in m["ema"].items()}
    return {"model": state, "ema": ema, "model_config": config, "classes": first.get("classes"),
            "epoch": min(int(m.get("epoch", 0)) for m in members), "run_fingerprint": None}
