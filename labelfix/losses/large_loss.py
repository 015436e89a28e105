# Large-loss modification: Kim et al., "Large Loss Matters in Weakly Supervised
# Multi-Label Classification", CVPR 2022, method section: LL-R (rejection) and LL-Ct
# (temporary correction) of large-loss unobserved labels, rate (t - 1) * Delta_rel at
# epoch t; intended rule of the official code snucml/LargeLossMatters.
"""LL-R and LL-Ct on top of AN (unknown cells treated as negatives).

Per batch, among the unknown cells (the cells AN turns into negatives), the
``ceil(r * U)`` cells with the largest AN loss are selected, U = number of unknown cells
in the batch, r = the rejection rate of the current epoch. LL-R zeroes their loss;
LL-Ct replaces their target by 1 for this step. The selection ranks the unweighted AN
loss and is computed without gradient; exactly ``ceil(r * U)`` cells are selected (ties
broken by ``torch.topk``). Reduction: sum over all B x K cells / (B x K), as AN and the
authors' code (rejected cells stay in the denominator).

Epochs are 0-based: ``set_epoch(e)`` gives ``r = min(e * delta_rel / 100, 1)``, so the
first epoch (e = 0) rejects nothing and the rate then grows by ``delta_rel`` percent per
epoch (paper epoch t = e + 1: rate (t - 1) Delta_rel). ``delta_rel`` is in percent, as
in the paper and the official ``--delta_rel`` option (which divides by 100).

Intended-rule fixes over the official code (snucml/LargeLossMatters): no ``is`` string
comparison (LL-Cp is not provided); k counts unknown cells, not all B x K cells; no
threshold ``>=`` on the k-th value, which rejected every tied cell, and rejected observed
cells once k exceeded the number of unknown cells with positive loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.losses.bce import assume_negative_target, check_inputs, reduce_cells

MODES = ("reject", "correct")


class LargeLossLoss(nn.Module):
    """LL-R (``mode="reject"``) or LL-Ct (``mode="correct"``).

    Args:
        mode: "reject" (LL-R) or "correct" (LL-Ct).
        delta_rel: growth of the rejection rate in percent per epoch (paper: 0.1-0.5).

    Attributes:
        last_selected: bool (B, K) of the cells rejected / corrected by the latest
            forward (None before the first), for logging.
    """

    def __init__(self, mode: str = "reject", delta_rel: float = 0.2):
        super().__init__()
        if mode not in MODES:
            raise LabelfixError(f"loss ll: mode={mode!r}: expected one of {MODES}")
        if not math.isfinite(delta_rel) or delta_rel < 0:
            raise LabelfixError(f"loss ll: delta_rel={delta_rel}: expected a percentage >= 0")
        self.mode = mode
        self.delta_rel = float(delta_rel)
        self.epoch = 0
        self.last_selected: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        """Set the 0-based epoch that the following batches belong to."""
        if epoch < 0:
            raise LabelfixError(f"loss ll: epoch={epoch}: expected >= 0")
        self.epoch = int(epoch)

    @property
    def rejection_rate(self) -> float:
        """Fraction of the batch's unknown cells selected in the current epoch."""
        return min(self.epoch * self.delta_rel / 100.0, 1.0)

    def num_selected(self, num_unknown: int) -> int:
        """ceil(rate * U), robust to float noise (0.3 * 10 is 3, not 4)."""
        k = math.ceil(self.rejection_rate * num_unknown - 1e-9)
        return max(0, min(k, num_unknown))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                weight: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(logits, target, known, weight)
        t = assume_negative_target(target.to(logits.dtype), known)
        cell = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        unknown = ~known
        k = self.num_selected(int(unknown.sum()))
        selected = torch.zeros(known.shape, dtype=torch.bool, device=known.device)
        if k > 0:
            with torch.no_grad():
                ranked = torch.where(unknown, cell.detach(), torch.full_like(cell, -math.inf))
                top = torch.topk(ranked.flatten(), k).indices
                selected.view(-1)[top] = True
            if self.mode == "reject":
                cell = torch.where(selected, torch.zeros_like(cell), cell)
            else:
                corrected = F.binary_cross_entropy_with_logits(logits, torch.ones_like(t), reduction="none")
                cell = torch.where(selected, corrected, cell)
        self.last_selected = selected
        return reduce_cells(cell, weight, logits.numel())

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, delta_rel={self.delta_rel}, epoch={self.epoch}"
