"""ResNet with mixed convolutions (MC3; Tran et al., CVPR 2018), slices in the role of time.

Shapes are ``(B, C, D, H, W)`` with ``D`` the slice axis. The stem is a
``(3, 7, 7)`` convolution with stride ``(1, 2, 2)``; the first ``full3d_layers``
residual layers use full 3x3x3 convolutions, the later ones 1x3x3 (in-plane)
convolutions that halve ``H`` and ``W`` but never stride over slices, so the
slice attention that follows sees every slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BasicBlock3d(nn.Module):
    """Two ``kernel`` convolutions with BatchNorm and a residual connection (ResNet-18 block).

    Args:
        in_channels, out_channels: channel counts.
        kernel: ``(3, 3, 3)`` (full 3-D) or ``(1, 3, 3)`` (in-plane).
        stride: applied by the first convolution and the projection shortcut.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (3, 3, 3),
        stride: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        pad = tuple(k // 2 for k in kernel)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or stride != (1, 1, 1):
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class MC3Backbone(nn.Module):
    """Stem + residual layers; ``(B, in_channels, D, H, W) -> (B, widths[-1], D, H', W')``.

    ``H' = ceil(H / 2**len(widths))`` in practice: the stem halves H and W, every
    layer after the first halves them again, ``D`` is kept.
    """

    def __init__(
        self,
        in_channels: int,
        stem_channels: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        full3d_layers: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, stem_channels, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
            nn.BatchNorm3d(stem_channels),
            nn.ReLU(inplace=True),
        )
        layers = []
        channels = stem_channels
        for i, (width, n_blocks) in enumerate(zip(widths, blocks)):
            kernel = (3, 3, 3) if i < full3d_layers else (1, 3, 3)
            stride = (1, 1, 1) if i == 0 else (1, 2, 2)
            layer = [BasicBlock3d(channels, width, kernel, stride)]
            layer += [BasicBlock3d(width, width, kernel) for _ in range(n_blocks - 1)]
            layers.append(nn.Sequential(*layer))
            channels = width
        self.layers = nn.ModuleList(layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, stem, D, H/2, W/2)
        for layer in self.layers:
            x = layer(x)
        return x
