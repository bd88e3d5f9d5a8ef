"""Issue #21's positive control: the generator's shared pattern, the two teacher controls
(label smoothing at the teacher's strength, a within-grade shuffled teacher), linear
CKA, and a tiny run of ``benchmarks/guidance-control/run.py``.

Each control is checked against the stage-2 objective written out independently
(target distributions and features built by hand from the teacher's outputs), so a
control that is not passed through, a wrong temperature, the labels of another case
or a shuffle across grades all change the loss.
"""

from __future__ import annotations

import gzip
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from benchmark_scripts import load
from scipy import ndimage
from test_wiring import Y, _setup

from brats_grading.config import GuidanceConfig
from brats_grading.evaluate import linear_cka
from brats_grading.losses import control_teacher
from brats_grading.synth import GradeCues, make_case
from medcommon import metrics as M
from medcommon.errors import InputError

control = load("guidance-control/run.py", "brats_guidance_control_run")
P = control.P

# --- the generator family -------------------------------------------------------------


def _rims(share: float, n: int = 240, seed: int = 3):
    """Per case: the rim's excess over the core, relative, in T1ce and in FLAIR."""
    rng = np.random.default_rng(seed)
    grades = np.arange(n) % 2
    t1ce, flair = [], []
    for g in grades:
        case = make_case(bool(g), (12, 24, 24), rng, GradeCues(correlation=0.0, flair_share=share))
        core = case["seg"] == 1
        rim = ndimage.binary_dilation(core) & ~core & (case["flair"] > 0)
        t1ce.append(case["t1ce"][rim].mean() / case["t1ce"][core].mean() - 1)
        flair.append(case["flair"][rim].mean() / case["flair"][core].mean() - 1)
    return grades, np.array(t1ce), np.array(flair)


def test_flair_shows_the_t1ce_rim_pattern_at_the_stated_share():
    """On the images: FLAIR's rim excess follows T1ce's within each grade, with the
    slope the share implies (FLAIR rim 0.85 + s·a over its core 0.85; T1ce rim about
    0.7 + a over its core 0.45: slope s·0.45/0.85), and not at all at share 0."""
    for share in (0.25, 0.5):
        y, t1ce, flair = _rims(share)
        for g in (0, 1):
            r = np.corrcoef(t1ce[y == g], flair[y == g])[0, 1]
            assert r > 0.5, (share, g, r)
        slope = np.polyfit(t1ce, flair, 1)[0]
        assert slope == pytest.approx(share * 0.45 / 0.85, rel=0.35), (share, slope)
        assert M.auc(y, flair) > 0.75  # the pattern carries the grade in FLAIR too
    y0, t1ce0, flair0 = _rims(0.0)
    assert abs(np.polyfit(t1ce0, flair0, 1)[0]) < 0.02
    assert abs(M.auc(y0, flair0) - 0.5) < 0.1


def test_the_share_changes_only_flair_rim_voxels():
    a = make_case(True, (12, 24, 24), np.random.default_rng(5), GradeCues(flair_share=0.0))
    b = make_case(True, (12, 24, 24), np.random.default_rng(5), GradeCues(flair_share=0.3))
    for name in ("t1", "t1ce", "t2", "seg"):
        np.testing.assert_array_equal(a[name], b[name])
    changed = a["flair"] != b["flair"]
    assert changed.any() and (b["flair"][changed] > a["flair"][changed]).all()
    assert (a["seg"][changed] == 4).all()  # the enhancing rim, nothing else
    with pytest.raises(InputError, match="flair_share"):
        GradeCues(flair_share=1.5)


# --- the teacher controls -------------------------------------------------------------


def test_class_mean_teacher_is_label_smoothing_at_the_teacher_strength():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 3.0]])
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([1, 0, 1, 0])
    zc, fc = control_teacher(z, f, y, "class-mean", 2.0)
    p = F.softmax(z / 2.0, dim=1)
    for idx in ([0, 2], [1, 3]):
        for i in idx:
            torch.testing.assert_close(F.softmax(zc[i] / 2.0, dim=0), p[idx].mean(0))
            torch.testing.assert_close(fc[i], f[idx].mean(0))
    z0, f0 = control_teacher(z, f, y, "case", 2.0)
    assert z0 is z and f0 is f


def test_shuffled_teacher_is_a_derangement_within_each_grade():
    z = torch.arange(14.0).view(7, 2)
    f = torch.arange(21.0).view(7, 3)
    y = torch.tensor([1, 1, 0, 1, 0, 0, 1])
    for seed in range(5):
        zs, fs = control_teacher(z, f, y, "shuffled", 4.0, torch.Generator().manual_seed(seed))
        src = [int(torch.nonzero((z == zs[i]).all(1)).item()) for i in range(7)]
        assert sorted(src) == list(range(7))  # a permutation of the batch
        for i, j in enumerate(src):
            assert j != i and y[j] == y[i]  # another case, same grade
            torch.testing.assert_close(fs[i], f[j])  # logits and features move together
    one = torch.tensor([1, 0, 0])  # a grade with one case keeps its own outputs
    zs, _ = control_teacher(z[:3], f[:3], one, "shuffled", 4.0, torch.Generator())
    torch.testing.assert_close(zs[0], z[0])


def _reference_stage2(cfg, net, batch, weight, targets) -> torch.Tensor:
    """Stage 2 written out with the teacher's outputs replaced by ``targets(p, f)``:
    ``p`` its tempered distributions ``(B, 2)``, ``f`` its features; returns the
    target distributions and features."""
    g, x, y = cfg.guidance, batch["x"], batch["y"]
    teacher = net.branches["t1ce"]
    teacher.eval()
    with torch.no_grad():
        t_out = teacher(x[:, [1]])
    teacher.train()
    t = g.temperature
    p, f = targets(F.softmax(t_out["logits"] / t, 1), t_out["features"])
    terms = []
    for c, name in ((0, "t1"), (2, "t2"), (3, "flair")):
        s = net.branches[name](x[:, [c]])
        log_q = F.log_softmax(s["logits"] / t, 1)
        kd = (p * (p.log() - log_q)).sum(1).mean() * t * t
        fa = (2 - 2 * F.cosine_similarity(s["features"], f, dim=1)).mean()
        ce = F.cross_entropy(s["logits"], y, weight=weight)
        terms.append(g.ce_weight * ce + g.kd_weight * kd + g.feature_weight * fa)
    return sum(terms) / len(terms)


def test_stage_two_with_the_class_mean_teacher_is_the_objective_written_out():
    cfg, net, stages, batch, weight = _setup("cmg", "guidance.teacher=class-mean")
    with torch.no_grad():  # a confident teacher, so the temperature matters
        net.branches["t1ce"].fc.weight.mul_(200.0)

    def class_mean(p, f):
        out_p, out_f = p.clone(), f.clone()
        for c in (0, 1):
            out_p[c == Y], out_f[c == Y] = p[c == Y].mean(0), f[c == Y].mean(0)
        return out_p, out_f

    ref = _reference_stage2(cfg, net, batch, weight, class_mean)
    net.train()
    got = stages[1].step_fn(net, batch, None)["loss"]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    case = _reference_stage2(cfg, net, batch, weight, lambda p, f: (p, f))
    assert abs(float((got - case).detach())) > 1e-4  # the control is not the paper's teacher


def test_stage_two_with_the_shuffled_teacher_uses_a_same_grade_partner():
    """Y = (1, 0, 1, 1): the LGG case keeps its own teacher; the three HGG cases get one
    of the two 3-cycles. The step's loss is the written-out loss of one of them, and a
    new draw each step."""
    cfg, net, stages, batch, weight = _setup("cmg", "guidance.teacher=shuffled")
    refs = []
    for cycle in ([2, 3, 0], [3, 0, 2]):  # where cases 0, 2, 3 take their teacher from
        src = torch.tensor([cycle[0], 1, cycle[1], cycle[2]])
        refs.append(_reference_stage2(cfg, net, batch, weight, lambda p, f, s=src: (p[s], f[s])))
    case = _reference_stage2(cfg, net, batch, weight, lambda p, f: (p, f))
    seen = set()
    net.train()
    for step in range(6):
        got = stages[1].step_fn(net, batch, SimpleNamespace(step=step, micro_step=0))["loss"]
        got = got.detach()
        match = [i for i, r in enumerate(refs) if abs(float(got - r)) < 1e-5]
        assert len(match) == 1 and abs(float(got - case.detach())) > 1e-4
        seen.add(match[0])
    assert seen == {0, 1}


def test_teacher_control_is_validated():
    with pytest.raises(InputError, match="guidance.teacher"):
        GuidanceConfig(teacher="random")
    with pytest.raises(InputError, match="mid_weight"):
        GuidanceConfig(teacher="shuffled", mid_weight=1.0)


# --- the mechanism's signal -----------------------------------------------------------


def test_linear_cka_against_the_hsic_form():
    """Kornblith et al. (2019): CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with
    linear kernels and the centring matrix H, computed here on n x n Gram matrices."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 3))
    y[:, 0] += 2 * x[:, 0]
    h = np.eye(30) - 1.0 / 30
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    ref = np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_))
    assert linear_cka(x, y) == pytest.approx(ref, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0)  # rotation, scale, shift
    assert linear_cka(x, rng.normal(size=(30, 4))) < 0.3
    with pytest.raises(ValueError):
        linear_cka(x, y[:20])


# --- the protocol and a tiny run ------------------------------------------------------


def test_protocol_claims_name_its_own_settings_and_variants():
    settings = {P.setting_name(s, n) for s, n in itertools.product(P.SHARES, P.SIZES)}
    settings |= {P.interaction_name(s) for s in P.SHARES}
    methods = {*P.VARIANTS, "teacher"}
    for c in P.CLAIMS:
        assert c.setting in settings and {c.method, c.baseline} <= methods, c
        assert not c.post_hoc
    assert len(P.SEEDS) >= 5 and P.SHARES[0] > 0 == P.SHARES[1] and P.SIZES[0] < P.SIZES[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("control") / "out"
    return out, control.run_control(out, preset="tiny", seeds=(0, 1), quiet=True)


def test_tiny_run_writes_every_cell_variant_and_seed(tiny_run):
    out, res = tiny_run
    cells = [r for r in res["rows"] if ":" not in r["setting"]]
    assert len(cells) == 2 * 2 * 2 * (len(P.VARIANTS) + 1)  # shares x sizes x seeds x rows
    for r in cells:
        keys = {"secondary_auc", "cka_stage1"} if r["method"] == "teacher" else {
            "secondary_auc", "fused_auc", "cka", "kd", "fa"}  # fmt: skip
        assert keys <= set(r["metrics"]) and all(np.isfinite(r["metrics"][k]) for k in keys)
    inter = [r for r in res["rows"] if ":" in r["setting"]]
    assert len(inter) == 2 * 2 * len(P.VARIANTS)
    by = {(r["setting"], r["method"], r["seed"]): r["metrics"] for r in cells}
    r = inter[0]
    share = P.SHARES[0] if r["setting"] == P.interaction_name(P.SHARES[0]) else P.SHARES[1]
    small, large = (by[(P.setting_name(share, n), r["method"], r["seed"])] for n in (6, 12))
    assert r["metrics"]["secondary_auc"] == pytest.approx(
        small["secondary_auc"] - large["secondary_auc"]
    )
    assert res["provenance"]["sources"] and res["protocol"]["threads"] == 1
    for name in ("results.json", "report.md", "differences.png", "signal.png",
                 control.PREDICTIONS):  # fmt: skip
        assert (out / name).stat().st_size > 0
    # Every variant has the same teacher (one cached, frozen primary stage): its T1ce
    # prediction, 2 x fused - FLAIR, is the same in all four, while the FLAIR branches differ.
    per_case = json.loads(gzip.decompress((out / control.PREDICTIONS).read_bytes()))
    preds = per_case["tasks"][0]["preds"]
    for cell in preds.values():
        t1ce = {v: 2 * np.array(cell[v][1]) - np.array(cell[v][0]) for v in P.VARIANTS}
        for v in P.VARIANTS:
            np.testing.assert_allclose(t1ce[v], t1ce["guided"], atol=1e-6)
            np.testing.assert_allclose(t1ce[v], cell["teacher"][0], atol=1e-6)
        assert not np.allclose(cell["guided"][0], cell["no-guidance"][0])
    assert "guided" in (out / "report.md").read_text()
    with pytest.raises(InputError, match="not empty"):
        control.run_control(out, preset="tiny", seeds=(0,), quiet=True)
