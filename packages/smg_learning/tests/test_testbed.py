"""Issue #22's test bed: the intensity-transfer family (sites and PGA's shifted copies) and
the probe of the gradient cosines PGA optimises."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medcommon.config import replace_nested
from medcommon.io import read_image
from smg_learning.config import PGAConfig, run_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual
from smg_learning.pga import adam_second_moment, pga_gradient, shift_domain, split_domains
from smg_learning.segmenter import SegLoss, Segmenter, SegmenterConfig
from smg_learning.strategies import STRATEGIES, RunContext, step_generator
from smg_learning.synth import SynthSpec, generate
from smg_learning.transfer import (
    HIGH,
    KNOTS,
    LOW,
    apply_curve,
    apply_curve_torch,
    knot_values,
    shift_transfer,
    site_curve,
)

SITES = ("RUNMC", "BMC", "I2CVB")


# ----------------------------------------------------------------- the transfer family
def test_torch_curve_is_numpys_interpolation():
    rng = np.random.default_rng(0)
    values = knot_values(rng.uniform(size=KNOTS))
    x = rng.uniform(-0.2, 1.2, size=(3, 1, 7, 7))
    got = apply_curve_torch(torch.from_numpy(x), torch.from_numpy(values)).numpy()
    want = np.interp(np.clip(x, 0, 1), np.linspace(0, 1, KNOTS), values)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.allclose(apply_curve(x, values), want)
    # knot values span [LOW, HIGH] inside [0, 1]
    assert knot_values(np.array([0.0, 1.0])) == pytest.approx([LOW, HIGH])
    assert 0.0 < LOW < HIGH < 1.0


def test_site_curves_keep_the_gland_visible_in_either_polarity():
    rng = np.random.default_rng(1)
    signs = []
    for _ in range(200):
        values = site_curve(rng, (0.45, 0.75), 0.2)
        tissue, gland = apply_curve(np.array([0.45, 0.75]), values)
        assert abs(gland - tissue) >= 0.2
        signs.append(np.sign(gland - tissue))
    # a continuous family with polarity changes: both signs, neither rare
    assert 0.3 < np.mean(np.array(signs) > 0) < 0.7


def test_shifted_copies_flip_polarity_for_some_curves():
    """The ``transfer`` shift can flip the order of two intensities; the ``style`` shift
    (a monotone map plus noise) never does, which is why it missed the site shift."""
    x = torch.tensor([0.45, 0.75]).view(1, 1, 1, 2)
    flips = 0
    for k in range(100):
        y = shift_transfer(x, torch.Generator().manual_seed(k)).flatten()
        flips += bool(y[1] < y[0])
    assert 20 < flips < 80


def _gland_contrast(folder, site):
    img = read_image(folder / site / "Case00.nii.gz").array.astype(float)
    mask = read_image(folder / site / "Case00_segmentation.nii.gz").array > 0
    img = img / img.max()
    return img[mask].mean() - img[~mask & (img > 0.1)].mean()


def test_curves_synth_renders_sites_through_their_curves(tmp_path):
    spec = SynthSpec(sites=6, cases=2, slices=6, size=40, transfer="curves")
    out = generate(tmp_path / "c", "prostate", spec=spec, seed=0)
    contrasts = [_gland_contrast(out, s) for s in sorted(p.name for p in out.iterdir())]
    assert min(contrasts) < -0.05 and max(contrasts) > 0.05  # both polarities
    with pytest.raises(Exception, match="prostate"):
        generate(tmp_path / "f", "fundus", spec=spec)


def test_the_default_generator_is_unchanged(tmp_path):
    """``alternating`` (every preset's) writes the bytes it wrote before ``curves`` existed."""
    out = generate(tmp_path / "d", "prostate", "tiny", seed=0)
    h = hashlib.sha256()
    for f in sorted(out.rglob("*.nii.gz")):
        h.update(read_image(f).array.tobytes())
    assert h.hexdigest()[:16] == "f992bed9e49e275f"  # 5be9eaa, before this change


# ------------------------------------------------------------- PGA's shifted copies
@pytest.fixture(scope="module")
def data(prostate_dir):
    return load_continual(prostate_dir, run_preset("tiny"), SITES, ())


def _ctx(step: int) -> SimpleNamespace:
    return SimpleNamespace(step=step, accelerator=SimpleNamespace(process_index=0, num_processes=1))


def _at_stage_2(data, method, **changes):
    cfg = replace_nested(run_preset("tiny"), **changes)
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(data.channels, tuple(cfg.channels), cfg.num_res_units))
    strategy = STRATEGIES.get(method)(RunContext(data=data, cfg=cfg, seed=3))
    strategy.end_stage(0, model)
    strategy.end_stage(1, model)
    strategy.start_stage(2)
    part = data.parts["train"]["I2CVB"]
    return cfg, model, strategy, {"image": part.images[:4], "mask": part.masks[:4]}


def test_pga_step_with_transfer_shift_is_pga_on_a_curve_copy(data):
    cfg, model, strategy, batch = _at_stage_2(
        data, "pga-real", pga={"shift": "transfer", "inner_lr": 0.05}
    )
    strategy.step(model, batch, _ctx(7))["loss"].backward()
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    gen = step_generator(3, 2, 7)
    rx, ry, rs = strategy.memory.sample(cfg.replay_batch, gen)
    x, y = batch["image"], batch["mask"]
    domains = [(x, y)] + [(rx[rs == s], ry[rs == s]) for s in torch.unique(rs).tolist()]
    domains.append((shift_transfer(x, gen), y))
    meta_test = split_domains(len(domains), cfg.pga.meta_test_domains, gen)
    want = pga_gradient(
        model, SegLoss(cfg.dice_weight), domains, meta_test, (rx, ry),
        options=PGAConfig(inner_lr=0.05, beta_mem=cfg.pga.beta_mem, beta_gen=cfg.pga.beta_gen),
        second_moment=adam_second_moment(None, list(model.parameters())),
    )  # fmt: skip
    torch.testing.assert_close(got, torch.cat([g.flatten() for g in want.grad]))


# ------------------------------------------------------------------------- the probe
def _flat_grad(model, x, y, loss_fn):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss_fn(model(x), y), params)])


@pytest.mark.parametrize("shift", ["transfer", "style"])
def test_probe_records_the_documented_cosines(data, shift):
    cfg, model, strategy, _ = _at_stage_2(
        data, "replay-real", probe_every=5, probe_size=6, pga={"shift": shift}
    )
    strategy.probe(model, _ctx(3))  # not a probe step
    assert strategy.records == {}
    strategy.probe(model, _ctx(10))
    rec = strategy.records[2]
    # by hand, from the documented recipe: a (seed, stage) generator draws the current
    # site's probe slices, then the replay memory's, then the shifted copy
    g = torch.Generator().manual_seed(3 * 1_000_003 + 7_777 * 2 + 11)
    site = data.parts["train"]["I2CVB"]
    ci = torch.randperm(len(site), generator=g)[:6]
    ri = torch.randperm(len(strategy.memory), generator=g)[:6]
    cx, cy = site.images[ci], site.masks[ci]
    rx, ry = strategy.memory.images[ri], strategy.memory.masks[ri]
    moved = shift_transfer(cx, g) if shift == "transfer" else shift_domain(cx, g, 1.0)
    loss = SegLoss(cfg.dice_weight)
    gc, gr = _flat_grad(model, cx, cy, loss), _flat_grad(model, rx, ry, loss)
    gm = _flat_grad(model, torch.cat([cx, rx]), torch.cat([cy, ry]), loss)
    gs = _flat_grad(model, moved, cy, loss)
    cos = torch.nn.functional.cosine_similarity
    assert rec["cos_cur_rep"] == [pytest.approx(float(cos(gc, gr, dim=0)), abs=1e-6)]
    assert rec["cos_mtr_mte"] == [pytest.approx(float(cos(gm, gs, dim=0)), abs=1e-6)]
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated


@pytest.mark.parametrize("method", ["replay-real", "pga-real"])
def test_probe_does_not_change_training(data, method):
    base = replace_nested(run_preset("tiny"), steps_per_site=6, pga={"shift": "transfer"})
    off = train_continual(data, base, method, None, seed=1)
    on = train_continual(data, replace_nested(base, probe_every=2), method, None, seed=1)
    for a, b in zip(off["_model"].state_dict().values(), on["_model"].state_dict().values()):
        assert torch.equal(a, b)
    assert on["dice_matrix"] == off["dice_matrix"]
    trace = on["probe_trace"]
    # stage 0 has no replay; stages 1, 2 probe at steps 0, 2, 4
    assert [len(v) for v in trace["cos_cur_rep"]] == [0, 3, 3]
    assert all(-1 <= c <= 1 for v in trace["cos_mtr_mte"] for c in v)
    assert "probe_trace" not in off


# ---------------------------------------------------------------- the experiment's runner
def test_alpha_choice_and_row_configs(experiment):
    run = experiment("alignment-testbed", "run")
    scores = [
        {"alpha": 0.01, "metrics": {"memorizability": 0.70}},
        {"alpha": 0.1, "metrics": {"memorizability": 0.72}},
        {"alpha": 0.03, "metrics": {"memorizability": 0.72}},
        {"alpha": 1.0, "diverged": "blew up"},
    ]
    # the two best by validation memorizability, ties to the smaller α, in increasing α
    assert run.choose_alphas(scores, 2) == [0.03, 0.1]
    base = replace_nested(run_preset("tiny"), **run.P.COMMON)
    cfg = run.row_config(base, "pga-a2", 2, 0.3)
    assert (cfg.replay_per_site, cfg.pga.inner_lr, cfg.pga.shift) == (2, 0.3, "transfer")
    assert run.row_config(base, "pga-alpha0", 4).pga.inner_lr == 0.0
    assert cfg.probe_every == run.P.PROBE_EVERY


@pytest.mark.slow
def test_the_test_bed_runs_its_protocol_at_toy_size(experiment, tmp_path):
    run = experiment("alignment-testbed", "run")
    res = run.run_testbed(tmp_path, "tiny", workers=1, threads=1, quiet=True)
    ex = res["extra"]
    assert ex["buffer"] == 2 and len(ex["selection"]) == 3 and len(ex["alphas"]) == 2
    rows = {(r["method"], r["seed"]) for r in res["rows"]}
    want = {"joint", "replay-real", "finetune", "pga-alpha0", "pga-a1", "pga-a2"}
    assert rows == {(m, s) for m in want for s in (0, 1)}
    assert len(res["claims"]) == len(run.P.CLAIMS)
    pga = [r["metrics"] for r in res["rows"] if r["method"] == "pga-a2"]
    assert all(m["align_share"] > 0 and -1 <= m["cos_cur_rep"] <= 1 for m in pga)
    assert (tmp_path / "cosines.png").is_file() and (tmp_path / "report.md").is_file()


# ---------------------------------------------------- site modulation and its controls
def test_style_replay_keeps_quantiles_only_and_maps_onto_them(data):
    from smg_learning.strategies.style_replay import (
        QUANTILES,
        intensity_quantiles,
        match_quantiles,
    )

    cfg, _, strategy, _ = _at_stage_2(data, "style-replay")
    # of a finished site only its intensity quantiles are kept
    assert set(strategy.quantiles) == {"RUNMC", "BMC"}
    assert all(q.shape == (data.channels, QUANTILES) for q in strategy.quantiles.values())
    mem = strategy.memory
    n = min(cfg.smd.replay_per_site, len(data.parts["train"]["I2CVB"]))
    assert mem.sites.tolist() == [0] * n + [1] * n
    cur = data.parts["train"]["I2CVB"]
    # masks are the current site's own; images its slices restyled
    assert all(any(torch.equal(m, c) for c in cur.masks) for m in mem.masks)
    # the whole site mapped lands on the target's quantiles (monotone: order kept)
    own, target = intensity_quantiles(cur.images), strategy.quantiles["RUNMC"]
    moved = match_quantiles(cur.images, own, target)
    np.testing.assert_allclose(intensity_quantiles(moved), target, atol=0.02)
    flat, order = cur.images.flatten(), cur.images.flatten().argsort()
    assert bool((moved.flatten()[order].diff() >= -1e-7).all()) and len(flat) > 0


def test_shared_prompt_trains_and_samples_every_site_under_prompt_0(data, monkeypatch):
    import smg_learning.replay as rp
    from smg_learning.smd import SiteModulatedDiffusion

    class FakeSMD:
        def sample(self, prompts, **kw):
            self.prompts = prompts
            n = len(prompts)
            return torch.rand(n, 1, 16, 16), torch.zeros(n, 1, 16, 16, dtype=torch.long)

    captured = []

    class Recording(rp._TensorSet):
        def __init__(self, images, masks, sites):
            captured.append(sorted(set(sites.tolist())))
            super().__init__(images, masks, sites)

    monkeypatch.setattr(rp, "_TensorSet", Recording)
    for shared, prompts, trained in ((False, [0, 0, 1, 1], [0, 1, 2]), (True, [0] * 4, [0])):
        cfg = replace_nested(
            run_preset("tiny"), smd={"shared_prompt": shared, "replay_per_site": 2}
        )
        fake = FakeSMD()
        mem = rp.smd_memory(fake, 2, cfg, seed=0)
        assert fake.prompts.tolist() == prompts
        assert mem.sites.tolist() == [0, 0, 1, 1]  # the site each sample stands in for
        smd = SiteModulatedDiffusion(rp.smd_model_config(cfg, data.channels, [], 1))
        rp.train_smd_stage(smd, data, 2, mem, cfg, None, seed=0, device="cpu", quiet=True)
        assert captured[-1] == trained  # the prompts the SMD trained its stage with


@pytest.mark.slow
def test_the_site_modulation_control_runs_at_toy_size(experiment, tmp_path):
    run = experiment("site-modulation", "run")
    res = run.run_control(tmp_path, "tiny", workers=1, threads=1, quiet=True)
    rows = {(r["method"], r["seed"]) for r in res["rows"]}
    assert rows == {(m, s) for m in run.P.ROWS for s in (0, 1)}
    assert len(res["claims"]) == len(run.P.CLAIMS)
    replayed = [r["metrics"] for r in res["rows"] if r["method"] != "finetune"]
    assert all(0 <= m["site_acc"] <= 1 and 0 <= m["mask_dice"] <= 1 for m in replayed)
    assert (tmp_path / "report.md").is_file()
