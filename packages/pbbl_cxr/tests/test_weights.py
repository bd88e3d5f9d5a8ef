"""Pretrained DenseNet-121 files in torchvision / torchxrayvision naming, input normalisation,
BatchNorm mode, and the weight and paper presets.

The state dicts are random tensors laid out as torchvision's ``densenet121`` (built here
from the published architecture, growth 32, blocks 6-12-24-16, not from MONAI), written
to disk, converted, and the converted model's output is compared with a functional
DenseNet-121 forward written in this file. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medcommon.errors import InputError
from pbbl_cxr.config import ModelConfig, RunConfig, run_preset
from pbbl_cxr.models import Classifier, read_state_dict

BLOCKS = (6, 12, 24, 16)
GROWTH, BN_SIZE, INIT = 32, 4, 64
# The model fields each weight family's preset sets on top of full (their weights' input
# conventions), stated here independently of configs/<name>.yaml.
WEIGHT_FIELDS: dict[str, dict[str, object]] = {
    # torchvision.models.densenet121(weights="IMAGENET1K_V1"): RGB, ImageNet mean/std.
    "torchvision-imagenet": {
        "arch": "densenet121",
        "in_channels": 3,
        "image_size": 224,
        "input_norm": "imagenet",
    },
    # torchxrayvision.models.DenseNet(weights="densenet121-res224-all"): 1 channel, [-1024, 1024].
    "torchxrayvision": {
        "arch": "densenet121",
        "in_channels": 1,
        "image_size": 224,
        "input_norm": "xrv",
    },
}


def _bn(sd: dict, prefix: str, c: int, gen: torch.Generator, tracked: bool) -> None:
    sd[f"{prefix}.weight"] = 0.5 + torch.rand(c, generator=gen)
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=gen)
    sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=gen)
    if tracked:
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def _conv(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5


def torchvision_state(
    in_channels: int = 3, num_classes: int = 1000, old_names: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights under torchvision's ``densenet121().state_dict()`` keys.

    ``old_names``: the layout of torchvision's original checkpoint files
    (``denselayer1.norm.1.weight``, no ``num_batches_tracked``).
    """
    gen = torch.Generator().manual_seed(seed)
    tracked = not old_names
    sd: dict[str, torch.Tensor] = {"features.conv0.weight": _conv((INIT, in_channels, 7, 7), gen)}
    _bn(sd, "features.norm0", INIT, gen, tracked)
    c = INIT
    for b, n in enumerate(BLOCKS, start=1):
        for layer in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{layer}."
            n1, c1, n2, c2 = (
                ("norm.1", "conv.1", "norm.2", "conv.2")
                if old_names
                else ("norm1", "conv1", "norm2", "conv2")
            )
            cin = c + (layer - 1) * GROWTH
            _bn(sd, p + n1, cin, gen, tracked)
            sd[p + c1 + ".weight"] = _conv((BN_SIZE * GROWTH, cin, 1, 1), gen)
            _bn(sd, p + n2, BN_SIZE * GROWTH, gen, tracked)
            sd[p + c2 + ".weight"] = _conv((GROWTH, BN_SIZE * GROWTH, 3, 3), gen)
        c += n * GROWTH
        if b < len(BLOCKS):
            _bn(sd, f"features.transition{b}.norm", c, gen, tracked)
            sd[f"features.transition{b}.conv.weight"] = _conv((c // 2, c, 1, 1), gen)
            c //= 2
    _bn(sd, "features.norm5", c, gen, tracked)
    sd["classifier.weight"] = 0.01 * torch.randn(num_classes, c, generator=gen)
    sd["classifier.bias"] = torch.zeros(num_classes)
    return sd


def _new_name(key: str) -> str:
    for old, new in (
        ("norm.1", "norm1"),
        ("conv.1", "conv1"),
        ("norm.2", "norm2"),
        ("conv.2", "conv2"),
    ):
        key = key.replace(f".{old}.", f".{new}.")
    return key


def reference_features(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's DenseNet-121 ``features`` + ReLU + global average pool, eval-mode BN,
    written with ``torch.nn.functional`` on the torchvision-named weights: ``(B, 1024)``."""
    sd = {_new_name(k): v for k, v in sd.items()}

    def bn_relu(h: torch.Tensor, p: str) -> torch.Tensor:
        h = F.batch_norm(
            h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
            training=False, eps=1e-5,
        )  # fmt: skip
        return F.relu(h)

    h = F.conv2d(x, sd["features.conv0.weight"], stride=2, padding=3)
    h = F.max_pool2d(bn_relu(h, "features.norm0"), 3, stride=2, padding=1)
    for b, n in enumerate(BLOCKS, start=1):
        feats = [h]
        for layer in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{layer}"
            y = F.conv2d(bn_relu(torch.cat(feats, 1), f"{p}.norm1"), sd[f"{p}.conv1.weight"])
            y = F.conv2d(bn_relu(y, f"{p}.norm2"), sd[f"{p}.conv2.weight"], padding=1)
            feats.append(y)
        h = torch.cat(feats, 1)
        if b < len(BLOCKS):
            t = f"features.transition{b}"
            h = F.avg_pool2d(F.conv2d(bn_relu(h, f"{t}.norm"), sd[f"{t}.conv.weight"]), 2, 2)
    h = bn_relu(h, "features.norm5")
    return h.mean(dim=(2, 3))


def _param_count(sd: dict[str, torch.Tensor]) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.numel() for k, v in sd.items() if not k.endswith(buffers))


def test_torchvision_layout_matches_the_published_densenet121():
    sd = torchvision_state()
    # torchvision.models.densenet121(): 7,978,856 parameters, 121 = 1 + 2 * 58 + 3 + 1 layers.
    assert _param_count(sd) == 7_978_856
    convs = [k for k in sd if k.endswith("weight") and sd[k].ndim == 4]
    assert len(convs) + 1 == 121  # + the classifier
    layers = [k for k in sd if k.endswith("conv1.weight")]
    assert [sum(f"denseblock{b}." in k for k in layers) for b in range(1, 5)] == list(BLOCKS)
    assert sd["features.norm5.weight"].shape == (1024,)


def _features(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    from pbbl_cxr.models import normalize_input

    cfg = model.config
    return model.backbone(normalize_input(x, cfg.input_norm, cfg.in_channels))


@pytest.mark.parametrize("old_names", [False, True], ids=["torchvision", "torchvision-old-names"])
def test_torchvision_imagenet_file_gives_the_reference_forward(tmp_path: Path, old_names: bool):
    sd = torchvision_state(old_names=old_names)
    path = tmp_path / "densenet121.safetensors"
    save_file(sd, str(path))
    cfg = replace(run_preset("torchvision-imagenet").model, image_size=64)
    model = Classifier(replace(cfg, backbone_weights=str(path))).eval()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    # ImageNet normalisation by hand: gray repeated to RGB, torchvision's mean / std.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = reference_features(sd, (x.repeat(1, 3, 1, 1) - mean) / std)
    with torch.no_grad():
        ours = _features(model, x)
        logits = model(x)
    assert ref.abs().max() > 0.1  # a non-trivial comparison
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, model.head(ref), rtol=1e-4, atol=1e-5)
    if old_names:  # absent num_batches_tracked is filled with 0
        assert model.backbone.features.norm0.num_batches_tracked.item() == 0


def test_torchxrayvision_file_gives_the_reference_forward(tmp_path: Path):
    # torchxrayvision's DenseNet: torchvision's keys, 1 input channel, an 18-pathology
    # classifier and the op_threshs buffer; saved as a plain state dict (.pth).
    sd = torchvision_state(in_channels=1, num_classes=18, seed=3)
    sd["op_threshs"] = torch.rand(18)
    path = tmp_path / "xrv-all.pth"
    torch.save(sd, path)
    xrv = run_preset("torchxrayvision").model
    fields = {"image_size": 64, "backbone_weights": str(path), "head": "mlp"}
    model = Classifier(replace(xrv, **fields, freeze_backbone=True)).eval()
    pixels = torch.randint(0, 256, (2, 1, 64, 64), generator=torch.Generator().manual_seed(2))
    x = pixels.float() / 255.0  # what pbbl_cxr.data feeds the model
    # xrv.utils.normalize(img, maxval=255): (2 * (img / maxval) - 1) * 1024
    xrv_input = (2 * (pixels.float() / 255) - 1.0) * 1024
    with torch.no_grad():
        torch.testing.assert_close(
            _features(model, x), reference_features(sd, xrv_input), rtol=1e-4, atol=1e-4
        )


def test_wrapper_prefix_and_our_own_names_load(tmp_path: Path):
    sd = torchvision_state(in_channels=1, num_classes=2, seed=5)
    save_file({f"module.{k}": v for k, v in sd.items()}, str(tmp_path / "dp.safetensors"))
    a = Classifier(
        ModelConfig(arch="densenet121", backbone_weights=str(tmp_path / "dp.safetensors"))
    )
    own = {f"backbone.{k}": v.contiguous() for k, v in a.backbone.state_dict().items()}
    save_file(own, str(tmp_path / "own.safetensors"))
    b = Classifier(
        ModelConfig(arch="densenet121", backbone_weights=str(tmp_path / "own.safetensors"))
    )
    for k, v in a.backbone.state_dict().items():
        assert torch.equal(v, b.backbone.state_dict()[k]), k
    key = "features.denseblock3.denselayer7.conv2.weight"
    assert torch.equal(
        a.backbone.state_dict()["features.denseblock3.denselayer7.layers.conv2.weight"], sd[key]
    )


def _load(path: Path, **fields) -> Classifier:
    return Classifier(ModelConfig(arch="densenet121", backbone_weights=str(path), **fields))


def test_bad_weight_files_name_the_file(tmp_path: Path):
    sd = torchvision_state(in_channels=1, seed=6)
    cases = {
        "unknown.safetensors": ({**sd, "features.denseblock1.denselayer7.norm1.weight": torch.ones(3)}, "1 unknown keys"),
        "missing.safetensors": ({k: v for k, v in sd.items() if k != "features.norm5.bias"}, "weights missing, e.g. 'features.norm5.bias'"),
        "rgb.safetensors": (torchvision_state(in_channels=3), "model.in_channels=3"),
    }  # fmt: skip
    for name, (state, message) in cases.items():
        save_file(state, str(tmp_path / name))
        with pytest.raises(InputError, match=message) as err:
            _load(tmp_path / name)
        assert str(err.value.where) == str(tmp_path / name)
    # A pickled module needs unpickling code: refused (weights_only=True), nothing executed.
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(InputError, match=r"weights_only=True"):
        read_state_dict(tmp_path / "module.pt")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(InputError, match=r"\.safetensors, \.pt or \.pth"):
        read_state_dict(tmp_path / "w.ckpt")
    torch.save({"state_dict": {"a": torch.ones(1)}, "epoch": 3}, tmp_path / "wrapped.pth")
    assert list(read_state_dict(tmp_path / "wrapped.pth")) == ["a"]


def _bn_layers(model: Classifier) -> list[torch.nn.Module]:
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_backbone_batchnorm_mode():
    x = torch.rand(4, 1, 24, 24)
    frozen = {"width": 4, "image_size": 24, "freeze_backbone": True}
    # auto + frozen: stored statistics, unchanged by a training forward.
    auto = Classifier(ModelConfig(**frozen)).train()
    before = _bn_layers(auto)[0].running_mean.clone()
    auto(x)
    assert not any(m.training for m in _bn_layers(auto))
    assert torch.equal(_bn_layers(auto)[0].running_mean, before)
    # train + frozen (the authors' code): batch statistics, running averages move,
    # while no backbone weight gets a gradient.
    authors = Classifier(ModelConfig(**frozen, backbone_bn="train")).train()
    authors(x).sum().backward()
    assert all(m.training for m in _bn_layers(authors))
    assert not torch.equal(_bn_layers(authors)[0].running_mean, before)
    assert all(p.grad is None for p in authors.backbone.parameters())
    # eval + trainable backbone: weights train, BatchNorm uses the stored statistics.
    fixed = Classifier(ModelConfig(width=4, image_size=24, backbone_bn="eval")).train()
    fixed(x).sum().backward()
    assert not any(m.training for m in _bn_layers(fixed))
    assert fixed.backbone.body[0].weight.grad is not None
    fixed.eval().train()
    assert not any(m.training for m in _bn_layers(fixed))


def test_imagenet_normalisation_needs_three_channels():
    with pytest.raises(InputError, match="in_channels=3"):
        RunConfig(model=ModelConfig(input_norm="imagenet")).check()


@pytest.mark.parametrize("name", sorted(WEIGHT_FIELDS))
def test_weight_presets_are_full_with_their_weights_input_convention(name: str):
    full = run_preset("full")
    expected = replace(full, model=replace(full.model, **WEIGHT_FIELDS[name]))
    got = run_preset(name)
    assert got == expected
    assert got.check() == expected


@pytest.mark.parametrize("kind", ["gbp", "sbp"])
def test_paper_presets_hold_the_authors_settings(kind: str):
    got = run_preset(f"{kind}-paper")
    # The authors' numbers (LLYXC/PBBL main.py and config.py), stated here independently.
    steps, rounds, augment = {"gbp": (1000, 2, "crop-flip"), "sbp": (1360, 1, "flip")}[kind]
    assert (got.steps, got.rounds, got.augment, got.bias_steps) == (steps, rounds, augment, 1000)
    assert (got.batch_size, got.lr, got.weight_decay) == (256, 1e-4, 5e-4)
    m = got.model
    assert (m.head, m.mlp_hidden, m.freeze_backbone, m.backbone_bn) == (
        "mlp",
        (512, 512),
        True,
        "train",
    )
    # Everything else is full's: the whole config, field by field.
    authors_model = ModelConfig(
        arch="densenet121",
        image_size=224,
        head="mlp",
        mlp_hidden=(512, 512),
        freeze_backbone=True,
        input_norm="xrv",
        backbone_bn="train",
    )
    # Their stage 1 exactly (issue #20): one GCE model per round scoring its own training
    # images, and the prior used as counted: 1000 GCE steps per round (gbp: 2000 in all).
    assert (got.pseudo_labels, got.degenerate_response) == ("in-sample", "none")
    expected = replace(
        run_preset("full"),
        model=authors_model,
        steps=steps,
        bias_steps=1000,
        rounds=rounds,
        augment=augment,
        select_metric="",
        pseudo_labels="in-sample",
        degenerate_response="none",
    )
    assert got == expected and got.check() == expected
    # The tiny preset stays unaugmented.
    assert run_preset("tiny").augment == "none"


@pytest.mark.parametrize("kind", ["gbp", "sbp"])
def test_robust_presets_are_the_paper_presets_with_the_stage1_guards(kind: str):
    """``gbp-robust``/``sbp-robust``: the authors' settings plus cross-fitting (3 folds) and
    the degenerate-prior guard, what the paper presets were before issue #20."""
    paper, robust = run_preset(f"{kind}-paper"), run_preset(f"{kind}-robust")
    assert robust == replace(
        paper, pseudo_labels="cross-fit", folds=3, degenerate_response="marginal"
    )
    assert robust.degenerate_min_share == RunConfig().degenerate_min_share
    assert robust.check() == robust
