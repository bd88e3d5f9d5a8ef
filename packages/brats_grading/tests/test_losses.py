"""Guidance losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from brats_grading.losses import distillation_kl, feature_alignment, guidance_loss


def test_distillation_kl_hand_computed():
    # teacher logits (2, 0), student (0, 0), T = 2: p = softmax(1, 0), q = (1/2, 1/2)
    p1 = math.e / (math.e + 1)
    kl = p1 * math.log(p1 / 0.5) + (1 - p1) * math.log((1 - p1) / 0.5)
    got = distillation_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 2.0)
    assert got.item() == pytest.approx(4 * kl, rel=1e-6)
    assert got.item() == pytest.approx(0.443776, abs=1e-5)


def test_distillation_is_zero_for_equal_logits_and_teacher_gets_no_gradient():
    t = torch.tensor([[1.0, -1.0]], requires_grad=True)
    s = torch.tensor([[1.0, -1.0]], requires_grad=True)
    loss = distillation_kl(s, t, 4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    (loss + s.sum()).backward()
    assert t.grad is None


def test_feature_alignment_is_two_minus_two_cosine():
    got = feature_alignment(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]]))
    assert got.item() == pytest.approx(0.8)  # cos = 0.6


def test_guidance_loss_combines_the_terms():
    zp, fp = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    zs = {"t1": torch.tensor([[0.0, 0.0]]), "flair": torch.tensor([[0.0, 0.0]])}
    fs = {"t1": torch.tensor([[3.0, 4.0]]), "flair": torch.tensor([[1.0, 0.0]])}
    out = guidance_loss(
        zp, fp, zs, fs, torch.tensor([1]), temperature=2.0, kd_weight=0.5, feature_weight=2.0
    )
    ce = math.log(2.0)
    kd = 0.443776  # the same pair as above, for both secondaries
    fa = (0.8 + 0.0) / 2
    assert out["loss"].item() == pytest.approx(ce + 0.5 * kd + 2.0 * fa, abs=1e-5)
