"""The benchmark's claims, rows, presets and headline figure (issue #14)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcommon.cli.args import BENCHMARK_THREADS
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
from smg_learning.claims import CLAIMS, GEN, MEM, claims_for
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


def test_threads_flag_reaches_the_spec() -> None:
    """``--threads`` (default: medcommon's benchmark default, 2) is the count the
    benchmark pins, whatever ``OMP_NUM_THREADS`` says."""
    from smg_learning.cli import build_parser

    parse = build_parser().parse_args
    assert BenchSpec.from_args(parse(["benchmark", "--out", "x"])).threads == BENCHMARK_THREADS
    assert BenchSpec.from_args(parse(["benchmark", "--out", "x", "--threads", "3"])).threads == 3


def test_alpha0_variant_is_smg_without_the_alignment_step() -> None:
    cfg = run_preset("small")
    strategy, v = row_setup("smg-alpha0", cfg)
    assert strategy == "smg" and v.pga.inner_lr == 0.0 and cfg.pga.inner_lr > 0
    # everything else, the SMD included (so the SMD is shared), is unchanged
    assert v.smd == cfg.smd and v.pga.beta_gen == cfg.pga.beta_gen
    assert row_setup("smg", cfg) == ("smg", cfg)
    with pytest.raises(InputError, match="unknown method 'magic'"):
        check_methods(["finetune", "magic"])


#: fabricated per-seed results: metric means by method (others: 0.8 / 0.6), a shared seed
#: effect far larger than the margins (only a paired comparison can decide on it), and
#: per-row noise of sd 0.002 (below): 4 seeds
BASE = {
    "finetune": (0.5, 0.6),
    "smg": (0.4, 0.7),  # forgets more than fine-tuning, generalises better
    "smd-replay": (0.8, 0.6),
    "replay-real": (0.81, 0.6),  # SMD replay within 0.01 of it: approaches it
    "pga-real": (0.82, 0.59),  # +0.01 memorizability on average, but see SPREAD
    "smg-sym": (0.83, 0.6),  # +0.03 over smg-alpha0
    "smg-adam": (0.78, 0.6),  # -0.02
}
SHARED = (0.0, 0.15, -0.15, 0.08)
#: pga-real's memorizability minus replay-real's, per seed: mean +0.01 (the margin),
#: spread far larger: the interval straddles the margin
SPREAD = (0.03, -0.01, 0.04, -0.02)
#: each claim (method, baseline, metric) -> (its test, the decision on the rows above)
EXPECTED = {
    ("smg", "finetune", MEM): ("> +0.05", "fails"),  # -0.1: the whole interval below
    ("smg", "finetune", GEN): ("> +0.05", "holds"),  # +0.1
    ("smg", "joint", MEM): ("within ±0.05", "fails"),  # -0.4
    ("smd-replay", "finetune", MEM): ("> +0.05", "holds"),  # +0.3
    ("smd-replay", "replay-real", MEM): ("within ±0.05", "holds"),  # -0.01
    ("smg", "smd-replay", MEM): ("> +0.01", "fails"),
    ("smg", "smd-replay", GEN): ("> +0.01", "holds"),
    ("pga-real", "replay-real", MEM): ("> +0.01", "undecided"),  # SPREAD
    ("pga-real", "replay-real", GEN): ("> +0.01", "fails"),  # -0.01
    ("smg", "smg-alpha0", MEM): ("> +0.01", "fails"),
    ("smg", "smg-alpha0", GEN): ("> +0.01", "holds"),
    ("smg-sym", "smg-alpha0", MEM): ("> +0.01", "holds"),  # +0.03
    ("smg-adam", "smg-alpha0", MEM): ("> +0.01", "fails"),  # -0.02
}


def _fabricated_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for m in benchmark_methods():
        mem, gen = BASE.get(m, (0.8, 0.6))
        for s, shared in enumerate(SHARED):
            noise = rng.normal(0, 0.002, 2)
            metrics = {MEM: mem + shared + noise[0], GEN: gen + shared + noise[1]}
            rows.append({"method": m, "seed": s, "metrics": metrics})
    for r in rows:  # replace pga-real's noise by the large spread around replay-real
        if r["method"] == "pga-real":
            real = next(x for x in rows if (x["method"], x["seed"]) == ("replay-real", r["seed"]))
            r["metrics"][MEM] = real["metrics"][MEM] + SPREAD[r["seed"]]
    return rows


def test_claims_are_decided_on_paired_seed_differences() -> None:
    """Every claim of ``claims.py``, on fabricated rows of 4 seeds, is decided on its own
    method, baseline, metric and threshold, paired by seed: a claim that fails is kept
    as failing, one whose interval straddles its margin is undecided, and the seed
    effect (0.3 wide, shared by the rows of a seed) does not blur the paired intervals."""
    rows = _fabricated_rows()
    res = make_results("smg-learning", "0", "small", list(range(4)), rows, claims=CLAIMS)
    assert len(res["claims"]) == len(CLAIMS) == len(EXPECTED)
    for c in res["claims"]:
        assert set(c) >= CLAIM_KEYS
        key = (c["method"], c["baseline"], c["metric"])
        assert (c["test"], c["decision"]) == EXPECTED[key], (key, c["interval"])
        assert c["holds"] is (c["decision"] == "holds") and c["pairs"] == 4
        if key != ("pga-real", "replay-real", MEM):
            lo, hi = c["interval"]
            assert hi - lo < 0.02  # paired: the seed effect cancels
    by = {(c["method"], c["baseline"], c["metric"]): c for c in res["claims"]}
    mem = by[("smg", "finetune", MEM)]
    assert mem["value"] == pytest.approx(0.4 + np.mean(SHARED), abs=0.005)
    assert mem["difference"] == pytest.approx(-0.1, abs=0.005)
    # a row missing for one seed leaves its pair out, never pairs across seeds
    fewer = [r for r in rows if (r["method"], r["seed"]) != ("smg", 3)]
    res = make_results("smg-learning", "0", "small", list(range(4)), fewer, claims=CLAIMS)
    assert {c["pairs"] for c in res["claims"] if c["method"] == "smg"} == {3}


def test_benchmark_tiny_claims_and_shared_smd(tmp_path) -> None:
    methods = ("finetune", "smd-replay", "smg", "smg-alpha0")
    spec = BenchSpec(tmp_path / "b", preset="tiny", seeds=(0,), methods=methods, threads=1)
    res = run_benchmark(spec)
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    declared = claims_for(methods)
    assert len(saved["claims"]) == len(declared) == 7
    for c, d in zip(saved["claims"], declared):
        assert set(c) >= CLAIM_KEYS and (c["method"], c["baseline"]) == (d.method, d.baseline)
        assert isinstance(c["holds"], bool) and c["value"] is not None
        # one seed: one paired difference, too few for an interval
        assert (c["pairs"], c["decision"], c["holds"]) == (1, "undecided", False)
    assert saved["provenance"]["threads"] == 1
    assert saved["figures"][0] == "headline.png"
    for name in saved["figures"]:
        assert (tmp_path / "b" / name).is_file()
    # one SMD per seed: the rows that reuse it are charged the seconds of the row that trained it
    rows = {r["method"]: r for r in res["rows"]}
    smd_s = [rows[m]["smd_seconds"] for m in ("smd-replay", "smg", "smg-alpha0")]
    assert smd_s[0] > 0 and smd_s[1] == smd_s[2] == smd_s[0]  # a second SMD would differ
    assert rows["finetune"]["smd_seconds"] == 0
    # a row does not depend on the other rows: smg alone trains the SMD it reused above,
    # and gets the same numbers (its SMD's noise comes from the seed, not the global RNG)
    alone = run_benchmark(
        BenchSpec(tmp_path / "c", preset="tiny", seeds=(0,), methods=("smg",), threads=1)
    )
    (row,) = alone["rows"]

    def untimed(r: dict) -> dict:
        return {k: v for k, v in r["metrics"].items() if k != "train_seconds"}

    assert untimed(row) == untimed(rows["smg"])
    for key in ("dice_matrix", "align_share_per_stage"):
        assert row[key] == rows["smg"][key]
    report = (tmp_path / "b" / "report.md").read_text()
    assert report.index("## Claims") < report.index("![headline.png]")
    # replay's effect and the PGA rows against alpha = 0, paired by seed, as text and figure
    assert "paired.png" in saved["figures"]
    for line in ("| smd-replay - finetune |", "| smg - smd-replay |", "| smg - smg-alpha0 |"):
        assert line in report
