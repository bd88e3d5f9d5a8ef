"""PGA: the first-order update against a hand derivation, and first-order vs exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from smg_learning.pga import pga_objective, shift_domain, split_domains


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def _grad(w: float, b: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d/d(w, b) of mean((w x + b - y)^2), by hand."""
    r = w * x + b - y
    return np.array([np.mean(2 * r * x), np.mean(2 * r)])


def _loss(w: float, b: float, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((w * x + b - y) ** 2))


def test_first_order_update_matches_hand_derivation() -> None:
    rng = np.random.default_rng(0)
    d = [
        (rng.normal(size=5), rng.normal(size=5)) for _ in range(3)
    ]  # current, replay site, shifted
    alpha, beta_mem, beta_gen, lr = 0.1, 0.7, 0.4, 0.05
    w0, b0 = 0.3, -0.2
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(w0)
        model.bias.fill_(b0)
    batches = [(torch.tensor(x)[:, None], torch.tensor(y)[:, None]) for x, y in d]
    out = pga_objective(
        model,
        mse,
        batches,
        meta_test=[2],
        replay=batches[1],
        inner_lr=alpha,
        beta_mem=beta_mem,
        beta_gen=beta_gen,
        estimator="first_order",
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out["loss"].backward()
    opt.step()

    # by hand: G = g_cur(θ) + β_mem g_rep(θ - α g_cur) + β_gen [g_mtr(θ) + g_mte(θ - α g_mtr)]
    theta = np.array([w0, b0])
    g_cur = _grad(*theta, *d[0])
    g_rep = _grad(*(theta - alpha * g_cur), *d[1])
    g_mtr = (_grad(*theta, *d[0]) + _grad(*theta, *d[1])) / 2
    g_mte = _grad(*(theta - alpha * g_mtr), *d[2])
    grad = g_cur + beta_mem * g_rep + beta_gen * (g_mtr + g_mte)
    expected = theta - lr * grad
    got = np.array([model.weight.item(), model.bias.item()])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # the reported value is the objective itself
    value = (
        _loss(*theta, *d[0])
        + beta_mem * _loss(*(theta - alpha * g_cur), *d[1])
        + beta_gen
        * (
            (_loss(*theta, *d[0]) + _loss(*theta, *d[1])) / 2
            + _loss(*(theta - alpha * g_mtr), *d[2])
        )
    )
    assert out["loss"].item() == pytest.approx(value, rel=1e-12)


def _mlp_grads(alpha: float, order: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(6, 3, generator=g, dtype=torch.float64),
            torch.randn(6, 1, generator=g, dtype=torch.float64),
        )
        for _ in range(3)
    ]
    pga_objective(
        model,
        mse,
        batches,
        meta_test=[2],
        replay=batches[1],
        inner_lr=alpha,
        beta_mem=1.0,
        beta_gen=0.5,
        estimator=order,
    )["loss"].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _inner_product_grad(alpha: float) -> torch.Tensor:
    """Gradient of the explicit alignment objective L_A + L_B - α<∇L_A, ∇L_B> (second order)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(6, 3, generator=g, dtype=torch.float64),
            torch.randn(6, 1, generator=g, dtype=torch.float64),
        )
        for _ in range(3)
    ]
    ps = list(model.parameters())

    def loss(i):
        return mse(model(batches[i][0]), batches[i][1])

    def grads(lv):
        return torch.autograd.grad(lv, ps, create_graph=True)

    def dot(a, b):
        return sum((x * y).sum() for x, y in zip(a, b))

    l0, l1, l2 = loss(0), loss(1), loss(2)
    g0, g1, g2 = grads(l0), grads(l1), grads(l2)
    gmtr = [(a + b) / 2 for a, b in zip(g0, g1)]
    obj = l0 + (l1 - alpha * dot(g0, g1)) + 0.5 * ((l0 + l1) / 2 + l2 - alpha * dot(gmtr, g2))
    obj.backward()
    return torch.cat([p.grad.flatten() for p in ps])


def test_exact_and_first_order_agree_to_first_order() -> None:
    base = _mlp_grads(0.0, "first_order")
    assert torch.allclose(_mlp_grads(0.0, "exact"), base, atol=1e-12)
    diffs = []
    for alpha in (1e-2, 1e-3):
        diffs.append((_mlp_grads(alpha, "exact") - _mlp_grads(alpha, "first_order")).norm().item())
    # the difference is O(α): a 10x smaller step gives a ~10x smaller difference
    assert 0 < diffs[1] < diffs[0]
    assert diffs[0] / diffs[1] == pytest.approx(10, rel=0.05)
    assert diffs[1] < 1e-2 * base.norm().item()  # relative gap ~ α · O(1)


def test_exact_matches_the_inner_product_objective_to_second_order() -> None:
    errs = [(_mlp_grads(a, "exact") - _inner_product_grad(a)).norm().item() for a in (1e-2, 1e-3)]
    assert errs[0] / errs[1] == pytest.approx(100, rel=0.1)  # O(α²)


def test_without_replay_or_meta_test_pga_is_the_plain_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    pga_objective(model, mse, [(x, y)], inner_lr=0.1)["loss"].backward()
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    mse(model(x), y).backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(got, want)


def test_split_and_shift() -> None:
    g = torch.Generator().manual_seed(0)
    assert split_domains(1, 1, g) == []
    idx = split_domains(4, 2, g)
    assert len(idx) == 2 and all(0 <= i < 4 for i in idx)
    assert len(split_domains(3, 5, g)) == 2  # at least one meta-train domain is kept
    x = torch.rand(2, 1, 8, 8)
    s = shift_domain(x, g)
    assert s.shape == x.shape and s.min() >= 0 and s.max() <= 1 and not torch.allclose(s, x)


def test_shifted_copy_is_the_documented_style_applied_to_the_batch():
    """Gamma, contrast, brightness and noise, recomputed by hand from the same draws."""
    from smg_learning.pga import shift_domain

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = shift_domain(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    u = [float(lo + (hi - lo) * torch.rand((), generator=g)) for lo, hi in
         ((-0.6, 0.6), (-0.4, 0.3), (-0.15, 0.15), (0.0, 0.05))]  # fmt: skip
    gamma, contrast = float(torch.exp(torch.tensor(u[0]))), float(torch.exp(torch.tensor(u[1])))
    expected = (x**gamma - 0.5) * contrast + 0.5 + u[2]
    expected = (expected + u[3] * torch.randn(x.shape, generator=g)).clamp(0, 1)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, x.clamp(0, 1) ** gamma)  # the style does more than gamma
