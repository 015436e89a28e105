"""Benchmark noise injection (BalanceMix protocol, methods.md "Noise injection").

Array-in / array-out on int8 (N, K) label matrices (1 / 0 / -1). Every function is
seeded and leaves its input untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from labelfix.labels import NEG, POS, UNK

KINDS = ("mislabel", "flip", "single-positive", "missing")


@dataclass
class NoiseResult:
    """``labels``: the noisy int8 (N, K) matrix. ``moves``: ``{(row, old_col): new_col}``
    for mislabel noise (so that boxes can follow the new class)."""

    labels: np.ndarray
    moves: dict = field(default_factory=dict)


def mislabel(labels: np.ndarray, rate: float, rng: np.random.Generator) -> NoiseResult:
    """Class-dependent mislabeling: a positive of class i becomes class j != i with
    probability ``rate * N_j / (N - N_i)`` (N_k positives of class k, N their sum), so each
    positive is moved with total probability ``rate``.

    A positive moved onto a class that is already positive on that image simply
    disappears (the image keeps one positive of class j).
    """
    out = np.array(labels, dtype=np.int8, copy=True)
    n_k = (labels == POS).sum(0).astype(np.float64)
    rows, cols = np.nonzero(labels == POS)
    moved = rng.random(len(rows)) < rate
    rows, cols = rows[moved], cols[moved]
    new_cols = np.empty_like(cols)
    for i in np.unique(cols):  # one categorical draw per source class, vectorised
        sel = cols == i
        p = n_k.copy()
        p[i] = 0.0
        if p.sum() <= 0:  # only one class has positives: nowhere to move to
            new_cols[sel] = i
            continue
        new_cols[sel] = rng.choice(len(p), size=int(sel.sum()), p=p / p.sum())
    keep = new_cols != cols
    rows, cols, new_cols = rows[keep], cols[keep], new_cols[keep]
    out[rows, cols] = NEG
    out[rows, new_cols] = POS
    moves = {(int(r), int(i)): int(j) for r, i, j in zip(rows, cols, new_cols)}
    return NoiseResult(out, moves)


def flip(labels: np.ndarray, rate: float, rng: np.random.Generator) -> NoiseResult:
    """Every known cell flips (1 <-> 0) independently with probability ``rate``."""
    out = np.array(labels, dtype=np.int8, copy=True)
    hit = (labels != UNK) & (rng.random(labels.shape) < rate)
    out[hit] = 1 - out[hit]
    return NoiseResult(out)


def single_positive(labels: np.ndarray, rng: np.random.Generator) -> NoiseResult:
    """Keep one random positive per image; every other cell becomes unknown. An image
    without positives becomes all unknown."""
    out = np.full(labels.shape, UNK, np.int8)
    pos = labels == POS
    # a random positive per row: argmax of random keys masked to the positives
    keys = np.where(pos, rng.random(labels.shape), -1.0)
    pick = keys.argmax(1)
    has = pos.any(1)
    out[np.flatnonzero(has), pick[has]] = POS
    return NoiseResult(out)


def missing(labels: np.ndarray, rate: float, rng: np.random.Generator) -> NoiseResult:
    """Each known cell becomes unknown independently with probability ``rate``."""
    out = np.array(labels, dtype=np.int8, copy=True)
    out[(labels != UNK) & (rng.random(labels.shape) < rate)] = UNK
    return NoiseResult(out)


def inject_noise(labels: np.ndarray, kind: str, rate: float | None = None, seed: int = 0) -> NoiseResult:
    """Apply one noise protocol. ``rate`` is ignored only by ``single-positive`` (which has
    none) and required by the others; ``seed`` is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r}: expected a non-negative integer")
    rng = np.random.default_rng(seed)
    if kind == "single-positive":
        if rate is not None:
            raise ValueError("single-positive noise takes no rate")
        return single_positive(labels, rng)
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(KINDS)}")
    if rate is None or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{kind} noise needs a rate in [0, 1], got {rate!r}")
    return {"mislabel": mislabel, "flip": flip, "missing": missing}[kind](labels, rate, rng)


def changed_cells(labelset, noisy: np.ndarray) -> "pd.DataFrame":
    """One row per cell whose label differs: image_id, file_name, class, category_id,
    true, noisy (values 1 / 0 / unknown)."""
    import pandas as pd

    from labelfix.labels import STATE_NAMES

    true = np.asarray(labelset.labels)
    rows, cols = np.nonzero(true != noisy)
    return pd.DataFrame(
        {
            "image_id": labelset.images["image_id"].to_numpy()[rows],
            "file_name": labelset.images["file_name"].to_numpy()[rows],
            "class": labelset.classes["name"].to_numpy()[cols],
            "category_id": labelset.classes["category_id"].to_numpy()[cols],
            "true": [STATE_NAMES[int(v)] for v in true[rows, cols]],
            "noisy": [STATE_NAMES[int(v)] for v in noisy[rows, cols]],
        }
    )


def write_noisy_coco(labelset, kind: str, rate: float | None, seed: int, out, *, overwrite: bool = False) -> tuple:
    """Inject noise into ``labelset`` and write ``out`` (COCO JSON) plus
    ``<out stem>.changes.csv`` (the true label of every changed cell).

    ``overwrite=False`` refuses when either file exists (a run may train on it, a
    benchmark score against its change log). Returns ``(out_path, changes_path, changes
    DataFrame)``.
    """
    from pathlib import Path

    from labelfix.io import atomic
    from labelfix.io.coco_write import rewrite_coco, source_coco, with_image_root, write_coco

    from labelfix.io.outputs import change_log_for, check_outputs

    out = Path(out)
    changes_path = change_log_for(out)
    check_outputs({"--out": out, "change log": changes_path}, [labelset.source.get("path")], overwrite=overwrite)
    result = inject_noise(np.asarray(labelset.labels), kind, rate, seed)
    data = rewrite_coco(source_coco(labelset), labelset, result.labels, result.moves)
    data = with_image_root(data, labelset)
    data["labelfix"]["noise"] = {"kind": kind, "rate": rate, "seed": seed}
    changes = changed_cells(labelset, result.labels)
    with atomic.output_set():   # both files or neither
        atomic.write_csv(changes_path, changes)
        write_coco(out, data)
    return out, changes_path, changes
