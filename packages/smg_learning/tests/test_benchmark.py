"""The benchmark's claims, rows, presets and headline figure (issue #14)."""

from __future__ import annotations

import json

import pytest

from medcommon.config import PRESETS
from medcommon.errors import InputError
from medcommon.report import CLAIM_KEYS, make_results
from smg_learning.benchmark import (
    BenchSpec,
    bench_preset,
    benchmark_methods,
    check_methods,
    row_setup,
    run_benchmark,
)
from smg_learning.claims import CLAIMS, claims_for
from smg_learning.config import run_preset


def test_presets_differ_and_demo_is_small_with_fewer_steps() -> None:
    """Every standard preset is its own setting; demo keeps small's models."""
    cfgs = {p: run_preset(p) for p in PRESETS}
    assert len({repr(c) for c in cfgs.values()}) == len(PRESETS)  # all different
    demo, small = cfgs["demo"], cfgs["small"]
    assert demo.steps_per_site < small.steps_per_site
    assert demo.smd.train_steps < small.smd.train_steps
    assert demo.channels == small.channels  # the same models, fewer steps


def test_claims_name_benchmark_rows() -> None:
    rows = set(benchmark_methods())
    for c in CLAIMS:
        assert {c.method, c.baseline} <= rows, c.claim
    demo = bench_preset("demo").methods
    assert [c.method for c in claims_for(demo)][:2] == ["smg", "smg"]
    assert all({c.method, c.baseline} <= set(demo) for c in claims_for(demo))
    assert len(claims_for(benchmark_methods())) == len(CLAIMS)


def test_alpha0_variant_is_smg_without_the_alignment_step() -> None:
    cfg = run_preset("small")
    strategy, v = row_setup("smg-alpha0", cfg)
    assert strategy == "smg" and v.pga.inner_lr == 0.0 and cfg.pga.inner_lr > 0
    # everything else, the SMD included (so the SMD is shared), is unchanged
    assert v.smd == cfg.smd and v.pga.beta_gen == cfg.pga.beta_gen
    assert row_setup("smg", cfg) == ("smg", cfg)
    with pytest.raises(InputError, match="unknown method 'magic'"):
        check_methods(["finetune", "magic"])


def test_failing_claim_is_kept() -> None:
    """Fabricated rows where smg forgets more than fine-tuning: the claim stays, not holding."""
    metrics = {m: {"memorizability": 0.8, "generalizability": 0.6} for m in benchmark_methods()}
    metrics["smg"] = {"memorizability": 0.4, "generalizability": 0.7}
    metrics["finetune"] = {"memorizability": 0.5, "generalizability": 0.6}
    rows = [{"method": m, "seed": s, "metrics": v} for m, v in metrics.items() for s in (0, 1)]
    res = make_results("smg-learning", "0", "small", [0, 1], rows, claims=CLAIMS)
    assert len(res["claims"]) == len(CLAIMS)
    by = {(c["method"], c["baseline"], c["metric"]): c for c in res["claims"]}
    mem = by[("smg", "finetune", "memorizability")]
    assert mem["holds"] is False and mem["value"] == pytest.approx(0.4)
    # 0.7 - 0.6 = 0.1 > 0.05: holds; smd-replay 0.8 - finetune 0.5 = 0.3 > 0.05: holds
    assert by[("smg", "finetune", "generalizability")]["holds"] is True
    assert by[("smd-replay", "finetune", "memorizability")]["holds"] is True
    # |0.4 - 0.8| > 0.05: smg does not approach joint
    assert by[("smg", "joint", "memorizability")]["holds"] is False


def test_benchmark_tiny_claims_and_shared_smd(tmp_path) -> None:
    methods = ("finetune", "smd-replay", "smg", "smg-alpha0")
    res = run_benchmark(BenchSpec(tmp_path / "b", preset="tiny", seeds=(0,), methods=methods))
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    declared = claims_for(methods)
    assert len(saved["claims"]) == len(declared) == 7
    for c, d in zip(saved["claims"], declared):
        assert set(c) >= CLAIM_KEYS and (c["method"], c["baseline"]) == (d.method, d.baseline)
        assert isinstance(c["holds"], bool) and c["value"] is not None
    assert saved["figures"][0] == "headline.png"
    for name in saved["figures"]:
        assert (tmp_path / "b" / name).is_file()
    # one SMD per seed: the rows that reuse it are charged the seconds of the row that trained it
    rows = {r["method"]: r for r in res["rows"]}
    smd_s = [rows[m]["smd_seconds"] for m in ("smd-replay", "smg", "smg-alpha0")]
    assert smd_s[0] > 0 and smd_s[1] == smd_s[2] == smd_s[0]  # a second SMD would differ
    assert rows["finetune"]["smd_seconds"] == 0
    report = (tmp_path / "b" / "report.md").read_text()
    assert report.index("## Claims") < report.index("![headline.png]")
    # replay's effect and the PGA rows against alpha = 0, paired by seed, as text and figure
    assert "paired.png" in saved["figures"]
    for line in ("| smd-replay - finetune |", "| smg - smd-replay |", "| smg - smg-alpha0 |"):
        assert line in report
