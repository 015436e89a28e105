# ML-Decoder head: Ridnik et al., "ML-Decoder: Scalable and Versatile Classification
# Head" (WACV 2023, arXiv:2111.12933), Sec. 3 and the official code
# (Alibaba-MIIL/ML_Decoder, ml_decoder.py): tokens -> Linear to 768 -> ReLU; G frozen
# group queries (G = min(100, K)); one decoder layer without self-attention
# (`TransformerDecoderLayerOptimal`), 8 heads; group fully connected pooling with
# ceil(K / G) outputs per group, the first K outputs are the logits.
"""ML-Decoder head (one decoder layer, group queries, group FC)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLDecoderLayer(nn.Module):
    """The official ``TransformerDecoderLayerOptimal`` (post-norm, no self-attention).

    The official layer keeps ``tgt = norm1(tgt + dropout1(tgt))`` where the
    self-attention used to be; it is reproduced here so that the official weights and
    behaviour carry over. ``forward(tgt (B, G, D), memory (B, L, D)) -> (B, G, D)``.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        tgt = self.norm1(tgt + self.dropout1(tgt))
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(tgt, memory, memory, need_weights=False)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class MLDecoderHead(nn.Module):
    """ML-Decoder on a backbone feature map or token sequence.

    Args:
        in_features: C, channels of the backbone features.
        num_classes: K.
        num_groups: upper bound on the number of group queries; G = min(num_groups, K).
        embed_dim: D, decoder width (paper: 768).
        num_heads: attention heads (paper: 8).
        dim_feedforward: FFN width (official: 2048).
        dropout: dropout in the decoder layer (official: 0.1).

    ``forward(x)``: x float (B, C, H, W) or (B, L, C) -> logits float (B, K).
    The group queries are a frozen buffer drawn from N(0, 1) (the official frozen
    ``nn.Embedding``); they are saved in the state dict.
    """

    feature_map = True

    def __init__(
        self, in_features: int, num_classes: int, num_groups: int = 100, embed_dim: int = 768,
        num_heads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1,
    ):
        super().__init__()
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
        groups = min(num_groups, num_classes)
        self.num_classes = num_classes
        self.embed = nn.Linear(in_features, embed_dim)
        self.register_buffer("query", torch.empty(groups, embed_dim))
        self.layer = MLDecoderLayer(embed_dim, num_heads, dim_feedforward, dropout)
        factor = math.ceil(num_classes / groups)
        self.group_fc_weight = nn.Parameter(torch.empty(groups, embed_dim, factor))
        self.group_fc_bias = nn.Parameter(torch.empty(num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.query)
        nn.init.xavier_normal_(self.group_fc_weight)
        nn.init.zeros_(self.group_fc_bias)

    @property
    def output_bias(self) -> nn.Parameter:
        """float (K,): the bias added to the logits (``labelfix.models.prior``)."""
        return self.group_fc_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2) if x.dim() == 4 else x  # (B, L, C)
        memory = F.relu(self.embed(tokens))  # (B, L, D)
        tgt = self.query.unsqueeze(0).expand(memory.shape[0], -1, -1)  # (B, G, D)
        h = self.layer(tgt, memory)
        out = torch.einsum("bgd,gdk->bgk", h, self.group_fc_weight)  # (B, G, ceil(K/G))
        return out.flatten(1)[:, : self.num_classes] + self.group_fc_bias
