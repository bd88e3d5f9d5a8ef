"""Each unlearning loss against values computed by hand (scalar math) on fixed logits."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn_bench import losses

LN3 = math.log(3.0)
# One sample, three positions, vocabulary of 2. Position 0 predicts label 0 with
# p = 1/2; position 1 predicts label 1 with p = 3/4; position 2 has no label.
LOGITS = torch.tensor([[[0.0, 0.0], [0.0, LN3], [5.0, -5.0]]])
LABELS = torch.tensor([[-100, 0, 1]])
LOGP = math.log(0.5) + math.log(0.75)  # log p(y|x) = -0.98083


def test_sequence_logprob_and_nll():
    lp, n = losses.sequence_logprob(LOGITS, LABELS)
    assert lp.item() == pytest.approx(LOGP, abs=1e-6)
    assert n.item() == 2
    assert losses.nll(LOGITS, LABELS).item() == pytest.approx(-LOGP / 2, abs=1e-6)


def test_nll_averages_over_tokens_of_the_batch():
    # second sample: one answer token with p = 1/2
    logits = torch.cat([LOGITS, torch.zeros(1, 3, 2)])
    labels = torch.cat([LABELS, torch.tensor([[-100, -100, 1]])])
    expected = -(LOGP + math.log(0.5)) / 3
    assert losses.nll(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_npo_loss():
    beta, ref = 0.1, -0.5
    expected = (
        2 / beta * math.log(1 + math.exp(beta * (LOGP - ref)))
    )  # -log sigmoid(-b d) = log(1+e^{b d})
    got = losses.npo_loss(torch.tensor([LOGP]), torch.tensor([ref]), beta)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # at log p_theta = log p_ref the loss is (2/beta) log 2
    assert losses.npo_loss(torch.zeros(3), torch.zeros(3), 0.2).item() == pytest.approx(
        10 * math.log(2), abs=1e-6
    )


def test_simnpo_loss():
    beta, delta = 2.5, 0.3
    z = -beta * LOGP / 2 - delta
    expected = 2 / beta * math.log(1 + math.exp(-z))
    got = losses.simnpo_loss(torch.tensor([LOGP]), torch.tensor([2]), beta, delta)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_kl_ref_theta():
    ref = torch.tensor([[[0.0, 0.0], [9.0, 9.0]]])
    theta = torch.tensor([[[0.0, LN3], [1.0, 2.0]]])
    labels = torch.tensor([[-100, 1]])  # only position 0 is scored
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert losses.kl_ref_theta(ref, theta, labels).item() == pytest.approx(expected, abs=1e-6)
    assert losses.kl_ref_theta(theta, theta, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_rmu_loss():
    h_f = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])
    mask_f = torch.tensor([[1, 0]])  # the second position is padding
    control = torch.tensor([0.0, 4.0])
    h_r = torch.tensor([[[1.0, 1.0]]])
    h_r_ref = torch.tensor([[[0.0, 3.0]]])
    total, forget, retain = losses.rmu_loss(
        h_f, mask_f, control, h_r, h_r_ref, torch.tensor([[1]]), alpha=10.0
    )
    assert forget.item() == pytest.approx((1 + 4) / 2)
    assert retain.item() == pytest.approx((1 + 4) / 2)
    assert total.item() == pytest.approx(2.5 + 10 * 2.5)
