"""PGA's alignment part at the strategy level: what is logged is what the step adds.

One PGA step and one step of the same strategy at α = 0 (PGA's re-weighted replay,
the ``smg-alpha0`` row) from the same weights, batch and replay draw: with plain SGD
the weights differ by exactly ``lr`` times the logged alignment part, which is zero
at α = 0. And the per-step shares reach ``log.jsonl`` and, as per-stage means,
``metrics.json``.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from medcommon.config import replace_nested
from smg_learning.config import run_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual
from smg_learning.segmenter import Segmenter, SegmenterConfig
from smg_learning.strategies import STRATEGIES, RunContext

LR = 0.1


def _ctx(step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(step=step, accelerator=SimpleNamespace(process_index=0, num_processes=1))


@pytest.fixture(scope="module")
def setup(prostate_dir):
    cfg = run_preset("tiny")
    data = load_continual(prostate_dir, cfg, ("RUNMC", "BMC"), ())
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(data.channels, tuple(cfg.channels), cfg.num_res_units))
    part = data.parts["train"]["BMC"]
    batch = {"image": part.images[:4], "mask": part.masks[:4]}
    return cfg, data, model, batch


def _step(setup, **pga) -> tuple[torch.Tensor, dict]:
    """Weights after one SGD step of ``pga-real`` in stage 1 (replaying RUNMC's buffer)."""
    cfg, data, model, batch = setup
    cfg = replace_nested(cfg, pga=pga)
    strategy = STRATEGIES.get("pga-real")(RunContext(data=data, cfg=cfg, seed=0))
    net = copy.deepcopy(model)
    strategy.end_stage(0, net)  # RUNMC's replay buffer
    strategy.start_stage(1)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    strategy.optimizer = opt  # no Adam state: the adam step is a fresh Adam's first step
    out = strategy.step(net, batch, _ctx())
    out["loss"].backward()
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    return flat, {k: float(v) for k, v in out.items() if k != "loss"}


@pytest.mark.parametrize("estimator", ["first_order", "symmetric", "exact"])
@pytest.mark.parametrize("virtual_step", ["sgd", "adam", "normalized"])
def test_step_difference_is_the_logged_alignment_part(setup, estimator, virtual_step) -> None:
    kw = dict(estimator=estimator, virtual_step=virtual_step, inner_lr=0.05)
    with_pga, logs = _step(setup, **kw)
    plain, logs0 = _step(setup, **{**kw, "inner_lr": 0.0})
    # the α = 0 step logs no alignment part, and its update is the re-weighted replay's
    # (exact: the same gradient by another graph, float32 round-off only)
    assert logs0["align_share"] < 1e-5
    assert logs0["align_norm"] < 1e-5 * logs0["update_norm"]
    diff = (with_pga - plain).norm().item()
    assert diff > 0
    assert diff == pytest.approx(LR * logs["align_norm"], rel=1e-3)
    assert logs["align_share"] == pytest.approx(logs["align_norm"] / logs["update_norm"], rel=1e-6)
    start = torch.cat([p.detach().flatten() for p in setup[2].parameters()])
    assert (with_pga - start).norm().item() == pytest.approx(LR * logs["update_norm"], rel=1e-3)


def test_alpha_zero_step_equals_itself_across_estimators(setup) -> None:
    """At α = 0 every estimator and virtual step takes the same (re-weighted replay) step."""
    ref, _ = _step(setup, inner_lr=0.0)
    for est in ("symmetric", "exact"):
        for vs in ("adam", "normalized"):
            got, _ = _step(setup, inner_lr=0.0, estimator=est, virtual_step=vs)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_shares_reach_the_log_and_metrics(prostate_dir, tmp_path) -> None:
    cfg = run_preset("tiny")
    data = load_continual(prostate_dir, cfg, ("RUNMC", "BMC"), ())
    metrics = train_continual(data, cfg, "pga-real", tmp_path, seed=0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    per_stage = saved["align_share_per_stage"]
    assert len(per_stage) == 2 and all(0 < v < 1 for v in per_stage)
    assert saved["align_share"] == pytest.approx(sum(per_stage) / 2)
    assert metrics["align_share"] == saved["align_share"]
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    for site, want in zip(data.sites, per_stage):
        logged = [
            r["align_share"]
            for r in lines
            if r.get("stage") == f"site-{site}" and "align_share" in r
        ]
        # log_every = 2 over 6 steps: three equal windows, whose mean is the stage mean
        assert len(logged) == 3
        assert sum(logged) / 3 == pytest.approx(want, rel=1e-6)
    # a strategy without PGA records nothing
    plain = train_continual(data, cfg, "replay-real", None, seed=0)
    assert "align_share" not in plain
