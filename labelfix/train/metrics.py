"""Validation mAP on partially labeled data, overall and per class group.

mAP follows the evaluation protocol in docs/methods.md: per class, sklearn's
``average_precision_score`` on the *known* cells only (unknown = -1 cells are skipped);
classes whose known cells hold no positive or no negative have no AP and are left out
of every mean. Class groups many / medium / few are cut by each class's number of
positives in the *training* labels. The BalanceMix paper's COCO cuts (>10,000 /
1,000-10,000 / <1,000 positives over 117,266 training images) are scaled to the
dataset (``scaled``: cuts at 8.53 % and 0.853 % of the training images), or the classes
are split into thirds by positive count (``tertile``).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

COCO_TRAIN_IMAGES = 117_266
COCO_CUTS = (10_000, 1_000)
GROUPS = ("many", "medium", "few")


def per_class_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP per class on known cells.

    Args:
        scores: float (N, K), any monotone score (logits or probabilities).
        labels: int (N, K) with 1 / 0 / -1 (unknown).
    Returns:
        float64 (K,), NaN where the class has no known positive or no known negative.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ")
    ap = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        known = labels[:, k] >= 0
        y = labels[known, k]
        if y.size == 0 or y.min() == y.max():
            continue
        ap[k] = average_precision_score(y, scores[known, k])
    return ap


def class_groups(pos_counts: np.ndarray, num_images: int, mode: str = "scaled") -> np.ndarray:
    """Group of each class: 0 = many, 1 = medium, 2 = few.

    Args:
        pos_counts: int (K,) positives per class in the training labels.
        num_images: training images (for ``scaled``).
        mode: ``scaled`` (COCO cuts times num_images / 117,266; many is > upper cut,
            few is < lower cut) or ``tertile`` (thirds by rank of positive count,
            most positives = many; ties broken by class order).
    """
    pos_counts = np.asarray(pos_counts, dtype=np.float64)
    if mode == "scaled":
        hi = COCO_CUTS[0] * num_images / COCO_TRAIN_IMAGES
        lo = COCO_CUTS[1] * num_images / COCO_TRAIN_IMAGES
        return np.where(pos_counts > hi, 0, np.where(pos_counts >= lo, 1, 2)).astype(np.int8)
    if mode == "tertile":
        k = pos_counts.size
        order = np.argsort(-pos_counts, kind="stable")
        groups = np.empty(k, dtype=np.int8)
        groups[order] = (np.arange(k) * 3 // max(k, 1)).astype(np.int8)
        return groups
    raise ValueError(f"unknown class-group mode {mode!r}")


def map_report(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """``{"map", "map_many", "map_medium", "map_few"}`` in percent (NaN if empty)."""
    ap = per_class_ap(scores, labels)

    def mean(mask):
        vals = ap[mask & ~np.isnan(ap)]
        return float(vals.mean() * 100) if vals.size else float("nan")

    out = {"map": mean(np.ones_like(ap, dtype=bool))}
    for g, name in enumerate(GROUPS):
        out[f"map_{name}"] = mean(np.asarray(groups) == g)
    return out
