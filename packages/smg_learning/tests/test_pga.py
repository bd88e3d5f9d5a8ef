"""PGA: the first-order update against a hand derivation, and first-order vs exact."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from smg_learning.config import PGAConfig
from smg_learning.pga import (
    adam_second_moment,
    pga_gradient,
    pga_objective,
    shift_domain,
    split_domains,
    virtual_displacement,
)


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
        options=PGAConfig(
            inner_lr=alpha, beta_mem=beta_mem, beta_gen=beta_gen, estimator="first_order",
            measure=False,
        ),
    )  # fmt: skip
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


def _tiny_problem(hidden: int = 5):
    """A tanh MLP 3 -> hidden -> 1 in float64 and three batches of 6: current, replay
    (one site), shifted copy (the meta-test domain)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(6, 3, generator=g, dtype=torch.float64),
            torch.randn(6, 1, generator=g, dtype=torch.float64),
        )
        for _ in range(3)
    ]
    return model, batches


def _mlp_grads(alpha: float, order: str) -> torch.Tensor:
    model, batches = _tiny_problem(hidden=4)
    pga_objective(
        model,
        mse,
        batches,
        meta_test=[2],
        replay=batches[1],
        options=PGAConfig(
            inner_lr=alpha, beta_mem=1.0, beta_gen=0.5, estimator=order, measure=False
        ),
    )["loss"].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _inner_product_grad(alpha: float) -> torch.Tensor:
    """Gradient of the explicit alignment objective L_A + L_B - α<∇L_A, ∇L_B> (second order)."""
    model, batches = _tiny_problem(hidden=4)
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


def test_exact_and_first_order_agree_only_at_alpha_zero() -> None:
    """Both give ∇(L_A + L_B) at α = 0; for α > 0 they differ by O(α), not O(α²).

    The gap is the ``-α H_A g_B`` half of the alignment gradient that first_order drops
    (pinned against double backprop in ``test_alignment_part_against_double_backprop``):
    a 10x smaller α gives a ~10x smaller gap, and the gap stays a fixed fraction of the
    alignment part itself, so the two are not interchangeable at any α.
    """
    base = _mlp_grads(0.0, "first_order")
    assert torch.allclose(_mlp_grads(0.0, "exact"), base, atol=1e-12)
    diffs, parts = [], []
    for alpha in (1e-2, 1e-3):
        exact = _mlp_grads(alpha, "exact")
        diffs.append((exact - _mlp_grads(alpha, "first_order")).norm().item())
        parts.append((exact - base).norm().item())
    # the difference is O(α): a 10x smaller step gives a ~10x smaller difference
    assert 0 < diffs[1] < diffs[0]
    assert diffs[0] / diffs[1] == pytest.approx(10, rel=0.05)
    # ... and it is a large share of the alignment part at every α
    assert 0.2 < diffs[1] / parts[1] < 0.9
    assert diffs[0] / parts[0] == pytest.approx(diffs[1] / parts[1], rel=0.05)


def test_exact_matches_the_inner_product_objective_to_second_order() -> None:
    errs = [(_mlp_grads(a, "exact") - _inner_product_grad(a)).norm().item() for a in (1e-2, 1e-3)]
    assert errs[0] / errs[1] == pytest.approx(100, rel=0.1)  # O(α²)


def test_without_replay_or_meta_test_pga_is_the_plain_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    opts = PGAConfig(inner_lr=0.1, beta_gen=1.0, measure=False)
    pga_objective(model, mse, [(x, y)], options=opts)["loss"].backward()
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


# --------------------------------------------------------------------------------------
# The alignment part of each estimator against an independent reference: the gradient
# of the explicit alignment term -α[β_mem <g_cur, g_rep> + β_gen <g_mtr, g_mte>] by
# double backprop (create_graph=True), on a tiny tanh MLP in float64.

BETA_MEM, BETA_GEN = 1.0, 0.5


def _flat(xs) -> torch.Tensor:
    return torch.cat([x.flatten() for x in xs])


def _alignment_part(
    estimator: str, alpha: float, virtual_step: str = "sgd", second_moment=None
) -> torch.Tensor:
    model, batches = _tiny_problem()
    out = pga_gradient(
        model,
        mse,
        batches,
        meta_test=[2],
        replay=batches[1],
        options=PGAConfig(
            inner_lr=alpha, beta_mem=BETA_MEM, beta_gen=BETA_GEN, estimator=estimator,
            virtual_step=virtual_step, measure=True,
        ),
        second_moment=second_moment,
    )  # fmt: skip
    return _flat(out.alignment)


def _reference(
    alpha: float,
    precond: list[torch.Tensor] | None = None,
    half: bool = False,
    betas: tuple[float, float] = (BETA_MEM, BETA_GEN),
):
    """-α ∇[β_mem <g_cur, P g_rep> + β_gen <g_mtr, P g_mte>] by double backprop.

    ``half``: only the Hessian-vector terms first_order keeps, ``-α (H_B P g_A)``
    (the A-side gradients held constant).
    """
    model, batches = _tiny_problem()
    ps = list(model.parameters())
    pre = precond or [torch.ones_like(p) for p in ps]

    def grads(i):
        return torch.autograd.grad(mse(model(batches[i][0]), batches[i][1]), ps, create_graph=True)

    def dot(a, b, hold_a: bool):
        return sum(((x.detach() if hold_a else x) * w * y).sum() for x, w, y in zip(a, pre, b))

    g0, g1, g2 = grads(0), grads(1), grads(2)
    gmtr = [(a + b) / 2 for a, b in zip(g0, g1)]  # meta-train: current + replay site
    term = betas[0] * dot(g0, g1, half) + betas[1] * dot(gmtr, g2, half)
    return -alpha * _flat(torch.autograd.grad(term, ps))


@pytest.mark.parametrize("estimator", ["symmetric", "exact"])
def test_full_estimators_match_the_alignment_gradient_to_second_order(estimator: str) -> None:
    errs, refs = [], []
    for alpha in (4e-3, 2e-3, 1e-3):
        ref = _reference(alpha)
        errs.append((_alignment_part(estimator, alpha) - ref).norm().item())
        refs.append(ref.norm().item())
    assert errs[-1] < 1e-2 * refs[-1]
    # O(α²): halving α divides the error by ~4
    for a, b in itertools.pairwise(errs):
        assert a / b == pytest.approx(4, rel=0.1)


def test_first_order_misses_the_other_hessian_term() -> None:
    """first_order keeps -α H_B g_A only: a fixed share of the alignment gradient is lost."""
    misses = []
    for alpha in (4e-3, 2e-3, 1e-3):
        got, ref = _alignment_part("first_order", alpha), _reference(alpha)
        misses.append(((got - ref).norm() / ref.norm()).item())
        # ... and what it keeps is exactly the one-sided term, to O(α²)
        half = _reference(alpha, half=True)
        assert (got - half).norm() < 2e-2 * half.norm()
    assert all(0.2 < m < 0.9 for m in misses)  # about half, not shrinking with α
    assert misses[0] == pytest.approx(misses[-1], rel=0.05)


@pytest.mark.parametrize("estimator", ["first_order", "symmetric"])
def test_adam_virtual_step_is_the_alignment_in_adam_geometry(estimator: str) -> None:
    """With Adam's v̂ fixed, the step is α P g, P = 1/(sqrt(v̂) + ε): the alignment term
    becomes -α <g_A, P g_B> (symmetric: all of it; first_order: the H_B P g_A half)."""
    model, _ = _tiny_problem()
    g = torch.Generator().manual_seed(3)
    v = [torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.1 for p in model.parameters()]
    pre = [1 / (x.sqrt() + 1e-8) for x in v]
    for alpha in (2e-3, 1e-3):
        got = _alignment_part(estimator, alpha, virtual_step="adam", second_moment=v)
        ref = _reference(alpha, pre, half=estimator == "first_order")
        assert (got - ref).norm() < 2e-2 * ref.norm()


def test_virtual_displacements_by_hand() -> None:
    g = [torch.tensor([3.0, -4.0]), torch.tensor([[0.0, 12.0]])]
    sgd = virtual_displacement(g, 0.5, "sgd")
    torch.testing.assert_close(_flat(sgd), torch.tensor([1.5, -2.0, 0.0, 6.0]))
    # normalized: ||g|| = 13, four parameters: RMS step α per parameter
    nrm = virtual_displacement(g, 0.5, "normalized")
    torch.testing.assert_close(_flat(nrm), 0.5 * 2 / 13 * _flat(g))
    assert _flat(nrm).pow(2).mean().sqrt().item() == pytest.approx(0.5)
    assert _flat(virtual_displacement([torch.zeros(3)], 0.5, "normalized")).abs().sum() == 0
    # adam: per coordinate g / (sqrt(v) + eps); no state: a fresh Adam's first step, α·sign
    v = [torch.tensor([9.0, 4.0]), torch.tensor([[1.0, 16.0]])]
    ada = virtual_displacement(g, 0.5, "adam", v, eps=0.0)
    torch.testing.assert_close(_flat(ada), torch.tensor([0.5, -1.0, 0.0, 1.5]))
    fresh = virtual_displacement(g, 0.5, "adam", None, eps=0.0)
    torch.testing.assert_close(_flat(fresh)[[0, 1, 3]], torch.tensor([0.5, -0.5, 0.5]))
    with pytest.raises(ValueError):
        virtual_displacement(g, 0.5, "rmsprop")


def test_adam_second_moment_reads_the_bias_corrected_state() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    ps = list(model.parameters())
    assert adam_second_moment(opt, ps) == [None, None]
    assert adam_second_moment(None, ps) is None
    sq = [torch.zeros_like(p) for p in ps]
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).mean().backward()
        sq = [0.99 * s + 0.01 * p.grad**2 for s, p in zip(sq, ps)]
        opt.step()
    for got, want in zip(adam_second_moment(opt, ps), sq):
        torch.testing.assert_close(got, want / (1 - 0.99**3))


@pytest.mark.parametrize("estimator", ["first_order", "symmetric", "exact"])
def test_gradient_at_alpha_zero_is_the_reweighted_loss(estimator: str) -> None:
    """``at_zero`` is ∇[L_cur + β_mem L_rep + β_gen (L_mtr + L_mte)], and at α = 0 the
    step's gradient equals it (no alignment part) for every estimator."""
    model, batches = _tiny_problem()
    kw = dict(meta_test=[2], replay=batches[1])
    opts = PGAConfig(inner_lr=0.05, beta_mem=0.7, beta_gen=0.4, estimator=estimator, measure=True)
    out = pga_gradient(model, mse, batches, options=opts, **kw)
    ls = [mse(model(x), y) for x, y in batches]
    plain = ls[0] + 0.7 * ls[1] + 0.4 * ((ls[0] + ls[1]) / 2 + ls[2])
    want = _flat(torch.autograd.grad(plain, list(model.parameters())))
    torch.testing.assert_close(_flat(out.at_zero), want)
    assert out.logs["align_share"] > 0
    zero = pga_gradient(model, mse, batches, options=replace(opts, inner_lr=0.0), **kw)
    torch.testing.assert_close(_flat(zero.grad), want)
    assert zero.logs["align_norm"].item() == pytest.approx(0.0, abs=1e-12)
    # the logged share is ||grad - at_zero|| / ||grad||
    share = (_flat(out.grad) - want).norm() / _flat(out.grad).norm()
    assert out.logs["align_share"].item() == pytest.approx(share.item(), rel=1e-9)


@pytest.mark.parametrize("betas", [(0.0, 0.5), (1.0, 0.0)])
def test_each_objective_switches_off_with_its_weight(betas) -> None:
    """β_mem = 0 drops the orientational pair, β_gen = 0 the arbitrary one."""
    model, batches = _tiny_problem()
    alpha = 1e-3
    out = pga_gradient(
        model,
        mse,
        batches,
        meta_test=[2],
        replay=batches[1],
        options=PGAConfig(
            inner_lr=alpha, beta_mem=betas[0], beta_gen=betas[1], estimator="symmetric",
            measure=True,
        ),
    )  # fmt: skip
    ref = _reference(alpha, betas=betas)
    assert (_flat(out.alignment) - ref).norm() < 1e-2 * ref.norm()
    assert ("l_mem" in out.logs) == (betas[0] != 0) and ("l_gen" in out.logs) == (betas[1] != 0)


@pytest.mark.parametrize("estimator", ["first_order", "symmetric", "exact"])
def test_reported_value_is_the_estimators_objective(estimator: str) -> None:
    """The loss value is the objective the estimator differentiates, recomputed here
    from explicit virtual weights (symmetric: both roles of each pair)."""
    from torch.func import functional_call

    model, batches = _tiny_problem()
    a, bm, bg = 0.05, 0.7, 0.4
    out = pga_objective(
        model, mse, batches, meta_test=[2], replay=batches[1],
        options=PGAConfig(inner_lr=a, beta_mem=bm, beta_gen=bg, estimator=estimator, measure=False),
    )  # fmt: skip
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]

    def loss(i, step=None):
        ps = theta if step is None else [t - a * s for t, s in zip(theta, step)]
        x, y = batches[i] if isinstance(i, int) else i
        return mse(functional_call(model, dict(zip(names, ps)), (x,)), y).item()

    def grad(i):
        x, y = batches[i] if isinstance(i, int) else i
        return torch.autograd.grad(mse(model(x), y), list(model.parameters()))

    g0, g1, g2 = grad(0), grad(1), grad(2)
    gmtr = [(u + v) / 2 for u, v in zip(g0, g1)]
    mtr = (torch.cat([batches[0][0], batches[1][0]]), torch.cat([batches[0][1], batches[1][1]]))
    want = loss(0) + bm * loss(1, g0) + bg * (loss(mtr) + loss(2, gmtr))
    if estimator == "symmetric":
        want += bm * (loss(0, g1) - loss(0)) + bg * (loss(mtr, g2) - loss(mtr))
    assert out["loss"].item() == pytest.approx(want, rel=1e-10)


def test_shift_strength_scales_the_style() -> None:
    """strength 0 is no shift at all; strength s scales every drawn style parameter by s."""
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    same = shift_domain(x, torch.Generator().manual_seed(5), strength=0.0)
    torch.testing.assert_close(same, x)
    half = shift_domain(x, torch.Generator().manual_seed(5), strength=0.5)
    g = torch.Generator().manual_seed(5)
    u = [float(lo + (hi - lo) * torch.rand((), generator=g)) for lo, hi in
         ((-0.6, 0.6), (-0.4, 0.3), (-0.15, 0.15), (0.0, 0.05))]  # fmt: skip
    gamma, contrast = (
        float(torch.exp(torch.tensor(u[0] * 0.5))),
        float(torch.exp(torch.tensor(u[1] * 0.5))),
    )
    want = (x**gamma - 0.5) * contrast + 0.5 + 0.5 * u[2]
    want = (want + 0.5 * u[3] * torch.randn(x.shape, generator=g)).clamp(0, 1)
    torch.testing.assert_close(half, want)
