"""The benchmark's machinery: the stage cache gives the same models, claims are kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_grading.benchmark import benchmark_folds, benchmark_methods
from brats_grading.claims import CLAIMS, MARGIN, claims_for
from brats_grading.config import (
    PRESETS,
    BenchmarkConfig,
    benchmark_preset,
    run_preset,
    synth_preset,
)
from brats_grading.data import discover, load_cases
from brats_grading.evaluate import predict_proba, predict_with_branches
from brats_grading.methods import METHODS
from brats_grading.train import StageCache, fit_method, method_config
from medcommon.report import make_results


@pytest.fixture(scope="module")
def tiny_arrays(data19):
    _, cases = discover(data19)
    cfg = run_preset("tiny")
    arrays = load_cases(cases, cfg.shape, quiet=True)
    return arrays, [c.label for c in cases], [c.patient for c in cases]


def _fit(name, arrays, labels, patients, cache=None, seed=3):
    method, cfg = method_config(name, "tiny")
    train = np.arange(len(labels) - 2)  # both grades in the 8 training cases
    return fit_method(
        method, cfg, arrays, labels, train, patients=patients, seed=seed, quiet=True, cache=cache
    )


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cached_first_stage_gives_the_same_model_as_training_it(tiny_arrays):
    arrays, labels, patients = tiny_arrays
    plain = _fit("cmg-no-guidance", arrays, labels, patients)
    cache = StageCache()
    single = _fit("single-t1ce", arrays, labels, patients, cache)
    cmg = _fit("cmg", arrays, labels, patients, cache)
    cached = _fit("cmg-no-guidance", arrays, labels, patients, cache)
    # single-t1ce's stage serves cmg's full-fold stage 1; cmg's inner and full stage 1
    # serve cmg-no-guidance's: three reuses, each a trained stage skipped.
    assert cache.hits == 3
    assert [s.get("cached", False) for s in cached.stages] == [True, False, True, False]
    # Reuse is invisible in the result: weights, fusion and throughput accounting.
    assert _same_weights(cached.model, plain.model)
    assert cached.fusion == plain.fusion
    assert cached.volumes == plain.volumes
    # The t1ce branch of cmg is, weight for weight, the single-t1ce model.
    assert _same_weights(cmg.model.branches["t1ce"], single.model.branches["t1ce"])


def test_cache_misses_when_the_stage_differs(tiny_arrays):
    arrays, labels, patients = tiny_arrays
    cache = StageCache()
    _fit("single-t1ce", arrays, labels, patients, cache, seed=3)
    _fit("single-t1ce", arrays, labels, patients, cache, seed=4)  # another seed
    _fit("single-flair", arrays, labels, patients, cache, seed=3)  # another branch
    _fit("cmg-no-attention", arrays, labels, patients, cache, seed=3)  # another model
    assert cache.hits == 0
    assert len(cache) == 5  # 3 singles + cmg-no-attention's inner and full stage 1


def test_one_pass_prediction_matches_the_fused_probabilities(tiny_arrays):
    arrays, labels, patients = tiny_arrays
    info = _fit("late-fusion", arrays, labels, patients)
    fused, branches = predict_with_branches(info.model, arrays, batch_size=3)
    np.testing.assert_allclose(fused, predict_proba(info.model, arrays), rtol=1e-5, atol=1e-6)
    # late fusion is the plain mean of the branch probabilities
    np.testing.assert_allclose(fused, np.mean(list(branches.values()), axis=0), atol=1e-5)
    assert set(branches) == {"t1", "t1ce", "t2", "flair"}


def test_claims_name_real_methods_and_cover_the_central_claim_and_each_ablation():
    names = set(METHODS.names())
    assert all(c.method in names and c.baseline in names for c in CLAIMS)
    assert {(c.method, c.baseline) for c in CLAIMS} == {
        ("cmg", "single-t1ce"),
        ("cmg", "early-fusion"),
        ("cmg", "late-fusion"),
        ("cmg", "cmg-no-guidance"),
        ("cmg", "cmg-no-attention"),
    }
    assert all(c.metric == "auc" and c.test == "greater" and c.margin == MARGIN for c in CLAIMS)


def test_claims_are_decided_on_paired_differences_and_a_failing_one_is_kept():
    """Fabricated rows, 3 seeds x 2 folds: every (seed, fold) moves all methods together
    by up to ±0.1 (the fold-to-fold spread), and CMG − baseline is a fixed gain plus a
    small paired noise. The claims must be decided on those paired differences of the
    AUC, against ``MARGIN``: ahead of T1ce by 0.05 holds (an unpaired comparison of the
    means could not tell it from the run spread), behind early fusion fails, level with
    late fusion fails, a gain near the margin with a wide spread is undecided."""
    from scipy import stats

    runs = [(s, f) for s in range(3) for f in range(2)]
    shift = dict(zip(runs, (-0.10, 0.05, 0.10, -0.05, 0.00, 0.08), strict=True))
    noise = dict(zip(runs, (-0.004, 0.003, 0.001, -0.002, 0.004, -0.002), strict=True))
    gain = {"single-t1ce": (0.05, 1), "early-fusion": (-0.03, 1), "late-fusion": (0.0, 1),
            "cmg-no-guidance": (MARGIN + 0.002, 5), "cmg-no-attention": (0.2, 1)}  # fmt: skip
    rows = [
        # accuracy says the opposite of AUC: a claim read from the wrong metric fails here
        {"method": "cmg", "seed": s, "fold": f,
         "metrics": {"auc": 0.8 + shift[s, f], "accuracy": 0.5}}
        for s, f in runs
    ] + [
        {"method": m, "seed": s, "fold": f,
         "metrics": {"auc": 0.8 + shift[s, f] - g - k * noise[s, f], "accuracy": 0.9}}
        for m, (g, k) in gain.items()
        for s, f in runs
    ]  # fmt: skip
    res = make_results("brats-grading", "0", "tiny", [0, 1, 2], rows, claims=CLAIMS)
    claims = {c["baseline"]: c for c in res["claims"]}
    assert [c["claim"] for c in res["claims"]] == [c.claim for c in CLAIMS]  # all kept
    assert {b: c["decision"] for b, c in claims.items()} == {
        "single-t1ce": "holds",
        "early-fusion": "fails",
        "late-fusion": "fails",
        "cmg-no-guidance": "undecided",
        "cmg-no-attention": "holds",
    }
    for b, c in claims.items():
        g, k = gain[b]
        d = np.array([g + k * noise[r] for r in runs])  # the paired differences, by design
        half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
        assert (c["method"], c["metric"], c["pairs"]) == ("cmg", "auc", len(runs))
        assert c["difference"] == pytest.approx(d.mean())
        assert c["interval"] == pytest.approx([d.mean() - half, d.mean() + half])
        assert c["holds"] == (c["decision"] == "holds")
    # the undecided claim straddles the margin: its mean alone would have cleared it
    lo, hi = claims["cmg-no-guidance"]["interval"]
    assert lo < MARGIN < claims["cmg-no-guidance"]["difference"] < hi


def test_demo_runs_the_central_claim_on_small_sizes_and_one_fold():
    assert run_preset("demo") == run_preset("small")
    assert synth_preset("demo") == synth_preset("small")
    assert benchmark_preset("small") == BenchmarkConfig()  # every method, every fold
    methods = benchmark_methods("demo")
    assert methods == list(benchmark_preset("demo").methods)
    assert methods == ["single-t1ce", "early-fusion", "cmg"]
    assert benchmark_folds("demo", 3) == [0]
    assert benchmark_folds("demo", 3, folds=3) == [0, 1, 2]  # --folds: every fold
    assert benchmark_methods("small") == METHODS.names()
    assert benchmark_methods("demo", ["cmg", "late-fusion"]) == ["cmg", "late-fusion"]
    # Only the claims the demo has data for: the central one against T1ce and early fusion.
    assert [(c.method, c.baseline) for c in claims_for(methods)] == [
        ("cmg", "single-t1ce"),
        ("cmg", "early-fusion"),
    ]


def test_results_name_the_claims_and_preset_files_they_depend_on():
    assert PRESETS.sources("demo") == [
        "packages/brats_grading/configs/demo.yaml",
        "packages/brats_grading/configs/small.yaml",  # demo extends small
    ]
    assert PRESETS.sources("tiny") == ["packages/brats_grading/configs/tiny.yaml"]
