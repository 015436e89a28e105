# Single-positive losses: Cole et al., "Multi-Label Learning from Single Positive
# Labels", CVPR 2021: the expected positive regularisation loss (EPR) and regularised
# online label estimation (ROLE) of its method section; reductions and the 1 / K^2
# scaling of the regulariser as in the authors' code (elijahcole/single-positive-multi-label).
"""EPR and ROLE, plus ``estimate_kappa`` (from labels) and ``kappa_from_held_out`` (from a model).

Both losses reduce like the authors' code: the per-cell terms are summed and divided by
B x K (all cells of the batch), then the regulariser is added:

    R(q) = (mean over batch of sum_k q_k - kappa)^2 / K^2.

``weight`` multiplies the per-cell terms, not the regulariser.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.labels import NEG, POS, UNK
from labelfix.losses.bce import check_inputs, reduce_cells

#: how to give kappa when the labels cannot estimate it
PASS_KAPPA = ("pass kappa, the expected positives per image (labelfix train --loss-kwargs '{kappa: 2.9}'; "
              "COCO 2.9, VOC 1.5)")
from labelfix.numeric import logit, sigmoid


def estimate_kappa(labels: np.ndarray, chunk_rows: int = 1 << 16) -> float:
    """Estimate kappa, the expected number of positives per image, from given labels.

    kappa = sum_k (#positives of k / #known cells of k): each class's positive rate
    among its known cells, summed over classes. This assumes the known cells of a class
    are a random sample of its images (missing at random). With fully labeled data it is
    exactly the mean number of positives per image.

    Args:
        labels: int8 (N, K), 1 / 0 / -1 (may be a memmap; read in row chunks).

    Raises:
        LabelfixError: when the labels cannot identify kappa: a class with known cells
            but no known negative (e.g. the single-positive setting, where the positive
            rate among known cells is 1 by construction), a class without any known
            cell, or no positive at all. Pass kappa explicitly then (COCO 2.9, VOC 1.5).
    """
    if labels.ndim != 2:
        raise LabelfixError(f"labels: shape {labels.shape}: expected (N, K)")
    k = labels.shape[1]
    pos = np.zeros(k, dtype=np.int64)
    neg = np.zeros(k, dtype=np.int64)
    for start in range(0, labels.shape[0], chunk_rows):
        block = np.asarray(labels[start:start + chunk_rows])
        pos += (block == POS).sum(axis=0)
        neg += (block == NEG).sum(axis=0)
    known = pos + neg
    if (known == 0).any():
        missing = int(np.flatnonzero(known == 0)[0])
        raise LabelfixError(f"labels: class {missing}: no known cell, kappa cannot be estimated; {PASS_KAPPA}")
    if (neg == 0).any():
        bad = int(np.flatnonzero(neg == 0)[0])
        raise LabelfixError(
            f"labels: class {bad}: no known negative (single-positive style labels), the positive "
            f"rate is not identifiable; {PASS_KAPPA}")
    if pos.sum() == 0:
        raise LabelfixError(f"labels: no positive cell, kappa cannot be estimated; {PASS_KAPPA}")
    return float((pos / known).sum())


def kappa_from_held_out(logits: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None,
                        label_smoothing: float = 0.0, chunk_rows: int = 1 << 16) -> float:
    """Estimate kappa on positive-only labels from a held-out model's probabilities.

    Elkan & Noto, "Learning Classifiers from Only Positive and Unlabeled Data", KDD 2008,
    estimator e1: a model trained to tell given positives from the rest (here AN, unknown
    as negative) outputs g(x) = c * P(y = 1 | x), where c is the chance that a positive
    cell was given. On held-out rows c is the mean of g over the given positives, so the
    true positives number #given / c and

        kappa = (#given positives / c) / #images.

    Exact when every positive is given at the same rate c (their assumption). Under
    single-positive labels c = 1 / m varies with the image's positive count m, and a
    perfect model gives the harmonic mean of m, below the mean; a real model's lower
    confidence on the given positives pushes the other way: on the single-positive demo
    data (true kappa 2.12) round 1's held-out models gave 2.21 / 2.32 (AN-LS, two noise
    seeds) and 2.29 / 2.50 (AN). c is pooled over classes (per class: 2.98 / 3.20 from
    AN-LS; per image, the mean of 1 / g of the given positive: 4.17 / 4.38). A model
    trained with smoothed targets eps + (1 - 2 eps) t (AN-LS) is unsmoothed first:
    g = (p - eps) / (1 - 2 eps).

    Args:
        logits: float (N, K) held-out logits (may be a memmap; NaN rows are skipped).
        labels: int8 (N, K), 1 / 0 / -1, the labels the model trained on.
        rows: int (M,) rows to use (default: all); rows with NaN logits are skipped.
        label_smoothing: eps of the model's training targets.

    Returns:
        kappa, clipped to [given positives per image, K].

    Raises:
        LabelfixError: no held-out row with a given positive.
    """
    c, given, images = _given_rate(logits, labels, rows, label_smoothing, chunk_rows)
    k = labels.shape[1]
    return float(min(k, max(given / images, given / c / images)))


def _unsmooth(z: np.ndarray, label_smoothing: float) -> np.ndarray:
    """g = (p - eps) / (1 - 2 eps) in [0, 1]: the probability of a model trained on smoothed
    targets eps + (1 - 2 eps) t, on the unsmoothed scale (float64)."""
    return np.clip((sigmoid(z) - label_smoothing) / (1.0 - 2.0 * label_smoothing), 0.0, 1.0)


def _given_rate(logits, labels, rows, label_smoothing: float, chunk_rows: int) -> tuple[float, float, int]:
    """(c, given positives, images) of :func:`kappa_from_held_out`: c = mean g over the
    given positives of ``rows`` (rows with NaN logits skipped)."""
    rows = np.arange(labels.shape[0]) if rows is None else np.asarray(rows)
    given = mass = 0.0
    images = 0
    for start in range(0, rows.size, chunk_rows):
        idx = rows[start:start + chunk_rows]
        z = np.asarray(logits[idx], dtype=np.float64)
        ok = ~np.isnan(z).any(axis=1)
        pos = np.asarray(labels[idx])[ok] == POS
        g = _unsmooth(z[ok], label_smoothing)
        given += float(pos.sum())
        mass += float(g[pos].sum())
        images += int(ok.sum())
    if not given or not mass:
        raise LabelfixError("kappa: no held-out row with a given positive (or all of them at probability 0); "
                            f"{PASS_KAPPA}")
    return mass / given, given, images


def estimates_from_held_out(logits: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None,
                            label_smoothing: float = 0.0, assumed_negative: bool = True,
                            chunk_rows: int = 1 << 16) -> np.ndarray:
    """P(y = 1 | x) of every cell from a held-out model: the warm start of ROLE's label
    table in a refit round (labelfix's choice, docs/training.md "Choosing the loss").

    A model that trained unknown cells as negatives (``assumed_negative``: AN, AN-LS) gives
    g(x) = c P(y = 1 | x) (Elkan & Noto 2008, as in :func:`kappa_from_held_out`), so the
    estimate is g / c, with c from the given positives of ``rows``; AN-LS's smoothing is
    undone first. Any other model's probability is its estimate as it is.

    Args:
        logits: float (N, K) held-out logits (may be a memmap; NaN rows stay NaN).
        labels: int8 (N, K), 1 / 0 / -1, the labels the model trained on.
        rows: int (M,) rows whose given positives estimate c (default: all).
        label_smoothing: eps of the model's training targets.
        assumed_negative: the model trained unknown cells as negatives.

    Returns:
        float32 (N, K) in [0, 1] (NaN where the logits are NaN).
    """
    c = _given_rate(logits, labels, rows, label_smoothing, chunk_rows)[0] if assumed_negative else 1.0
    out = np.empty(np.shape(logits), dtype=np.float32)
    for start in range(0, out.shape[0], chunk_rows):
        z = np.asarray(logits[start:start + chunk_rows], dtype=np.float64)
        g = _unsmooth(z, label_smoothing if assumed_negative else 0.0)
        out[start:start + chunk_rows] = np.where(np.isnan(z), np.nan, np.clip(g / c, 0.0, 1.0))
    return out


def expected_positive_regularizer(prob: torch.Tensor, kappa: float) -> torch.Tensor:
    """R(q) = (mean_b sum_k q_bk - kappa)^2 / K^2 for probabilities ``prob`` (B, K)."""
    k = prob.shape[1]
    return (prob.sum(dim=1).mean() - kappa) ** 2 / (k * k)


def _observed_term(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                   observed_negatives: bool) -> torch.Tensor:
    """Per-cell loss on known cells: ``-t log p`` (the paper's term on observed
    positives, soft-target form), plus ``-(1 - t) log(1 - p)`` when
    ``observed_negatives``. Zero on unknown cells."""
    cell = -target * F.logsigmoid(logits)
    if observed_negatives:
        cell = cell - (1.0 - target) * F.logsigmoid(-logits)
    return torch.where(known, cell, torch.zeros_like(cell))


def _check_kappa(kappa: float, name: str) -> float:
    if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real):
        raise LabelfixError(f"loss {name}: kappa={kappa!r}: expected a finite number > 0")
    kappa = float(kappa)
    if not math.isfinite(kappa) or kappa <= 0:   # every image has a positive: 0 expected ones is no prior
        raise LabelfixError(f"loss {name}: kappa={kappa}: expected a finite value > 0 (positives per image)")
    return kappa


class ExpectedPositiveLoss(nn.Module):
    """EPR: ``sum_{known} -t log p / (B K) + R(p)``.

    Args:
        kappa: expected positives per image (``estimate_kappa`` or e.g. COCO 2.9).
        observed_negatives: also put ``-log(1 - p)`` on known negatives (labelfix
            extension for partially labeled data with verified negatives; default False
            = the paper, where unknown and known-negative cells are only constrained
            through R).
    """

    trains_unknown = False   # observed positives and the expected count: no label for unknown cells

    def __init__(self, kappa: float, observed_negatives: bool = False):
        super().__init__()
        self.kappa = _check_kappa(kappa, "epr")
        self.observed_negatives = bool(observed_negatives)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                weight: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(logits, target, known, weight)
        cell = _observed_term(logits, target.to(logits.dtype), known, self.observed_negatives)
        main = reduce_cells(cell, weight, logits.numel())
        return main + expected_positive_regularizer(torch.sigmoid(logits), self.kappa)

    def extra_repr(self) -> str:
        return f"kappa={self.kappa}, observed_negatives={self.observed_negatives}"


_LOGIT_POS = math.log(0.995 / 0.005)   # logit(0.995)
_LOGIT_UNK = math.log(0.6 / 0.4)       # logit(0.6)
#: a warm-started unknown cell starts at its estimate clipped to [WARM_CLIP, 1 - WARM_CLIP]
#: (labelfix's choice, on the single-positive demo data, seed 0: unknown-positive AP 0.700 /
#: 0.726 / 0.718 / 0.698 for 0.001 / 0.01 / 0.05 / 0.2, 0.693 without the warm start;
#: docs/training.md)
WARM_CLIP = 0.01


def init_role_table(given_labels: np.ndarray, generator: torch.Generator | None = None,
                    estimates: np.ndarray | None = None) -> torch.Tensor:
    """Initial ROLE logits (N, K) float32: logit(0.995) on positives, logit(0.005) on
    negatives, uniform in [-logit(0.6), logit(0.6)] on unknown cells (the official code).
    With ``estimates`` (float (N, K) P(positive), NaN = none; labelfix's warm start, e.g.
    :func:`estimates_from_held_out`) an unknown cell with a finite estimate starts at its
    logit, the estimate clipped to [:data:`WARM_CLIP`, 1 - :data:`WARM_CLIP`]."""
    labels = torch.from_numpy(np.array(given_labels, dtype=np.int8))   # a copy: memmaps are read-only
    if labels.dim() != 2:
        raise LabelfixError(f"loss role: given_labels shape {tuple(labels.shape)}: expected (N, K)")
    bad = (labels != POS) & (labels != NEG) & (labels != UNK)
    if bool(bad.any()):
        raise LabelfixError("loss role: given_labels: values other than 1, 0, -1")
    table = (torch.rand(labels.shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * _LOGIT_UNK
    if estimates is not None:
        est = np.asarray(estimates, dtype=np.float64)
        if est.shape != tuple(labels.shape):
            raise LabelfixError(f"loss role: estimates shape {est.shape}: expected {tuple(labels.shape)}")
        use = torch.from_numpy(np.isfinite(est)) & (labels == UNK)
        table = torch.where(use, torch.from_numpy(logit(np.clip(est, WARM_CLIP, 1.0 - WARM_CLIP))), table)
    table[labels == POS] = _LOGIT_POS
    table[labels == NEG] = -_LOGIT_POS
    return table


class RoleLoss(nn.Module):
    """ROLE with a learnable label-estimator table G (N, K) of logits.

    loss = 0.5 (obs(f) + obs(g)) + 0.5 (BCE(f; sg(g)) + BCE(g; sg(f))) + 0.5 (R(f) + R(g)),
    f = sigmoid(logits), g = sigmoid(G[index]), sg = stop-gradient. ``obs`` is ``-t log q``
    on known cells (plus ``-(1 - t) log(1 - q)`` with ``observed_negatives``); the cross
    terms cover all cells. Per-cell terms are summed and divided by B x K.

    Memory: the table is N x K float32 (4 bytes per cell; Adam adds 8 more), e.g.
    COCO 82k x 80 = 26 MB, Open Images 1.7M x 600 = 4 GB. Its gradient is dense, so the
    optimizer touches the whole table each step.

    Args:
        num_samples: N, rows of the table (dataset indices 0..N-1).
        num_classes: K.
        given_labels: int8 (N, K), 1 / 0 / -1, used only for the initialisation.
        kappa: expected positives per image for R.
        observed_negatives: see ``ExpectedPositiveLoss``.
        seed: seed of the uniform initialisation of unknown cells.
        init_estimates: optional float (N, K) P(positive) that unknown cells start from
            (:func:`init_role_table`); None: the paper's uniform start.
    """

    def __init__(self, num_samples: int, num_classes: int, given_labels: np.ndarray, kappa: float,
                 observed_negatives: bool = False, seed: int = 0, init_estimates: np.ndarray | None = None):
        super().__init__()
        shape = tuple(np.shape(given_labels))
        if shape != (num_samples, num_classes):
            raise LabelfixError(
                f"loss role: given_labels shape {shape}: expected ({num_samples}, {num_classes})")
        self.kappa = _check_kappa(kappa, "role")
        self.observed_negatives = bool(observed_negatives)
        gen = torch.Generator().manual_seed(int(seed))
        self.table = nn.Parameter(init_role_table(given_labels, gen, init_estimates))

    def estimator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the label estimator (give them 10x the model's learning rate)."""
        return [self.table]

    @torch.no_grad()
    def estimates(self) -> torch.Tensor:
        """Current label estimates: sigmoid of the table, float32 (N, K), detached."""
        return torch.sigmoid(self.table.detach())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                weight: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(logits, target, known, weight)
        if index is None:
            raise LabelfixError("loss role: index: required (dataset index of each sample)")
        if index.shape != (logits.shape[0],):
            raise LabelfixError(f"loss role: index shape {tuple(index.shape)}: expected ({logits.shape[0]},)")
        if logits.shape[1] != self.table.shape[1]:
            raise LabelfixError(f"loss role: logits have {logits.shape[1]} classes, table {self.table.shape[1]}")
        est_logits = self.table[index.to(self.table.device).long()].to(logits.dtype)
        t = target.to(logits.dtype)
        f = torch.sigmoid(logits)
        g = torch.sigmoid(est_logits)
        obs = (_observed_term(logits, t, known, self.observed_negatives)
               + _observed_term(est_logits, t, known, self.observed_negatives))
        cross = (F.binary_cross_entropy_with_logits(logits, g.detach(), reduction="none")
                 + F.binary_cross_entropy_with_logits(est_logits, f.detach(), reduction="none"))
        cell = 0.5 * (obs + cross)
        main = reduce_cells(cell, weight, logits.numel())
        reg = 0.5 * (expected_positive_regularizer(f, self.kappa) + expected_positive_regularizer(g, self.kappa))
        return main + reg

    def extra_repr(self) -> str:
        n, k = self.table.shape
        return f"num_samples={n}, num_classes={k}, kappa={self.kappa}, observed_negatives={self.observed_negatives}"
