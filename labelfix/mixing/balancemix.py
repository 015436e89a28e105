# BalanceMix: Song, Kim, Lee, "Toward Robustness in Multi-label Classification: A
# Data Augmentation Strategy against Imbalance and Noise", AAAI 2024, Sec. "Minority-
# augmented mixing" (minority sampler Score(x) from P(k), A(k); pairwise mix with
# l = max(l', 1 - l'), l' ~ Beta(alpha, alpha)). No official code exists; every open
# choice is listed in docs/losses_and_mixing.md.
"""BalanceMix's minority sampler and pairwise mixing.

The label-wise management (GMM states, re-labeling, p_G) lives in ``labelfix.cleaning``;
the training loss of BalanceMix is ``create_loss("bce")`` (masked BCE) called with the
re-labeled targets, the known mask and ``weight = p_G`` on ambiguous cells (1 elsewhere),
all taken from the random-sampler member of each pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labelfix.errors import LabelfixError
from labelfix.labels import NEG, POS
from labelfix.mixing.mixup import sample_beta
from labelfix.numeric import row_chunks

SCORE_REDUCTIONS = ("sum", "mean")


@dataclass
class MinorityWeights:
    """Result of ``minority_sampling_weights``.

    Attributes:
        weights: float64 (N,), sampling probabilities, sum 1.
        scores: float64 (N,), Score(x); NaN for images without a known cell.
        class_pos: float64 (K,), P(k) (after the eps floor); NaN for classes without a
            positive cell.
        class_neg: float64 (K,), A(k) likewise; NaN for classes without a negative.
        min_max_ratio: min(weights) / max(weights); 1 means uniform sampling.
    """

    weights: np.ndarray
    scores: np.ndarray
    class_pos: np.ndarray
    class_neg: np.ndarray
    min_max_ratio: float

    def summary(self) -> dict:
        """Spread of the sampling probabilities relative to uniform (1 / N), for logs."""
        n = len(self.weights)
        return {"min_max_ratio": self.min_max_ratio,
                "max_over_uniform": float(self.weights.max() * n),
                "min_over_uniform": float(self.weights.min() * n)}


def minority_sampling_weights(probs: np.ndarray, given: np.ndarray, eps: float = 1e-3,
                              score_reduction: str = "sum", chunk_rows: int = 1 << 16) -> MinorityWeights:
    """Sampling probabilities of BalanceMix's minority sampler.

    P(k) = mean f_k(x) over cells with z = 1, A(k) = mean (1 - f_k(x)) over cells with
    z = 0 (unknown cells skipped); Score(x) = sum_k [z_k = 1] P(k) + [z_k = 0] A(k);
    probability proportional to 1 / Score(x).

    Args:
        probs: float (N, K) model probabilities in [0, 1] (may be a float16 memmap).
        given: int8 (N, K), 1 / 0 / -1.
        eps: floor on P(k) and A(k), so that Score(x) >= eps per known cell and no
            weight is infinite when the model saturates (P(k) = 0 or A(k) = 0).
        score_reduction: "sum" (the paper) or "mean" (Score divided by the image's number
            of known cells; removes the bias toward images with few known cells when
            labels are partial; equal to "sum" up to a constant on fully labeled data).
        chunk_rows: rows processed at once (memory bound for large N).

    Images without any known cell get the mean weight of the other images (uniform if
    no image has a known cell).
    """
    if probs.ndim != 2 or given.shape != probs.shape:
        raise LabelfixError(f"balancemix: probs {probs.shape}, given {given.shape}: expected equal (N, K) shapes")
    if score_reduction not in SCORE_REDUCTIONS:
        raise LabelfixError(f"balancemix: score_reduction={score_reduction!r}: expected one of {SCORE_REDUCTIONS}")
    if not 0 < eps <= 1:
        raise LabelfixError(f"balancemix: eps={eps}: expected 0 < eps <= 1")
    n, k = probs.shape
    if n == 0:
        raise LabelfixError("balancemix: probs: no images")
    pos_sum = np.zeros(k)
    neg_sum = np.zeros(k)
    pos_cnt = np.zeros(k)
    neg_cnt = np.zeros(k)
    for sl in row_chunks(n, chunk_rows):
        p = np.asarray(probs[sl], dtype=np.float64)
        z = np.asarray(given[sl])
        if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
            raise LabelfixError(f"balancemix: probs rows {sl.start}-{sl.stop - 1}: values outside [0, 1] or NaN")
        pos, neg = z == POS, z == NEG
        pos_sum += np.where(pos, p, 0.0).sum(axis=0)
        neg_sum += np.where(neg, 1.0 - p, 0.0).sum(axis=0)
        pos_cnt += pos.sum(axis=0)
        neg_cnt += neg.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_pos = np.where(pos_cnt > 0, np.maximum(pos_sum / pos_cnt, eps), np.nan)
        class_neg = np.where(neg_cnt > 0, np.maximum(neg_sum / neg_cnt, eps), np.nan)
    p_used = np.nan_to_num(class_pos)  # NaN classes have no cell that would use them
    a_used = np.nan_to_num(class_neg)
    scores = np.empty(n)
    for sl in row_chunks(n, chunk_rows):
        z = np.asarray(given[sl])
        pos, neg = z == POS, z == NEG
        s = pos @ p_used + neg @ a_used
        n_known = pos.sum(axis=1) + neg.sum(axis=1)
        if score_reduction == "mean":
            s = s / np.maximum(n_known, 1)
        s[n_known == 0] = np.nan
        scores[sl] = s
    has = np.isfinite(scores)
    raw = np.ones(n)
    if has.any():
        raw[has] = 1.0 / scores[has]
        raw[~has] = raw[has].mean()
    weights = raw / raw.sum()
    return MinorityWeights(weights=weights, scores=scores, class_pos=class_pos, class_neg=class_neg,
                           min_max_ratio=float(weights.min() / weights.max()))


def balancemix_lambda(batch_size: int, generator: torch.Generator, alpha: float = 4.0) -> torch.Tensor:
    """Per-pair mixing weights l = max(l', 1 - l'), l' ~ Beta(alpha, alpha): float32 (B,)
    in [0.5, 1], the weight of the random-sampler member."""
    if batch_size < 0:
        raise LabelfixError(f"balancemix: batch_size={batch_size}: expected >= 0")
    lam = sample_beta(alpha, alpha, batch_size, generator)
    return torch.maximum(lam, 1.0 - lam)


def mix_pair(x_r: torch.Tensor, x_m: torch.Tensor, y_r: torch.Tensor, y_m: torch.Tensor, lam: torch.Tensor,
             known_m: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a random batch with a minority batch pairwise.

    x = l x_r + (1 - l) x_m and y = l y_r + (1 - l) y_m per sample.

    Args:
        x_r, x_m: images (B, ...) of the random / minority batch.
        y_r, y_m: float targets (B, K) in [0, 1] (after re-labeling).
        lam: float (B,), weight of the random member (``balancemix_lambda``).
        known_m: optional bool (B, K) of the minority member; where False, that member
            has no label for the cell and the random member's target is used for both
            (so y = y_r there). Without it every cell of y_m is taken as given.

    Returns:
        ``(x, y)``. The reliability of each mixed cell (known mask, state, loss weight
        p_G) is the random member's: pass the random batch's ``known`` and ``weight`` to
        the loss unchanged.
    """
    b = x_r.shape[0]
    if x_m.shape != x_r.shape or y_r.dim() != 2 or y_m.shape != y_r.shape or y_r.shape[0] != b \
            or lam.shape != (b,):
        raise LabelfixError(f"balancemix: shapes x_r {tuple(x_r.shape)}, x_m {tuple(x_m.shape)}, "
                            f"y_r {tuple(y_r.shape)}, y_m {tuple(y_m.shape)}, lam {tuple(lam.shape)}: "
                            f"expected equal (B, ...), equal (B, K), (B,)")
    if known_m is not None:
        if known_m.shape != y_m.shape or known_m.dtype != torch.bool:
            raise LabelfixError(f"balancemix: known_m {known_m.dtype} {tuple(known_m.shape)}: expected bool (B, K)")
        y_m = torch.where(known_m, y_m, y_r)
    lam_x = lam.to(device=x_r.device, dtype=x_r.dtype).view((b,) + (1,) * (x_r.dim() - 1))
    lam_y = lam.to(device=y_r.device, dtype=y_r.dtype).view(b, 1)
    return lam_x * x_r + (1.0 - lam_x) * x_m, lam_y * y_r + (1.0 - lam_y) * y_m
