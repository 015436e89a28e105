# Linear head: global average pooling + one linear layer (the usual multi-label
# baseline; methods.md "Heads"). The pooling is timm's own global pool of the
# backbone (``num_classes=0``), so token backbones use their class token / pooling.
"""Linear classification head."""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """Dropout + ``nn.Linear`` on pooled backbone features.

    Args:
        in_features: C, width of the pooled backbone features.
        num_classes: K.
        drop_rate: dropout probability before the linear layer (0 = none).

    ``forward(x)``: x float (B, C) -> logits float (B, K).
    """

    feature_map = False  # consumes timm's pooled features, not the feature map

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)

    @property
    def output_bias(self) -> nn.Parameter:
        """float (K,): the bias added to the logits (``labelfix.models.prior``)."""
        return self.fc.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))
