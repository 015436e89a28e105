# Asymmetric Loss: Ben-Baruch et al., "Asymmetric Loss For Multi-Label
# Classification", ICCV 2021: asymmetric focusing and probability shifting (the
# method section's final ASL formula).
"""ASL restricted to known cells.

Per known cell with target t in [0, 1], p = sigmoid(logit), p_m = max(p - m, 0):

    L = -( t * w+ * log p  +  (1 - t) * w- * log(1 - p_m) ),
    w+ = (1 - p)^gamma_pos,  w- = p_m^gamma_neg   (computed without gradient).

``log p`` is ``logsigmoid(logit)`` and ``log(1 - p_m) = log(min(sigmoid(-logit) + m, 1))``
(or ``logsigmoid(-logit)`` when m = 0), so saturated cells keep their gradient (the
official code clamps p at eps, which zeroes it). The focusing weights are computed under
a scoped ``torch.no_grad()``; the global grad mode is never touched.

Reduction: sum over known cells of ``weight * L`` divided by the number of known cells
(the official code returns the plain sum; multiply by B x K to compare).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.losses.bce import check_inputs, reduce_cells


class AsymmetricLoss(nn.Module):
    """ASL on known cells (unknown cells get no loss).

    Args:
        gamma_pos: focusing exponent on the positive part (paper: 0).
        gamma_neg: focusing exponent on the negative part (paper: 4).
        margin: probability shift m on the negative part (paper: 0.05).
    """

    trains_unknown = False   # known cells only

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, margin: float = 0.05):
        super().__init__()
        if gamma_pos < 0 or gamma_neg < 0:
            raise LabelfixError(f"loss asl: gamma_pos={gamma_pos}, gamma_neg={gamma_neg}: expected >= 0")
        if not 0.0 <= margin < 1.0:
            raise LabelfixError(f"loss asl: margin={margin}: expected 0 <= margin < 1")
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.margin = float(margin)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                weight: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(logits, target, known, weight)
        t = target.to(logits.dtype)
        log_p = F.logsigmoid(logits)
        if self.margin > 0:
            log_1m_pm = torch.log(torch.clamp(torch.sigmoid(-logits) + self.margin, max=1.0))
        else:
            log_1m_pm = F.logsigmoid(-logits)
        with torch.no_grad():
            p = torch.sigmoid(logits)
            w_pos = (1.0 - p).pow(self.gamma_pos)
            w_neg = torch.clamp(p - self.margin, min=0.0).pow(self.gamma_neg)
        cell = -(t * w_pos * log_p + (1.0 - t) * w_neg * log_1m_pm)
        cell = torch.where(known, cell, torch.zeros_like(cell))
        return reduce_cells(cell, weight, known.sum())

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, margin={self.margin}"
