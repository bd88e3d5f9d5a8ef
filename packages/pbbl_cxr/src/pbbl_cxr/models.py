"""Classifiers: a backbone (small CNN or MONAI DenseNet-121) and a linear or MLP head.

The authors' code freezes a pretrained DenseNet-121 and trains an MLP head
1024-512-512-2; ``ModelConfig(freeze_backbone=True, head="mlp",
backbone_weights="dn121.safetensors")`` reproduces that with a local weights file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from medcommon.errors import InputError
from pbbl_cxr.config import ModelConfig


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks (width w, 2w, 4w, 4w), 2x max-pooling after the first three,
    then a global max pool.

    Input ``(B, C, H, W)``; output features ``(B, 4w)``. Global max pooling lets a
    small, local lesion drive the features.
    """

    def __init__(self, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.out_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(self.body(x), dim=(2, 3))  # (B, 4w)


class DenseNetBackbone(nn.Module):
    """MONAI DenseNet-121 (``spatial_dims=2``) without its classifier; features ``(B, 1024)``."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=2)
        self.features = net.features
        self.out_features = net.class_layers.out.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.features(x))  # (B, 1024, h, w)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1)  # (B, 1024)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local safetensors file into ``backbone`` (keys may carry a ``features.`` or
    ``backbone.`` prefix from a full checkpoint; classifier keys are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "backbone weights file not found")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(path, f"not a readable safetensors file ({exc})") from None
    own = backbone.state_dict()
    picked = {}
    for key, value in state.items():
        for prefix in ("", "backbone.", "model.", "module."):
            if key.startswith(prefix) and key[len(prefix) :] in own:
                picked[key[len(prefix) :]] = value
                break
    missing = sorted(set(own) - set(picked))
    if missing:
        raise InputError(path, f"{len(missing)} backbone weights missing, e.g. {missing[0]!r}")
    try:
        backbone.load_state_dict(picked, strict=True)
    except RuntimeError as exc:
        raise InputError(path, f"weights do not fit ({str(exc).splitlines()[0]})") from None


class Classifier(nn.Module):
    """``logits = head(backbone(x))``; ``x`` is ``(B, 1, S, S)``, logits ``(B, num_classes)``."""

    config_class = ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.arch == "cnn":
            self.backbone: nn.Module = SmallCNN(config.in_channels, config.width)
        else:
            self.backbone = DenseNetBackbone(config.in_channels)
        if config.backbone_weights:
            load_backbone_weights(self.backbone, config.backbone_weights)
        dim = self.backbone.out_features
        if config.head == "mlp":
            layers: list[nn.Module] = []
            for hidden in config.mlp_hidden:
                layers += [nn.Linear(dim, hidden), nn.ReLU(inplace=True)]
                dim = hidden
            layers.append(nn.Linear(dim, config.num_classes))
            self.head: nn.Module = nn.Sequential(*layers)
        else:
            self.head = nn.Linear(dim, config.num_classes)
        if config.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics too
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, num_classes)


class BiasedDebiasedPair(nn.Module):
    """The two networks LfF trains jointly; ``debiased`` is the model that is kept."""

    def __init__(self, biased: Classifier, debiased: Classifier) -> None:
        super().__init__()
        self.biased = biased
        self.debiased = debiased

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_biased, logits_debiased)``, each ``(B, C)``; one call so DDP syncs both."""
        return self.biased(x), self.debiased(x)


def build_model(config: ModelConfig) -> Classifier:
    """A fresh classifier (seed the RNGs first)."""
    return Classifier(config)


def saved_config(config: ModelConfig) -> ModelConfig:
    """The config written next to trained weights: the backbone file is not needed any more."""
    from dataclasses import replace

    return replace(config, backbone_weights=None)
