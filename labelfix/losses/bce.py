# Binary cross-entropy losses for partial labels.
# Masked BCE: methods.md "Losses" (mean of BCE over known cells).
# AN, AN-LS, WAN: Cole et al., "Multi-Label Learning from Single Positive Labels",
# CVPR 2021: the "assume negative" baselines (AN, AN with label smoothing, weak AN with
# weight 1 / (K - 1)); reductions as in the authors' code (mean over all B x K cells).
"""BCE-family losses: masked BCE, AN, AN-LS, WAN, and the shared tensor helpers.

Interface shared by every labelfix loss (``forward``):

- ``logits``: float (B, K), raw scores (no sigmoid).
- ``target``: float (B, K) in [0, 1]; soft targets are allowed.
- ``known``: bool (B, K); False marks an unknown cell.
- ``weight``: optional float (B, K), multiplies the per-cell loss.
- ``index``: optional long (B,), dataset index of each sample (only ROLE uses it).

Reduction: ``sum(weight * per_cell_loss) / D`` where ``D`` is the number of cells the
method gives a target to: the known cells for masked BCE (and ASL), all B x K cells for
the losses that turn unknown cells into negatives (AN, AN-LS, WAN, LL-R, LL-Ct). The
weights do not enter ``D``. A batch with ``D = 0`` gives a zero loss that still carries
a (zero) gradient to ``logits``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.labels import NEG, POS, UNK


def split_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a tri-state label tensor into a float target and a known mask.

    Args:
        labels: integer tensor (B, K) with 1 positive / 0 negative / -1 unknown.

    Returns:
        ``(target, known)``: float32 (B, K) with 1.0 on positives and 0.0 elsewhere
        (unknown cells get 0.0, which only matters for losses that assume negatives),
        and bool (B, K), True on positive and negative cells.
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise LabelfixError(f"labels: dtype {labels.dtype}: expected an integer tensor coded 1/0/-1")
    valid = (labels == POS) | (labels == NEG) | (labels == UNK)
    if not bool(valid.all()):
        bad = labels[~valid].unique()[:5].tolist()
        raise LabelfixError(f"labels: values {bad}: expected only 1, 0 or -1")
    return (labels == POS).to(torch.float32), labels != UNK


def check_inputs(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                 weight: torch.Tensor | None = None) -> None:
    """Raise ``LabelfixError`` unless the tensors follow the loss interface (shapes
    (B, K), ``known`` bool, ``target`` floating)."""
    if logits.dim() != 2:
        raise LabelfixError(f"loss: logits shape {tuple(logits.shape)}: expected (B, K)")
    for name, t in (("target", target), ("known", known), ("weight", weight)):
        if t is not None and t.shape != logits.shape:
            raise LabelfixError(f"loss: {name} shape {tuple(t.shape)}: expected {tuple(logits.shape)}")
    if known.dtype != torch.bool:
        raise LabelfixError(f"loss: known dtype {known.dtype}: expected torch.bool")
    if not target.dtype.is_floating_point:
        raise LabelfixError(f"loss: target dtype {target.dtype}: expected a float tensor")


def reduce_cells(cell_loss: torch.Tensor, weight: torch.Tensor | None,
                 denominator: int | torch.Tensor) -> torch.Tensor:
    """``sum(weight * cell_loss) / denominator``; zero (still attached to the graph) when the
    denominator is 0. ``cell_loss`` must already be 0 on cells that get no loss. A tensor
    denominator stays on its device (no host synchronisation)."""
    if weight is not None:
        cell_loss = cell_loss * weight
    if isinstance(denominator, torch.Tensor):
        return cell_loss.sum() / denominator.clamp_min(1).to(cell_loss.dtype)
    return cell_loss.sum() / max(int(denominator), 1)


def assume_negative_target(target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Target with unknown cells set to 0 (the AN assumption)."""
    return torch.where(known, target, torch.zeros_like(target))


class MaskedBCELoss(nn.Module):
    """BCE averaged over known cells; unknown cells get no loss and no gradient."""

    #: whether unknown cells get a training target (see ``labelfix.losses.trains_unknown``)
    trains_unknown = False

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                weight: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(logits, target, known, weight)
        cell = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
        cell = torch.where(known, cell, torch.zeros_like(cell))
        return reduce_cells(cell, weight, known.sum())


class AssumeNegativeLoss(nn.Module):
    """AN / AN-LS: unknown cells are negatives; BCE averaged over all B x K cells.

    Args:
        label_smoothing: eps; every target t becomes ``eps + (1 - 2 eps) t`` (eps = 0.1
            gives 0.9 / 0.1, the AN-LS of Cole et al.). Applied after the AN step, so
            unknown cells get target eps.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 0.5:
            raise LabelfixError(f"loss an: label_smoothing={label_smoothing}: expected 0 <= value < 0.5")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                weight: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(logits, target, known, weight)
        t = assume_negative_target(target.to(logits.dtype), known)
        if self.label_smoothing:
            t = self.label_smoothing + (1.0 - 2.0 * self.label_smoothing) * t
        cell = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        return reduce_cells(cell, weight, logits.numel())

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class WeakAssumeNegativeLoss(nn.Module):
    """WAN: AN where each unknown-as-negative cell's BCE is divided by (K - 1); known
    cells (positives and verified negatives) keep weight 1. Mean over all B x K cells."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                weight: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(logits, target, known, weight)
        k = logits.shape[1]
        t = assume_negative_target(target.to(logits.dtype), known)
        cell = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        if k > 1:
            cell = torch.where(known, cell, cell / (k - 1))
        return reduce_cells(cell, weight, logits.numel())
