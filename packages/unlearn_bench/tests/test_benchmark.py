"""The benchmark: presets (every table has every preset), its claims, a tiny end-to-end run."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

from medcommon.cli import run_main
from medcommon.errors import InputError
from medcommon.report import CLAIM_KEYS, make_results
from unlearn_bench import config
from unlearn_bench.benchmark import DEMO_METHODS, DEMO_SCENARIOS, run_benchmark
from unlearn_bench.claims import claims_for, declared_claims
from unlearn_bench.cli import main
from unlearn_bench.methods import METHODS, PAPER_ORDER
from unlearn_bench.methods.base import PRESET_OVERRIDES, Method, UnlearnConfig


# ------------------------------------------------------------------------ presets
@pytest.mark.parametrize(
    "table",
    [config.FINETUNE_PRESETS, config.SYNTH_PRESETS, config.EVAL_PRESETS, PRESET_OVERRIDES],
    ids=["finetune", "synth", "eval", "unlearn"],
)
def test_every_preset_table_has_every_preset(table):
    assert set(table) == set(config.PRESETS) and "demo" in config.PRESETS


def test_demo_is_its_own_preset_not_the_full_default():
    # before: `finetune --preset demo` fell through to the paper-scale config
    ft = config.resolve_finetune("demo")
    assert ft == config.FINETUNE_PRESETS["demo"] and ft != config.FinetuneConfig()
    assert config.resolve_synth("demo").n_entities < config.SynthConfig().n_entities
    assert config.resolve_eval("demo").max_items > 0
    # before: `unlearn --preset demo` raised KeyError('demo')
    for name in PAPER_ORDER:
        cfg = METHODS.get(name).preset_config("demo")
        assert cfg.lr == METHODS.get(name).preset_config("small").lr


@pytest.mark.parametrize(
    "fn",
    [config.finetune_preset, config.synth_preset, config.eval_preset,
     METHODS.get("npo").preset_config],
)  # fmt: skip
def test_unknown_preset_is_an_input_error(fn):
    with pytest.raises(InputError, match="unknown preset 'medium'"):
        fn("medium")


def test_a_table_missing_a_preset_is_caught():
    table = {p: 1 for p in config.PRESETS if p != "demo"}
    with pytest.raises(AssertionError, match="not the presets"):
        config.check_tables({"made-up": table})
    with pytest.raises(KeyError, match="no 'demo' entry"):
        config.preset_entry(table, "demo", "made-up")


def test_a_misspelt_method_preset_key_is_caught():
    class Typo(Method):
        config_class = UnlearnConfig
        preset_overrides: ClassVar[dict] = {"smal": {"lr": 1.0}}

    with pytest.raises(KeyError, match="smal"):
        Typo.preset_config("small")


def test_cli_rejects_an_unknown_preset(capsys):
    code = run_main(main, ["benchmark", "--out", "unused", "--preset", "medium"])
    assert code == 2 and "unknown preset 'medium'" in capsys.readouterr().err


# ------------------------------------------------------------------------ claims
def test_demo_checks_its_central_claims():
    demo = claims_for(DEMO_METHODS, DEMO_SCENARIOS)
    assert demo and all(c.setting == "privacy" for c in demo)
    assert {(c.method, c.baseline) for c in demo} >= {("npo", "vanilla"), ("npo", "ga")}
    assert all("grad_diff" not in (c.method, c.baseline) for c in demo)  # not run by the demo
    assert claims_for(PAPER_ORDER, ("privacy", "incorrectness")) == declared_claims()


def _row(method, forget, retain, seed=0):
    metrics = {"forget_mcq_acc": forget, "retain_mcq_acc": retain}
    return {"setting": "privacy", "seed": seed, "method": method, "metrics": metrics}


def test_a_failing_claim_is_kept_and_reported_false():
    # fabricated rows: NPO forgets nothing (0.80 -> 0.78, under the 0.10 margin) and keeps
    # retain (0.70 vs 0.72): the "forgets" claim fails, the "keeps utility" claim holds
    rows = [_row("vanilla", 0.80, 0.72), _row("retrain", 0.30, 0.74),
            _row("npo", 0.78, 0.70), _row("ga", 0.30, 0.50)]  # fmt: skip
    claims = claims_for(["npo", "ga"], ["privacy"])
    res = make_results("unlearn-bench", "0", "demo", [0], rows, claims=claims)
    assert len(res["claims"]) == len(claims)
    by = {(c["method"], c["baseline"], c["metric"]): c for c in res["claims"]}
    forgets = by[("npo", "vanilla", "forget_mcq_acc")]
    assert forgets["holds"] is False and forgets["value"] == pytest.approx(0.78)
    assert by[("npo", "vanilla", "retain_mcq_acc")]["holds"] is True
    assert by[("npo", "ga", "retain_mcq_acc")]["holds"] is True  # 0.70 > 0.50
    assert by[("retrain", "vanilla", "forget_mcq_acc")]["holds"] is True  # 0.30 < 0.80 - 0.10


# ------------------------------------------------------------------------ end to end
def test_benchmark_tiny(tmp_path):
    out = tmp_path / "bench"
    args = ["benchmark", "--out", str(out), "--preset", "tiny", "--seeds", "0",
            "--scenarios", "privacy", "--methods", "ga", "npo", "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["rows"]} == {"vanilla", "retrain", "ga", "npo"}
    assert res["extra"]["unlearn_over_retrain_time_mean"] > 0
    expected = claims_for(["ga", "npo"], ["privacy"])
    assert [c["claim"] for c in res["claims"]] == [c.claim for c in expected]
    for c in res["claims"]:
        assert set(c) >= CLAIM_KEYS and isinstance(c["holds"], bool)
    assert res["figures"][0] == "headline.png"
    for f in ("report.md", "ues.png", "scores_privacy.png", *res["figures"]):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert report.index("## Claims") < report.index("## Results")


def test_workers_give_the_same_rows(tmp_path):
    kw = dict(preset="tiny", seeds=[0, 1], scenarios=["privacy"], methods=["ga"],
              device="cpu", quiet=True)  # fmt: skip
    one = run_benchmark(tmp_path / "one", workers=1, **kw)
    two = run_benchmark(tmp_path / "two", workers=2, **kw)
    assert one["extra"]["workers"] == 1 and two["extra"]["workers"] == 2

    def strip(rows):  # wall-clock figures differ from run to run; everything else must not
        drop = {"time_ratio", "questions_per_second"}
        return [
            (r["setting"], r["seed"], r["method"],
             {k: v for k, v in r["metrics"].items() if k not in drop})
            for r in rows
        ]  # fmt: skip

    assert strip(one["rows"]) == strip(two["rows"])
