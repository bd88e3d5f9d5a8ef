"""Classifiers: a backbone (small CNN or MONAI DenseNet-121) and a linear or MLP head.

The authors' code freezes torchxrayvision's pretrained DenseNet-121 ("all" weights) and
trains an MLP head 1024-512-512-2 with BatchNorm left in train mode;
the ``gbp-paper``/``sbp-paper`` presets (``configs/*.yaml``) plus
``backbone_weights="xrv-all.safetensors"`` reproduce that from a local file.
Pretrained files in torchvision's or torchxrayvision's key naming are converted to
MONAI's names by an exact key map (:func:`convert_densenet121_state`); nothing is
downloaded and nothing is unpickled.
"""

from __future__ import annotations

import re
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


# torchvision's remap of the old checkpoints' ``norm.1``/``conv.2`` names
# (torchvision.models.densenet._load_state_dict), verbatim.
_OLD_DOTTED = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
# torchvision / torchxrayvision: ``denselayerJ.norm1``; MONAI: ``denselayerJ.layers.norm1``.
_TV_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.((?:norm|conv)[12]\..+)$")
# Heads of the source models (ImageNet 1000 classes, torchxrayvision's 18 pathologies and its
# operating points, MONAI's ``class_layers``): our head is trained anew, so they are dropped.
_DROPPED = re.compile(r"^(classifier\..+|op_threshs|class_layers\..+)$")
_PREFIXES = ("module.", "model.", "backbone.")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth``, never unpickling code.

    ``.pt``/``.pth`` go through ``torch.load(weights_only=True)``, which only rebuilds
    tensors and plain containers; a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper
    is unwrapped. Full pickled modules (torchxrayvision's own download format) are
    refused: convert them once with ``safetensors.torch.save_file(model.state_dict(), F)``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "backbone weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types
            raise InputError(path, f"not a readable safetensors file ({exc})") from None
    if suffix not in (".pt", ".pth"):
        raise InputError(path, "weights must be a .safetensors, .pt or .pth file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but tensors and containers
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            path,
            f"refused or unreadable with torch.load(weights_only=True) ({first}); "
            "save the model's state_dict() with safetensors instead",
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()
    ):
        raise InputError(path, "not a state dict (a mapping of names to tensors)")
    return state


def _strip_prefixes(keys: list[str]) -> dict[str, str]:
    """``{original: stripped}``, removing a wrapper prefix only when every key carries it."""
    out = {k: k for k in keys}
    changed = True
    while changed and out:
        changed = False
        for prefix in _PREFIXES:
            if all(v.startswith(prefix) for v in out.values()):
                out = {k: v[len(prefix) :] for k, v in out.items()}
                changed = True
    return out


def densenet121_key(key: str) -> str | None:
    """Our (MONAI) name of a torchvision / torchxrayvision / MONAI DenseNet-121 key.

    ``None`` for the source model's head (``classifier.*``, ``op_threshs``,
    ``class_layers.*``). Keys of other models pass through unchanged (and are then
    reported as unknown by :func:`convert_densenet121_state`).
    """
    if _DROPPED.match(key):
        return None
    key = _OLD_DOTTED.sub(r"\1\2", key)
    return _TV_LAYER.sub(r"\1.layers.\2", key)


def convert_densenet121_state(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], where: str | Path
) -> dict[str, torch.Tensor]:
    """Rename a DenseNet-121 state dict to ``own``'s keys; every key must map exactly.

    Unknown keys, missing keys and shape mismatches are an :class:`InputError` on
    ``where``. Only ``num_batches_tracked`` may be missing (torchvision's old
    checkpoints predate it); it is filled with 0.
    """
    stripped = _strip_prefixes(list(state))
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        name = densenet121_key(stripped[key])
        if name is None:
            continue
        if name not in own:
            unknown.append(key)
            continue
        out[name] = value
    if unknown:
        raise InputError(
            where,
            f"{len(unknown)} unknown keys, e.g. {unknown[0]!r}: not a DenseNet-121 state dict "
            "in torchvision, torchxrayvision or MONAI naming",
        )
    missing = sorted(set(own) - set(out))
    for name in [m for m in missing if m.endswith("num_batches_tracked")]:
        out[name] = torch.zeros((), dtype=torch.long)
        missing.remove(name)
    if missing:
        raise InputError(where, f"{len(missing)} DenseNet-121 weights missing, e.g. {missing[0]!r}")
    for name, value in out.items():
        if tuple(value.shape) != tuple(own[name].shape):
            hint = ""
            if name == "features.conv0.weight":
                hint = (
                    f"; the file expects {value.shape[1]} input channel(s): set "
                    f"model.in_channels={value.shape[1]}"
                )
            raise InputError(
                where,
                f"{name} has shape {tuple(value.shape)}, the model {tuple(own[name].shape)}{hint}",
            )
    return out


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local weights file into ``backbone``.

    DenseNet-121: torchvision (also its old ``norm.1`` names), torchxrayvision or our
    own (MONAI) key naming, via :func:`convert_densenet121_state`. Small CNN: our own
    keys. A ``module.``/``model.``/``backbone.`` prefix on every key is removed; the
    source model's classifier is ignored. Never unpickles (:func:`read_state_dict`).
    """
    path = Path(path)
    state = read_state_dict(path)
    own = backbone.state_dict()
    if isinstance(backbone, DenseNetBackbone):
        picked = convert_densenet121_state(state, own, path)
    else:
        stripped = _strip_prefixes(list(state))
        picked = {stripped[k]: v for k, v in state.items() if stripped[k] in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise InputError(path, f"{len(missing)} backbone weights missing, e.g. {missing[0]!r}")
    try:
        backbone.load_state_dict(picked, strict=True)
    except RuntimeError as exc:
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        why = next((x for x in lines if x.startswith("size mismatch")), lines[0] if lines else "")
        raise InputError(path, f"weights do not fit ({why})") from None


def normalize_input(x: torch.Tensor, mode: str, channels: int) -> torch.Tensor:
    """Gray ``(B, 1, S, S)`` in [0, 1] -> what the backbone's weights expect, ``(B, channels, S, S)``.

    ``none``: unchanged; ``imagenet``: ``(x - mean) / std`` per channel with torchvision's
    ImageNet statistics; ``xrv``: torchxrayvision's ``[-1024, 1024]`` range,
    ``(2 x - 1) * 1024`` (``xrv.utils.normalize(img, maxval)`` with ``x = img / maxval``).
    A one-channel image is repeated to ``channels`` channels first.
    """
    if x.shape[1] == 1 and channels > 1:
        x = x.expand(-1, channels, -1, -1)
    if mode == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN[: x.shape[1]], device=x.device, dtype=x.dtype)
        std = torch.tensor(IMAGENET_STD[: x.shape[1]], device=x.device, dtype=x.dtype)
        return (x - mean[:, None, None]) / std[:, None, None]
    if mode == "xrv":
        return (2.0 * x - 1.0) * 1024.0
    return x


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

    @property
    def backbone_bn(self) -> str:
        """The backbone's BatchNorm mode while training: ``"train"`` or ``"eval"``.

        ``auto``: ``eval`` (stored statistics, no updates) for a frozen backbone, else
        ``train``. The authors' code freezes the weights but leaves BatchNorm in train
        mode (batch statistics, running averages updated): ``backbone_bn="train"``.
        """
        mode = self.config.backbone_bn
        if mode == "auto":
            return "eval" if self.config.freeze_backbone else "train"
        return mode

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode and self.backbone_bn == "eval":
            if self.config.freeze_backbone:
                self.backbone.eval()
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` gray ``(B, 1, S, S)`` in [0, 1] -> logits ``(B, num_classes)``."""
        x = normalize_input(x, self.config.input_norm, self.config.in_channels)
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
