"""Losses and weights against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pbbl_cxr.losses import GroupDROWeights, LossEMA, bias_balanced_ce, gce_loss, lff_weights


def test_gce_matches_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0])
    p0 = math.exp(2) / (math.exp(2) + 1)  # 0.880797
    p1 = 1 / (1 + math.e)  # 0.268941
    expected = [-math.log(p0) * 0.7 * p0**0.7, -math.log(p1) * 0.7 * p1**0.7]
    got = gce_loss(logits, target, q=0.7)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert got[0].item() == pytest.approx(0.0812959, rel=1e-5)


def test_gce_gradient_is_q_times_that_of_the_closed_form():
    logits = torch.tensor([[0.3, -1.2, 0.5]], requires_grad=True)
    target = torch.tensor([2])
    gce_loss(logits, target, q=0.7).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    p = torch.softmax(logits, 1)[0, 2]
    ((1 - p**0.7) / 0.7).backward()
    assert torch.allclose(ours, 0.7 * logits.grad, atol=1e-7)


def test_bias_balanced_ce_hand_computed():
    logits = torch.tensor([[1.0, 0.0]])
    prior = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    # b = 0, y = 1: adjusted logits [1 + ln .9, ln .1]
    z = [1 + math.log(0.9), math.log(0.1)]
    expected = -(z[1] - math.log(math.exp(z[0]) + math.exp(z[1])))
    got = bias_balanced_ce(logits, torch.tensor([1]), torch.tensor([0]), torch.log(prior))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() == pytest.approx(3.23729, abs=1e-4)


def test_bias_balanced_ce_with_uniform_prior_is_plain_ce():
    logits = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1])
    b = torch.tensor([0, 0, 1, 1, 0])
    uniform = torch.log(torch.full((2, 2), 0.5))
    assert torch.allclose(
        bias_balanced_ce(logits, y, b, uniform), torch.nn.functional.cross_entropy(logits, y)
    )


def test_loss_ema_and_lff_weights():
    ema = LossEMA(3, alpha=0.7)
    out = ema.update(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))
    assert out.tolist() == pytest.approx([1.0, 2.0])  # the first update starts at the loss
    out = ema.update(torch.tensor([3.0]), torch.tensor([0]))
    assert out.tolist() == pytest.approx([0.7 * 1.0 + 0.3 * 3.0])
    labels = torch.tensor([0, 0, 1])
    assert ema.class_max(labels, torch.tensor([0, 1])).tolist() == pytest.approx([1.6, 2.0])
    w = lff_weights(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([1.0, 2.0, 1.0]))
    assert w.tolist() == pytest.approx([0.5, 0.0, 0.75], abs=1e-6)


def test_groupdro_exponentiated_weights():
    dro = GroupDROWeights(2, eta=1.0)
    loss = dro.loss(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0, 0, 1]))
    # group losses [2, 2] -> q stays uniform; loss = 0.5 * 2 + 0.5 * 2
    assert dro.q.tolist() == pytest.approx([0.5, 0.5])
    assert loss.item() == pytest.approx(2.0)
    loss = dro.loss(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    e = math.exp(1.0)
    assert dro.q.tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)], rel=1e-5)
    assert loss.item() == pytest.approx(e / (e + 1), rel=1e-5)


def test_loss_ema_and_groupdro_state_round_trip():
    ema = LossEMA(3, alpha=0.7)
    ema.update(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))
    other = LossEMA(3, alpha=0.7)
    other.load_state_dict(ema.state_dict())
    assert other.values.tolist() == pytest.approx([1.0, 0.0, 2.0])
    assert other.updated.tolist() == [True, False, True]
    old = LossEMA(3, alpha=0.7)  # a checkpoint written before "updated" was saved
    old.load_state_dict({"values": torch.tensor([0.3, 0.0, 0.6])})
    assert old.updated.tolist() == [True, False, True]
    assert old.update(torch.tensor([5.0]), torch.tensor([1])).tolist() == [5.0]
    dro = GroupDROWeights(2, eta=1.0)
    dro.loss(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    again = GroupDROWeights(2, eta=1.0)
    again.load_state_dict(dro.state_dict())
    assert torch.equal(again.q, dro.q) and not torch.equal(again.q, torch.full((2,), 0.5))
