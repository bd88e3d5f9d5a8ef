"""The segmenter: a MONAI 2D U-Net and the Dice + cross-entropy loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn


@dataclass(frozen=True)
class SegmenterConfig:
    """MONAI ``UNet(spatial_dims=2)`` settings; two output classes (background, foreground)."""

    in_channels: int = 1
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    num_res_units: int = 2
    norm: str = "instance"


class Segmenter(nn.Module):
    """2D U-Net: ``(B, C, H, W)`` images in [0, 1] -> ``(B, 2, H, W)`` logits.

    Instance normalisation (no running statistics) keeps the network a pure
    function of its parameters, which PGA's virtual steps
    (:func:`torch.func.functional_call`) rely on.
    """

    config_class = SegmenterConfig

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        self.net = UNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=2,
            channels=tuple(config.channels),
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=config.num_res_units,
            norm=config.norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 2, H, W)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Foreground masks ``(B, H, W)`` bool, by argmax over the two classes."""
        outs = [self(x[i : i + batch]).argmax(1) for i in range(0, x.shape[0], batch)]
        return torch.cat(outs).bool()


class SegLoss(nn.Module):
    """``dice_weight * soft Dice + (1 - dice_weight) * CE`` (the group's 0.5 / 0.5 by default).

    ``logits`` (B, 2, H, W), ``target`` (B, 1, H, W) integer labels.
    """

    def __init__(self, dice_weight: float = 0.5) -> None:
        super().__init__()
        self.loss = DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            lambda_dice=dice_weight,
            lambda_ce=1 - dice_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target)
