"""The replay and PGA strategy steps against the same step assembled by hand.

From the step's generator (a pure function of seed, stage and step) the reference
draws the replay batch, the shifted copy and the meta-test split itself, builds the
domains (current batch, one per replayed site, the shifted copy) and takes the loss
or :func:`smg_learning.pga.pga_gradient` directly; the strategy's gradient must match.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medcommon.config import replace_nested
from smg_learning.config import PGAConfig, run_preset
from smg_learning.data import load_continual
from smg_learning.pga import adam_second_moment, pga_gradient, shift_domain, split_domains
from smg_learning.segmenter import SegLoss, Segmenter, SegmenterConfig
from smg_learning.strategies import STRATEGIES, RunContext, step_generator


def _ctx(step: int) -> SimpleNamespace:
    return SimpleNamespace(step=step, accelerator=SimpleNamespace(process_index=0, num_processes=1))


@pytest.fixture(scope="module")
def data(prostate_dir):
    return load_continual(prostate_dir, run_preset("tiny"), ("RUNMC", "BMC", "I2CVB"), ())


def _strategy(data, method: str, **pga):
    cfg = replace_nested(run_preset("tiny"), pga=pga) if pga else run_preset("tiny")
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(data.channels, tuple(cfg.channels), cfg.num_res_units))
    strategy = STRATEGIES.get(method)(RunContext(data=data, cfg=cfg, seed=3))
    strategy.end_stage(0, model)
    strategy.end_stage(1, model)
    strategy.start_stage(2)  # replays RUNMC and BMC
    part = data.parts["train"]["I2CVB"]
    batch = {"image": part.images[:4], "mask": part.masks[:4]}
    return cfg, model, strategy, batch


def _grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_replay_step_is_the_loss_on_the_concatenated_batch(data) -> None:
    cfg, model, strategy, batch = _strategy(data, "replay-real")
    out = strategy.step(model, batch, _ctx(5))
    out["loss"].backward()
    got = _grad(model)
    rx, ry, rs = strategy.memory.sample(cfg.replay_batch, step_generator(3, 2, 5))
    assert set(rs.tolist()) <= {0, 1}
    model.zero_grad()
    x, y = torch.cat([batch["image"], rx]), torch.cat([batch["mask"], ry])
    SegLoss(cfg.dice_weight)(model(x), y).backward()
    torch.testing.assert_close(got, _grad(model))


@pytest.mark.parametrize("estimator", ["first_order", "symmetric"])
@pytest.mark.parametrize("virtual_step", ["sgd", "adam"])
def test_pga_step_is_pga_on_the_hand_built_domains(data, estimator, virtual_step) -> None:
    cfg, model, strategy, batch = _strategy(
        data, "pga-real", estimator=estimator, virtual_step=virtual_step, inner_lr=0.05
    )
    # an Adam with state: the Adam-geometry step must read its second moment
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    SegLoss()(model(batch["image"]), batch["mask"]).backward()
    opt.step()
    model.zero_grad()
    strategy.optimizer = opt
    out = strategy.step(model, batch, _ctx(7))
    out["loss"].backward()
    got = _grad(model)

    gen = step_generator(3, 2, 7)
    rx, ry, rs = strategy.memory.sample(cfg.replay_batch, gen)
    x, y = batch["image"], batch["mask"]
    domains = [(x, y)] + [(rx[rs == s], ry[rs == s]) for s in torch.unique(rs).tolist()]
    domains.append((shift_domain(x, gen, cfg.pga.shift_strength), y))
    meta_test = split_domains(len(domains), cfg.pga.meta_test_domains, gen)
    params = list(model.parameters())
    want = pga_gradient(
        model,
        SegLoss(cfg.dice_weight),
        domains,
        meta_test,
        (rx, ry),
        options=PGAConfig(
            inner_lr=0.05, beta_mem=cfg.pga.beta_mem, beta_gen=cfg.pga.beta_gen,
            estimator=estimator, virtual_step=virtual_step, measure=True,
        ),
        second_moment=adam_second_moment(opt, params),
    )  # fmt: skip
    torch.testing.assert_close(got, torch.cat([g.flatten() for g in want.grad]))
    assert float(out["align_share"]) == pytest.approx(float(want.logs["align_share"]), rel=1e-5)
    if virtual_step == "adam":  # and the optimiser's state mattered
        fresh = pga_gradient(
            model, SegLoss(cfg.dice_weight), domains, meta_test, (rx, ry),
            options=PGAConfig(
                inner_lr=0.05, beta_mem=cfg.pga.beta_mem, beta_gen=cfg.pga.beta_gen,
                estimator=estimator, virtual_step="adam", measure=False,
            ),
            second_moment=None,
        )  # fmt: skip
        assert not torch.allclose(got, torch.cat([g.flatten() for g in fresh.grad]))


def test_lwf_adds_the_tempered_kl_to_the_teacher(data) -> None:
    import torch.nn.functional as F

    cfg, model, strategy, batch = _strategy(data, "lwf")
    x = batch["image"]
    teacher = strategy.teacher
    assert teacher is not None  # the model after stage 1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the student has moved on
    logits = model(x)
    logs: dict = {}
    loss = torch.tensor(1.0)
    got = strategy.regularise(model, x, logits, loss, logs)
    t = cfg.lwf_temperature
    soft = F.softmax(teacher(x) / t, dim=1)
    logp = F.log_softmax(logits / t, dim=1)
    kd = (soft * (soft.log() - logp)).sum() / (x.shape[0] * x.shape[-1] * x.shape[-2])
    assert kd > 0
    assert got.item() == pytest.approx(1.0 + cfg.lwf_alpha * t**2 * kd.item(), rel=1e-4)
