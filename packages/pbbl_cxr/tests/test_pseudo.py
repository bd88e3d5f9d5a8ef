"""Youden threshold, pseudo bias labels and the prior p(y | b_hat)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from medcommon.metrics import youden_threshold
from pbbl_cxr.pseudo import bias_prior, log_prior, pseudo_bias_labels


def test_youden_threshold_maximises_tpr_minus_fpr_like_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + 1.2 * y
    t = youden_threshold(y, s)
    fpr, tpr, _thr = roc_curve(y, s)
    best = np.max(tpr - fpr)
    pred = s > t
    j = pred[y == 1].mean() - pred[y == 0].mean()
    assert j == pytest.approx(best)


def test_pseudo_labels_binary_by_hand():
    probs1 = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.9, 0.2, 0.3])
    probs = torch.stack([1 - probs1, probs1], 1)
    y = torch.tensor([0, 0, 1, 1, 1, 0, 0])
    b_hat, t = pseudo_bias_labels(probs, y)
    # Between 0.3 and 0.35: TPR 1, FPR 1/4 -> J = 0.75 (between 0.4 and 0.8 J is only 2/3).
    assert t == pytest.approx(0.325)
    assert b_hat.tolist() == [0, 1, 1, 1, 1, 0, 0]


def test_pseudo_labels_multiclass_argmax():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    b_hat, t = pseudo_bias_labels(probs, torch.tensor([0, 1, 2]))
    assert t is None and b_hat.tolist() == [1, 0, 2]


def test_prior_is_row_normalised_counts():
    b = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    y = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    prior = bias_prior(b, y, 2, 2)
    assert prior.flatten().tolist() == pytest.approx([0.75, 0.25, 1 / 3, 2 / 3])
    assert torch.allclose(log_prior(prior), torch.log(prior + 1e-9))


def test_prior_unseen_bias_is_uniform():
    prior = bias_prior(torch.tensor([0, 0]), torch.tensor([0, 1]), 3, 2)
    assert prior[2].tolist() == [0.5, 0.5]
