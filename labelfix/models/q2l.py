# Query2Label head: Liu et al., "Query2Label: A Simple Transformer Way to Multi-Label
# Classification" (arXiv:2107.10834), Sec. 3.1-3.2 and the official code
# (SlongLiu/query2labels): a 1x1 projection of the backbone feature map, a DETR-style
# post-norm transformer encoder, decoder layers in which K learnable class queries
# cross-attend to the map (decoder self-attention removed, as in the official
# `rm_self_attn_dec`), 2-D sine positional encoding (DETR, normalised, scale 2*pi),
# and a group-wise linear layer: logit_k = <W_k, h_k> + b_k (Eq. 3).
"""Query2Label transformer head."""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_position_encoding(
    height: int, width: int, dim: int, *, temperature: float = 10000.0,
    device=None, dtype=torch.float32,
) -> torch.Tensor:
    """DETR's normalised 2-D sine positional encoding for an ``height x width`` map.

    Returns float (height * width, dim), row-major over (y, x) like
    ``feature_map.flatten(2)``: the first dim/2 channels encode y, the last dim/2
    encode x, each as interleaved (sin, cos) pairs of frequencies
    ``temperature ** (2 * (i // 2) / (dim / 2))``. ``dim`` must be a multiple of 4.
    Computed from the sizes on every call, so any input size (and ONNX export) works.
    """
    if dim % 4:
        raise ValueError(f"positional encoding dim must be a multiple of 4, got {dim}")
    npf = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(npf, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / npf)

    def embed(v: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, npf)
        p = v[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = embed(y)[:, None, :].expand(height, width, npf)
    pos_x = embed(x)[None, :, :].expand(height, width, npf)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, dim).to(dtype)


def _ffn(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim)
    )


class EncoderLayer(nn.Module):
    """DETR post-norm encoder layer; the positional encoding is added to queries and keys.

    ``forward(src (B, L, D), pos (L, D) or (B, L, D)) -> (B, L, D)``.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_attn = nn.LayerNorm(dim)
        self.ffn = _ffn(dim, dim_feedforward, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.drop_attn = nn.Dropout(dropout)
        self.drop_ffn = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = src + pos
        src = self.norm_attn(src + self.drop_attn(self.self_attn(qk, qk, src, need_weights=False)[0]))
        return self.norm_ffn(src + self.drop_ffn(self.ffn(src)))


class DecoderLayer(nn.Module):
    """DETR post-norm decoder layer without self-attention (Query2Label's default).

    ``forward(tgt (B, K, D), memory (B, L, D), pos, query_pos (K, D)) -> (B, K, D)``.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_attn = nn.LayerNorm(dim)
        self.ffn = _ffn(dim, dim_feedforward, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.drop_attn = nn.Dropout(dropout)
        self.drop_ffn = nn.Dropout(dropout)

    def forward(self, tgt, memory, pos, query_pos):
        attn = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm_attn(tgt + self.drop_attn(attn))
        return self.norm_ffn(tgt + self.drop_ffn(self.ffn(tgt)))


class Query2LabelHead(nn.Module):
    """Query2Label on a backbone feature map.

    Args:
        in_features: C, channels of the backbone feature map.
        num_classes: K (one query per class).
        hidden_dim: D, transformer width (multiple of 4 and of ``num_heads``).
        num_heads: attention heads.
        enc_layers: transformer encoder layers over the map (paper: 1).
        dec_layers: decoder layers (official default: 2).
        dim_feedforward: FFN width.
        dropout: dropout in attention and FFN.
        temperature: sine positional-encoding temperature.

    ``forward(x)``: x float (B, C, H, W) (NCHW feature map) or (B, L, C) tokens ->
    logits float (B, K). Token inputs (ViT-style backbones) already carry the
    backbone's positional embedding, so no sine encoding is added to them.
    """

    feature_map = True

    def __init__(
        self, in_features: int, num_classes: int, hidden_dim: int = 512, num_heads: int = 8,
        enc_layers: int = 1, dec_layers: int = 2, dim_feedforward: int = 2048,
        dropout: float = 0.1, temperature: float = 10000.0,
    ):
        super().__init__()
        if hidden_dim % 4 or hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim={hidden_dim} must be a multiple of 4 and of num_heads={num_heads}"
            )
        if dec_layers < 1:
            raise ValueError(f"dec_layers must be >= 1, got {dec_layers}")
        self.hidden_dim = int(hidden_dim)
        self.temperature = float(temperature)
        self.input_proj = nn.Linear(in_features, hidden_dim)  # == the official 1x1 conv
        self.encoder = nn.ModuleList(
            EncoderLayer(hidden_dim, num_heads, dim_feedforward, dropout) for _ in range(enc_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_embed = nn.Parameter(torch.empty(num_classes, hidden_dim))
        self.fc_weight = nn.Parameter(torch.empty(num_classes, hidden_dim))
        self.fc_bias = nn.Parameter(torch.empty(num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DETR: xavier_uniform on every matrix of the transformer; Q2L: query
        # embedding ~ N(0, 1) (nn.Embedding), group-wise linear ~ U(-1/sqrt(D), 1/sqrt(D)).
        for module in (self.encoder, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        nn.init.normal_(self.query_embed)
        bound = 1.0 / math.sqrt(self.fc_weight.shape[1])
        nn.init.uniform_(self.fc_weight, -bound, bound)
        nn.init.uniform_(self.fc_bias, -bound, bound)

    @property
    def output_bias(self) -> nn.Parameter:
        """float (K,): the bias added to the logits (``labelfix.models.prior``)."""
        return self.fc_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            h, w = x.shape[-2:]
            tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
            pos = sine_position_encoding(
                h, w, self.hidden_dim, temperature=self.temperature,
                device=x.device, dtype=x.dtype,
            )
        else:
            tokens, pos = x, x.new_zeros(())
        memory = self.input_proj(tokens)
        for layer in self.encoder:
            memory = layer(memory, pos)
        query_pos = self.query_embed
        tgt = torch.zeros_like(query_pos).unsqueeze(0).expand(memory.shape[0], -1, -1)
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos)
        hs = self.decoder_norm(tgt)  # (B, K, D)
        return torch.einsum("bkd,kd->bk", hs, self.fc_weight) + self.fc_bias
