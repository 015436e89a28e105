# Infinite Class Mixup: Mensink & Mettes, "Infinite Class Mixup", BMVC 2023 (official
# code psmmettes/icm): mix classifiers instead of labels; M = s Y~^T, CE over both axes.
"""Infinite Class Mixup losses.

Single-label (the paper, Sec. 3): for a batch mixed with one l ~ Beta(a, a) and the
partner permutation ``perm``, the logits s = fc(h) (B, C) of the mixed images are scored
against every pair's interpolated classifier: with Y~ = l onehot(y_a) + (1 - l)
onehot(y_b) (B, C), ``M = s @ Y~^T`` (B, B) and M_ij = h_i . (W^T y~_j) + b . y~_j (a
row of Y~ sums to 1, so this is the score of the interpolated classifier j). The loss is
CE(M, I) (class axis: sample i against every pair's classifier) + CE(M^T, I) (pair axis:
classifier j against every sample), identity targets, no temperature.

Multi-label adaptation (labelfix; docs/losses_and_mixing.md): the one-hot vectors become
the *normalised known positive sets* y / |y|_1 (unknown and negative cells carry no
mass), a sample without a known positive contributes only its partner's set, and pairs
whose mixed sets are empty are left out. Targets are soft: T_ij = cos(y~_i, y~_j)
normalised per row, so two pairs that share labels are not pushed apart (with one label
per image and distinct pairs T = I, the paper's target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labelfix.errors import LabelfixError


def _check(logits: torch.Tensor, lam: float) -> None:
    if logits.dim() != 2:
        raise LabelfixError(f"icmixup: logits shape {tuple(logits.shape)}: expected (B, C)")
    if not 0.0 <= float(lam) <= 1.0:
        raise LabelfixError(f"icmixup: lam={lam}: expected 0 <= lam <= 1")


def icm_loss_single(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float,
                    axes: str = "both") -> torch.Tensor:
    """The paper's loss for single-label data.

    Args:
        logits: float (B, C), the model's scores s of the mixed images.
        y_a, y_b: long (B,), class of each sample and of its partner.
        lam: the batch's mixing weight l of the ``y_a`` member.
        axes: "class" (CE(M, I), the official ``-s``), "pair" (CE(M^T, I), ``-c``) or
            "both" (their sum, ``-f``).

    Returns:
        scalar: mean-reduced cross-entropy (summed over the chosen axes).
    """
    _check(logits, lam)
    b, c = logits.shape
    if y_a.shape != (b,) or y_b.shape != (b,):
        raise LabelfixError(f"icmixup: y_a {tuple(y_a.shape)}, y_b {tuple(y_b.shape)}: expected ({b},)")
    mixed = lam * F.one_hot(y_a, c).to(logits.dtype) + (1.0 - lam) * F.one_hot(y_b, c).to(logits.dtype)
    m = logits @ mixed.T
    eye = torch.arange(b, device=logits.device)
    return _axes_loss(m, eye, eye, axes)


def _axes_loss(m: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, axes: str) -> torch.Tensor:
    """CE of the rows of M against ``rows`` and of the rows of M^T against ``cols``
    (class indices, or soft targets whose rows sum to 1)."""
    if axes not in ("class", "pair", "both"):
        raise LabelfixError(f"icmixup: axes={axes!r}: expected 'class', 'pair' or 'both'")
    loss = m.new_zeros(())
    if axes in ("class", "both"):
        loss = loss + F.cross_entropy(m, rows)
    if axes in ("pair", "both"):
        loss = loss + F.cross_entropy(m.T, cols)
    return loss


def normalised_positive_sets(target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """float (B, K): each row's known positives divided by their count (zero rows for
    images without a known positive); ``target`` (B, K) in [0, 1], ``known`` bool (B, K)."""
    pos = torch.where(known, target, torch.zeros_like(target)).clamp(0.0, 1.0)
    return pos / pos.sum(1, keepdim=True).clamp_min(1e-12)


def icm_loss_multilabel(logits: torch.Tensor, sets_a: torch.Tensor, sets_b: torch.Tensor, lam: float,
                        axes: str = "both") -> torch.Tensor:
    """labelfix's multi-label adaptation (module docstring).

    Args:
        logits: float (B, K), scores of the mixed images.
        sets_a, sets_b: float (B, K), :func:`normalised_positive_sets` of each sample and
            of its partner.
        lam: the batch's mixing weight of the ``sets_a`` member.
        axes: as in :func:`icm_loss_single`.

    Returns:
        scalar; 0 (attached to ``logits``) when fewer than two pairs have a positive.
    """
    _check(logits, lam)
    if sets_a.shape != logits.shape or sets_b.shape != logits.shape:
        raise LabelfixError(f"icmixup: sets {tuple(sets_a.shape)}, {tuple(sets_b.shape)}: "
                            f"expected {tuple(logits.shape)}")
    # a member without positives gives its pair's whole mass to the other member
    has_a, has_b = sets_a.sum(1) > 0, sets_b.sum(1) > 0
    wa = torch.where(has_b, torch.full_like(has_a, lam, dtype=logits.dtype), torch.ones_like(has_a, dtype=logits.dtype))
    wb = torch.where(has_a, torch.full_like(has_b, 1.0 - lam, dtype=logits.dtype),
                     torch.ones_like(has_b, dtype=logits.dtype))
    mixed = wa[:, None] * sets_a + wb[:, None] * sets_b
    valid = has_a | has_b
    if int(valid.sum()) < 2:
        return logits.sum() * 0.0
    s, y = logits[valid], mixed[valid].to(logits.dtype)
    m = s @ y.T
    unit = F.normalize(y, dim=1)
    sim = (unit @ unit.T).clamp_min(0.0)
    # class axis: sample i over the pairs' classifiers j; pair axis: classifier j over
    # the samples i (sim is symmetric, so both normalise one row of it)
    return _axes_loss(m, sim / sim.sum(1, keepdim=True), sim.T / sim.T.sum(1, keepdim=True), axes)
