"""Model conformance (medai_testkit) and local backbone weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medai_testkit import ModelConformance
from medcommon.errors import InputError
from pbbl_cxr.config import ModelConfig
from pbbl_cxr.models import Classifier


class TestSmallCNN(ModelConformance):
    def make_model(self):
        return Classifier(ModelConfig(width=4, image_size=24))

    def make_input(self):
        return torch.randn(3, 1, 24, 24)


class TestFrozenBackboneMLPHead(ModelConformance):
    def make_model(self):
        return Classifier(
            ModelConfig(width=4, image_size=24, head="mlp", mlp_hidden=(8, 8), freeze_backbone=True)
        )

    def make_input(self):
        return torch.randn(3, 1, 24, 24)


class TestDenseNet121(ModelConformance):
    def make_model(self):
        return Classifier(ModelConfig(arch="densenet121", image_size=32))

    def make_input(self):
        return torch.randn(2, 1, 32, 32)


def test_frozen_backbone_trains_only_the_head():
    model = Classifier(ModelConfig(width=4, head="mlp", mlp_hidden=(8,), freeze_backbone=True))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head"}
    model.train()
    assert not model.backbone.training  # frozen BatchNorm statistics


def test_local_backbone_weights_are_loaded(tmp_path: Path):
    src = Classifier(ModelConfig(width=4))
    state = {f"backbone.{k}": v.contiguous() for k, v in src.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "bb.safetensors"))
    dst = Classifier(ModelConfig(width=4, backbone_weights=str(tmp_path / "bb.safetensors")))
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k])
    save_file({"nope": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match="backbone weights missing"):
        Classifier(ModelConfig(width=4, backbone_weights=str(tmp_path / "bad.safetensors")))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        Classifier(ModelConfig(width=4, backbone_weights=str(tmp_path / "junk.safetensors")))
