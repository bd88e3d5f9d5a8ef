"""Dual attention on MC3 features: spatial self-attention within slices, attention across slices.

Both follow the position-attention form of DANet (Fu et al., CVPR 2019) that the
paper's "dual attention" names: ``out = gamma * attend(x) + x`` with a learnable
``gamma`` starting at 0, so a freshly built network behaves like the plain backbone.
Each row of an attention matrix is a softmax, so its weights sum to 1.
"""

from __future__ import annotations

import torch
from torch import nn


class SpatialAttention(nn.Module):
    """Self-attention over the ``H x W`` positions of each slice separately.

    ``(B, C, D, H, W) -> (B, C, D, H, W)``; the attention tensor is ``(B, D, HW, HW)``,
    row ``i`` holding how much position ``i`` reads from every position of its slice.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv3d(channels, inner, 1)
        self.key = nn.Conv3d(channels, inner, 1)
        self.value = nn.Conv3d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, d, h, w = x.shape
        q = self.query(x).permute(0, 2, 3, 4, 1).reshape(b * d, h * w, -1)  # (BD, N, c')
        k = self.key(x).permute(0, 2, 1, 3, 4).reshape(b * d, -1, h * w)  # (BD, c', N)
        v = self.value(x).permute(0, 2, 1, 3, 4).reshape(b * d, c, h * w)  # (BD, C, N)
        attn = torch.softmax(torch.bmm(q, k) / q.shape[-1] ** 0.5, dim=-1)  # (BD, N, N)
        out = torch.bmm(v, attn.transpose(1, 2))  # (BD, C, N)
        out = out.reshape(b, d, c, h, w).permute(0, 2, 1, 3, 4)
        return self.gamma * out + x, attn.reshape(b, d, h * w, h * w)


class SliceAttention(nn.Module):
    """Self-attention across the ``D`` slices, each slice a token.

    Queries and keys come from each slice's spatially pooled features; the values
    are whole slice feature maps. ``(B, C, D, H, W) -> (B, C, D, H, W)``, attention
    ``(B, D, D)``.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Linear(channels, inner)
        self.key = nn.Linear(channels, inner)
        self.value = nn.Conv3d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, d, h, w = x.shape
        desc = x.mean(dim=(3, 4)).transpose(1, 2)  # (B, D, C)
        q, k = self.query(desc), self.key(desc)  # (B, D, c')
        attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / q.shape[-1] ** 0.5, dim=-1)
        v = self.value(x).permute(0, 2, 1, 3, 4).reshape(b, d, c * h * w)  # (B, D, CHW)
        out = torch.bmm(attn, v).reshape(b, d, c, h, w).permute(0, 2, 1, 3, 4)
        return self.gamma * out + x, attn


class DualAttention(nn.Module):
    """Spatial and slice attention applied in parallel and summed (as DANet sums its two heads).

    Returns the features and ``{"spatial": (B, D, N, N), "slice": (B, D, D)}``.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.spatial = SpatialAttention(channels, reduction)
        self.slice = SliceAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xs, a_sp = self.spatial(x)
        xd, a_sl = self.slice(x)
        return xs + xd - x, {"spatial": a_sp, "slice": a_sl}
