"""MC3 blocks, dual attention and the grading network."""

from __future__ import annotations

import pytest
import torch

from brats_grading.attention import DualAttention, SliceAttention, SpatialAttention
from brats_grading.config import MODALITIES, ModelConfig
from brats_grading.mc3 import BasicBlock3d, MC3Backbone
from brats_grading.model import GradingNet
from brats_grading.train import reliability_weights
from medai_testkit import ModelConformance

TINY = {"stem_channels": 4, "widths": (4, 8), "blocks": (1, 1), "attention_reduction": 2}


def test_full3d_block_keeps_shape_and_uses_3x3x3():
    block = BasicBlock3d(4, 6, (3, 3, 3))
    y = block(torch.randn(2, 4, 8, 16, 16))
    assert y.shape == (2, 6, 8, 16, 16)
    assert block.conv1.weight.shape[2:] == (3, 3, 3)


def test_inplane_block_halves_h_w_but_never_slices():
    block = BasicBlock3d(4, 8, (1, 3, 3), stride=(1, 2, 2))
    y = block(torch.randn(2, 4, 7, 16, 12))
    assert y.shape == (2, 8, 7, 8, 6)
    assert block.conv1.weight.shape[2:] == (1, 3, 3)
    assert block.conv1.stride == (1, 2, 2)


def test_backbone_mixed_convolutions_and_shapes():
    net = MC3Backbone(1, 4, widths=(4, 8, 16), blocks=(2, 1, 1), full3d_layers=1)
    y = net(torch.randn(1, 1, 16, 32, 32))
    # stem halves H, W; layers 2 and 3 halve them again; D (slices) is kept throughout
    assert y.shape == (1, 16, 16, 4, 4)
    assert net.stem[0].kernel_size == (3, 7, 7) and net.stem[0].stride == (1, 2, 2)
    kernels = [layer[0].conv1.kernel_size for layer in net.layers]
    assert kernels == [(3, 3, 3), (1, 3, 3), (1, 3, 3)]
    strides = [m.stride[0] for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert set(strides) == {1}, "no convolution strides over slices"


@pytest.mark.parametrize("cls", [SpatialAttention, SliceAttention])
def test_attention_shape_and_rows_sum_to_one(cls):
    torch.manual_seed(0)
    mod = cls(8, reduction=2)
    x = torch.randn(2, 8, 5, 3, 4)
    y, attn = mod(x)
    assert y.shape == x.shape
    if cls is SpatialAttention:
        assert attn.shape == (2, 5, 12, 12)  # (B, D, HW, HW)
    else:
        assert attn.shape == (2, 5, 5)  # (B, D, D)
    assert torch.all(attn >= 0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    # gamma starts at 0: the module is the identity until it learns otherwise
    torch.testing.assert_close(y, x)


def test_slice_attention_matches_a_hand_written_reference():
    torch.manual_seed(1)
    mod = SliceAttention(4, reduction=2)
    with torch.no_grad():
        mod.gamma.fill_(0.5)
    x = torch.randn(1, 4, 3, 2, 2)
    y, _ = mod(x)
    desc = x.mean(dim=(3, 4))[0].T  # (D, C)
    q, k = mod.query(desc), mod.key(desc)
    a = torch.softmax(q @ k.T / q.shape[1] ** 0.5, dim=1)  # (D, D)
    v = mod.value(x)[0]  # (C, D, H, W)
    ref = x[0] + 0.5 * torch.einsum("ij,cjhw->cihw", a, v)
    torch.testing.assert_close(y[0], ref)


def test_dual_attention_returns_both_maps():
    y, maps = DualAttention(8, 2)(torch.randn(1, 8, 4, 2, 2))
    assert y.shape == (1, 8, 4, 2, 2)
    assert maps["spatial"].shape == (1, 4, 4, 4) and maps["slice"].shape == (1, 4, 4)


def test_fusion_rule_primary_weighted():
    net = GradingNet(ModelConfig(**TINY, fusion="primary-weighted", primary_weight=0.4))
    w = net.fusion_weights(["t1", "t1ce", "t2", "flair"])
    assert w == pytest.approx({"t1ce": 0.4, "t1": 0.2, "t2": 0.2, "flair": 0.2})
    logits = {
        n: torch.tensor([[0.0, float(i)]]) for i, n in enumerate(["t1", "t1ce", "t2", "flair"])
    }
    p = torch.softmax(net.fuse(logits), dim=1)[0, 1]
    expected = sum(w[n] * torch.sigmoid(torch.tensor(float(i))) for i, n in enumerate(logits))
    torch.testing.assert_close(p, expected)


def test_fusion_rule_reliability_uses_fitted_weights_renormalised():
    cfg = ModelConfig(**TINY, fusion="reliability", branch_weights=(0.0, 0.6, 0.1, 0.3))
    net = GradingNet(cfg)
    w = net.fusion_weights(["t1", "t1ce", "t2", "flair"])
    assert w == pytest.approx({"t1": 0.0, "t1ce": 0.6, "t2": 0.1, "flair": 0.3})
    assert net.fusion_weights(["t1ce", "flair"]) == pytest.approx({"t1ce": 2 / 3, "flair": 1 / 3})
    # not fitted yet (or nothing above chance): the plain mean
    unfitted = GradingNet(ModelConfig(**TINY, fusion="reliability"))
    assert unfitted.fusion_weights(["t1", "t1ce"]) == pytest.approx({"t1": 0.5, "t1ce": 0.5})


def test_reliability_weights_are_auc_excess_over_chance():
    aucs = {"t1": 0.45, "t1ce": 0.9, "t2": 0.5, "flair": 0.7}
    w = reliability_weights(aucs, MODALITIES)
    assert w == pytest.approx((0.0, 0.4 / 0.6, 0.0, 0.2 / 0.6))
    assert reliability_weights({"t1": float("nan"), "t1ce": 0.3}, MODALITIES) == ()


class TestBranchesConformance(ModelConformance):
    def make_model(self):
        return GradingNet(ModelConfig(**TINY))

    def make_input(self):
        return torch.randn(2, 4, 6, 16, 16)


class TestEarlyFusionConformance(ModelConformance):
    def make_model(self):
        return GradingNet(ModelConfig(**TINY, inputs="early", attention=False))

    def make_input(self):
        return torch.randn(2, 4, 6, 16, 16)


def test_early_fusion_on_a_subset_reads_only_those_channels():
    """An early fusion of (t1ce, flair) has a 2-channel stem and ignores t1 and t2."""
    torch.manual_seed(0)
    net = GradingNet(ModelConfig(**TINY, inputs="early", modalities=("t1ce", "flair"))).eval()
    assert net.branches["early"].backbone.stem[0].in_channels == 2
    x = torch.randn(2, 4, 4, 16, 16)
    noisy = x.clone()
    noisy[:, [0, 2]] = torch.randn(2, 2, 4, 16, 16)  # t1, t2 replaced
    swapped = x.clone()
    swapped[:, [1, 3]] = x[:, [3, 1]]  # t1ce <-> flair: the channel order matters
    with torch.no_grad():
        ref = net(x)["logits"]
        torch.testing.assert_close(net(noisy)["logits"], ref)
        assert not torch.allclose(net(swapped)["logits"], ref)
