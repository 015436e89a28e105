# Baselines for label-issue detection: confident learning through cleanlab's multi-label
# API (Northcutt, Jiang & Chuang, JAIR 2021; Thyagarajan et al. 2023, "Identifying
# incorrect annotations in multi-label classification data", cleanlab 2.x
# multilabel_classification.filter / rank) on K-fold out-of-sample probabilities, and
# small-loss ranking (the per-cell training loss as the issue score; the "small-loss
# trick" of Co-teaching, Han et al., NeurIPS 2018, Sec. 2).
"""Baseline cleaners for ``labelfix bench`` (array-in / array-out). cleanlab's
out-of-sample probabilities come from ``labelfix train --folds`` (the same folds as
labelfix's own detection run, ``labelfix.bench.runner``).

- :func:`predict_probs`: sigmoid probabilities of a trained checkpoint on rows of a LabelSet.
- :func:`cleanlab_issues`: cleanlab's per-class issues and quality scores. cleanlab has
  no unknown state: **unknown cells are given to it as negatives** (a flagged unknown
  cell therefore reads as a suggested addition).
- :func:`loss_ranking`: the final-epoch per-cell BCE of the masked-BCE model as the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfix.labels import POS, UNK, LabelSet


# --------------------------------------------------------------------------- predictions
def predict_probs(checkpoint, labelset: LabelSet, rows=None, *, batch_size: int = 128,
                  device: str = "cpu") -> np.ndarray:
    """Probabilities of a labelfix checkpoint on images of ``labelset``.

    Args:
        checkpoint: path of a ``.pt`` checkpoint (docs/internals.md) or its loaded dict.
        labelset: images to score (labels are not used).
        rows: int (M,) row indices (default: all N).
        batch_size: images per forward pass.
        device: torch device.
    Returns:
        float32 (M, K) sigmoid probabilities with the evaluation transform
        (``create_transforms(train=False)``, the run's own); NaN rows for images that
        failed to decode.
    """
    import torch
    from torch.utils.data import DataLoader

    from labelfix.data.dataset import PartialLabelDataset, collate_skip
    from labelfix.data.transforms import create_transforms
    from labelfix.models import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    model = model_from_checkpoint(ckpt).to(device).eval()
    mc = ckpt["model_config"]
    tf = create_transforms(int(mc["img_size"]), mc["mean"], mc["std"], train=False,
                           interpolation=mc.get("interpolation", "bilinear"))
    rows = np.arange(labelset.num_images) if rows is None else np.asarray(rows, dtype=np.int64)
    ds = PartialLabelDataset(labelset, tf, indices=rows)
    out = np.full((rows.size, labelset.num_classes), np.nan, dtype=np.float32)
    pos = {int(r): i for i, r in enumerate(rows)}
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_skip)
    with torch.no_grad():
        for images, _labels, indices, _failed in loader:
            if images is None:
                continue
            p = torch.sigmoid(model(images.to(device)).float()).cpu().numpy()
            out[[pos[int(i)] for i in indices]] = p
    return out


# --------------------------------------------------------------------------- cleanlab
@dataclass
class BaselineIssues:
    """One baseline's output, in the form :func:`labelfix.bench.metrics.detection_metrics`
    takes: ``score`` float (N, K), ``suggested`` int8 (N, K) (-1 = no suggestion),
    optional ``image_score`` float (N,) and ``image_flagged`` bool (N,)."""

    score: np.ndarray
    suggested: np.ndarray
    image_score: np.ndarray | None = None
    image_flagged: np.ndarray | None = None


def _suggest_flips(given: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """Flagged known cells -> the other label; flagged unknown cells -> 1; unflagged
    known cells keep their label; unflagged unknown cells -> -1 (no suggestion)."""
    given = np.asarray(given)
    out = given.astype(np.int8, copy=True)
    known = given != UNK
    out[flagged & known] = 1 - given[flagged & known]
    out[flagged & ~known] = POS
    return out


def cleanlab_issues(given, probs, *, filter_by: str = "prune_by_noise_rate", n_jobs: int = 1) -> BaselineIssues:
    """cleanlab's multi-label issues with unknown cells as negatives.

    - per cell: ``filter.find_multilabel_issues_per_class`` (flag) and
      ``rank.get_label_quality_scores_per_class(method="self_confidence")`` (quality: p
      for a given 1, 1 - p for a given 0); score = 1 - quality; a flagged cell's
      suggestion is the other label (an unknown cell flagged -> 1);
    - per image: ``filter.find_label_issues`` (flag) and 1 -
      ``rank.get_label_quality_scores`` (cleanlab's default aggregation, exponential
      moving average with alpha 0.8) as the score.

    Args:
        given: int8 (N, K) 1 / 0 / -1.
        probs: float (N, K) out-of-sample probabilities (NaN rows are scored as 0.5).
    """
    from cleanlab.multilabel_classification import filter as cl_filter
    from cleanlab.multilabel_classification import rank as cl_rank

    given = np.asarray(given)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != given.shape:
        raise ValueError(f"probs {probs.shape} and given {given.shape} differ")
    probs = np.clip(np.nan_to_num(probs, nan=0.5), 1e-6, 1 - 1e-6)
    labels = [np.flatnonzero(row == POS).tolist() for row in given]
    flagged = np.asarray(cl_filter.find_multilabel_issues_per_class(labels, probs, filter_by=filter_by,
                                                                    n_jobs=n_jobs), dtype=bool)
    per_class = cl_rank.get_label_quality_scores_per_class(labels, probs, method="self_confidence")
    # cleanlab 2.9 returns an (N, K) array; its docstring describes a list of K (N,) arrays
    quality = (np.asarray(per_class, dtype=np.float64) if isinstance(per_class, np.ndarray)
               else np.column_stack([np.asarray(q, dtype=np.float64) for q in per_class]))
    image_flagged = np.asarray(cl_filter.find_label_issues(labels, probs, filter_by=filter_by, n_jobs=n_jobs),
                               dtype=bool)
    image_quality = np.asarray(cl_rank.get_label_quality_scores(labels, probs), dtype=np.float64)
    return BaselineIssues(score=(1.0 - quality).astype(np.float32), suggested=_suggest_flips(given, flagged),
                          image_score=1.0 - image_quality, image_flagged=image_flagged)


# --------------------------------------------------------------------------- loss ranking
def loss_ranking(given, logits) -> BaselineIssues:
    """Small-loss ranking: the per-cell BCE of the masked-BCE model's final evaluation
    pass (``RUN/stats/logits.npy``) against the given label is the score; unknown cells
    are scored against 0 (as training records them), so a confident positive on an
    unknown cell ranks high. Suggestion rule: the cell's loss exceeds log 2, i.e. the
    model puts the given label below probability 0.5 -> the other label; an unknown cell
    with p > 0.5 -> 1.

    Args:
        given: int8 (N, K) 1 / 0 / -1.
        logits: float (N, K) logits (NaN rows: no score, no suggestion).
    """
    from labelfix.cleaning.scores import bce_losses

    given = np.asarray(given)
    z = np.asarray(logits, dtype=np.float32)
    loss = bce_losses(np.nan_to_num(z, nan=0.0), given, logits=True)
    loss = np.where(np.isnan(z), np.nan, loss).astype(np.float32)
    with np.errstate(invalid="ignore"):
        flagged = loss > np.log(2.0)
    return BaselineIssues(score=loss, suggested=_suggest_flips(given, flagged))
