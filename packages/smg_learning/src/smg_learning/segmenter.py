"""The segmenter: a MONAI 2D U-Net and the Dice + cross-entropy loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn


@dataclass(frozen=True)
class SegmenterConfig:
    """MONAI ``UNet(spatial_dims=2)`` settings; ``out_channels`` classes (background + K labels)."""

    in_channels: int = 1
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    num_res_units: int = 2
    norm: str = "instance"
    out_channels: int = 2  # 1 + the number of nested structures (fundus disc + cup: 3)


class Segmenter(nn.Module):
    """2D U-Net: ``(B, C, H, W)`` images in [0, 1] -> ``(B, out_channels, H, W)`` logits.

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
            out_channels=config.out_channels,
            channels=tuple(config.channels),
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=config.num_res_units,
            norm=config.norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, out_channels, H, W)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Argmax labels ``(B, H, W)``: bool foreground for two classes, else int64 in {0..K}."""
        logits = [self(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
        labels = torch.cat([z.argmax(1) for z in logits])
        return labels.bool() if logits[0].shape[1] == 2 else labels


class SegLoss(nn.Module):
    """``dice_weight * soft Dice + (1 - dice_weight) * CE`` (the group's 0.5 / 0.5 by default).

    ``logits`` (B, K+1, H, W), ``target`` (B, 1, H, W) integer labels in {0..K}.
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
