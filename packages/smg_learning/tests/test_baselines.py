"""Fair baselines: EWC's per-sample Fisher and real replay's fixed buffer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from smg_learning.config import run_preset
from smg_learning.data import load_continual
from smg_learning.segmenter import SegLoss, Segmenter, SegmenterConfig
from smg_learning.strategies import STRATEGIES, RunContext
from smg_learning.strategies.ewc import EWCPenalty


def _tiny_batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    y = (torch.rand(n, 1, 16, 16, generator=g) > 0.6).long()
    return x, y


def _hand_fishers(model, x, y, loss_fn) -> tuple[dict, dict]:
    """Per-sample and batch-mean diagonal Fisher by an explicit ``autograd.grad`` loop."""
    params = dict(model.named_parameters())
    per = {n: torch.zeros_like(p) for n, p in params.items()}
    mean_grad = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        grads = torch.autograd.grad(
            loss_fn(model(x[i : i + 1]), y[i : i + 1]), list(params.values())
        )
        for (n, _), g in zip(params.items(), grads):
            per[n] += g**2 / len(x)
            mean_grad[n] += g / len(x)
    return per, {n: g**2 for n, g in mean_grad.items()}


def test_ewc_fisher_is_per_sample_and_larger_than_batch_mean() -> None:
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(1, (4, 8), 0))
    x, y = _tiny_batch(8)
    loss_fn = SegLoss(0.5)
    want_per, want_batch = _hand_fishers(model, x, y, loss_fn)

    pen = EWCPenalty()
    pen.update(model, [(x[:4], y[:4]), (x[4:], y[4:])], loss_fn)  # two batches, same 8 samples
    for n in want_per:
        torch.testing.assert_close(pen.fisher[n], want_per[n], rtol=1e-4, atol=1e-10)

    batch = EWCPenalty()
    batch.update(model, [(x, y)], loss_fn, per_sample=False)
    for n in want_batch:  # the batch loss is the mean of the per-sample losses (Dice per sample)
        torch.testing.assert_close(batch.fisher[n], want_batch[n], rtol=1e-3, atol=1e-10)

    ratio = sum(f.sum() for f in pen.fisher.values()) / sum(f.sum() for f in batch.fisher.values())
    print(f"per-sample / batch-mean Fisher (total, batch of 8): {ratio:.2f}")
    # Jensen: E[g²] >= E[g]², and per-sample noise makes it several times larger
    assert ratio > 2.0
    # the penalty uses it: λ/2 Σ F (θ - θ*)² after a known shift of every weight
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    want = sum((f * 0.01).sum() for f in want_per.values())
    assert pen(model).item() == pytest.approx(want.item(), rel=1e-4)


def test_ewc_strategy_fisher_uses_the_config(prostate_dir) -> None:
    cfg = dataclasses.replace(run_preset("tiny"), ewc_batches=1, batch_size=4)
    data = load_continual(prostate_dir, cfg, ("RUNMC", "BMC"))
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(1, tuple(cfg.channels), cfg.num_res_units))
    totals = {}
    for kind in ("per-sample", "batch"):
        ewc = STRATEGIES.get("ewc")(RunContext(data, dataclasses.replace(cfg, ewc_fisher=kind)))
        ewc.end_stage(0, model)
        totals[kind] = sum(f.sum().item() for f in ewc.penalty.fisher.values())
    # Jensen (strict: the samples differ); an untrained model's gradients mostly agree
    assert totals["per-sample"] > 1.02 * totals["batch"]


def _replay(prostate_dir, **kw):
    cfg = dataclasses.replace(run_preset("tiny"), replay_per_site=5, **kw)
    data = load_continual(prostate_dir, cfg, ("RUNMC", "BMC", "I2CVB"))
    return data, STRATEGIES.get("replay-real")(RunContext(data, cfg, seed=3))


def test_real_replay_buffer_is_fixed_when_the_site_ends(prostate_dir) -> None:
    data, strat = _replay(prostate_dir)
    assert (strat.name, strat.replay) == ("replay-real", "real")
    model = torch.nn.Linear(1, 1)
    strat.start_stage(0)
    assert strat.memory is None
    strat.end_stage(0, model)
    first = strat.buffers["RUNMC"].clone()
    assert len(first) == 5 and len(set(first.tolist())) == 5
    assert int(first.max()) < len(data.parts["train"]["RUNMC"])
    seen = []
    for t in (1, 2):
        strat.start_stage(t)
        mem = strat.memory
        # the stored slices of RUNMC are exactly its buffer's slices, stage after stage
        run = mem.sites == 0
        torch.testing.assert_close(mem.images[run], data.parts["train"]["RUNMC"].images[first])
        torch.testing.assert_close(mem.masks[run], data.parts["train"]["RUNMC"].masks[first])
        assert set(mem.sites.tolist()) == set(range(t))
        seen.append(mem.images[run].clone())
        strat.end_stage(t, model)
        assert torch.equal(strat.buffers["RUNMC"], first)  # not redrawn
    torch.testing.assert_close(seen[0], seen[1])
    # the choice is seeded: another seed keeps other slices
    _, other = _replay(prostate_dir)
    other.run.seed = 4
    other.end_stage(0, model)
    assert not torch.equal(other.buffers["RUNMC"], first)


def test_real_replay_capacity_keeps_a_prefix_of_each_buffer(prostate_dir) -> None:
    _, strat = _replay(prostate_dir, replay_capacity=6)
    model = torch.nn.Linear(1, 1)
    strat.end_stage(0, model)
    assert len(strat.replay_memory(1)) == 5  # one site: min(per_site, capacity)
    strat.end_stage(1, model)
    kept = strat.kept()
    assert {s: len(i) for s, i in kept.items()} == {"RUNMC": 3, "BMC": 3}
    assert torch.equal(kept["RUNMC"], strat.buffers["RUNMC"][:3])
    assert len(strat.replay_memory(2)) == 6


def test_ewc_end_stage_and_regularise_by_hand(prostate_dir) -> None:
    cfg = dataclasses.replace(run_preset("tiny"), ewc_batches=2, batch_size=3, ewc_lambda=7.0)
    data = load_continual(prostate_dir, cfg, ("RUNMC", "BMC"))
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(1, tuple(cfg.channels), cfg.num_res_units))
    ewc = STRATEGIES.get("ewc")(RunContext(data, cfg, seed=2))
    assert ewc.name == "ewc"
    loss = torch.tensor(0.25)
    logs: dict = {}
    assert ewc.regularise(model, None, None, loss, logs).item() == 0.25  # no site finished yet

    ewc.end_stage(1, model)  # site BMC, stage 1
    assert all(p.grad is None for p in model.parameters())  # no stray gradients left
    part = data.parts["train"]["BMC"]
    g = torch.Generator().manual_seed(2 + 1)  # the documented draw: seed + stage
    idx = torch.cat([torch.randint(0, len(part), (3,), generator=g) for _ in range(2)])
    want, _ = _hand_fishers(model, part.images[idx], part.masks[idx], SegLoss(cfg.dice_weight))
    for n in want:
        torch.testing.assert_close(ewc.penalty.fisher[n], want[n], rtol=1e-4, atol=1e-10)

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    pen = sum((f * 0.01).sum() for f in want.values())
    out = ewc.regularise(model, None, None, loss, logs)
    assert out.item() == pytest.approx(0.25 + 7.0 / 2 * pen.item(), rel=1e-4)
    assert logs["ewc"].item() == pytest.approx(pen.item(), rel=1e-4)


def test_replay_memory_sample_draws_uniformly_from_all_rows() -> None:
    from smg_learning.replay import ReplayMemory, resize_pairs

    mem = ReplayMemory(
        torch.arange(5).float().view(5, 1, 1, 1), torch.zeros(5, 1, 1, 1).long(), torch.arange(5)
    )
    x, y, s = mem.sample(500, torch.Generator().manual_seed(0))
    assert x.shape == (500, 1, 1, 1) and y.shape == (500, 1, 1, 1)
    assert torch.equal(x.view(-1).long(), s)  # rows stay aligned
    assert sorted(s.unique().tolist()) == [0, 1, 2, 3, 4]  # first and last rows drawn too
    # a constant image stays constant when resized (and in [0, 1])
    im, mk = resize_pairs(torch.full((1, 1, 8, 8), 0.3), torch.ones(1, 1, 8, 8).long(), 4)
    torch.testing.assert_close(im, torch.full((1, 1, 4, 4), 0.3))
    assert torch.equal(mk, torch.ones(1, 1, 4, 4).long())
