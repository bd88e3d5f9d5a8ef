"""ResNet with mixed convolutions (MC3; Tran et al., CVPR 2018), slices in the role of time.

Shapes are ``(B, C, D, H, W)`` with ``D`` the slice axis. The stem is a
``(3, 7, 7)`` convolution with stride ``(1, 2, 2)``; the first ``full3d_layers``
residual layers use full 3x3x3 convolutions, the later ones 1x3x3 (in-plane)
convolutions that halve ``H`` and ``W`` but never stride over slices, so the
slice attention that follows sees every slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        self.checkpoint_activations = checkpoint_activations
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
        return self.forward_layers(x)[-1]

    def forward_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every residual layer, ``[(B, widths[i], D, H_i, W_i)]``."""
        run = _checkpointed if self.checkpoint_activations and torch.is_grad_enabled() else _call
        x = run(self.stem, x)  # (B, stem, D, H/2, W/2)
        outs = []
        for layer in self.layers:
            x = run(layer, x)
            outs.append(x)
        return outs


def _call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def _checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` keeping only its input: the backward pass runs it again.

    Activation checkpointing (Chen et al. 2016, ``torch.utils.checkpoint``): a stage's
    inner activations are not stored, at the cost of a second forward of the stage.
    The second forward must not update BatchNorm's running statistics again (a train-
    mode BN would count the batch twice), so it runs with momentum 0; its outputs use
    the batch statistics either way, so they equal the first forward's.
    """
    calls = [0]

    def fn(inp: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 1:
            return module(inp)
        with _bn_stats_frozen(module):
            return module(inp)

    return checkpoint(fn, x, use_reentrant=False)


@contextmanager
def _bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
