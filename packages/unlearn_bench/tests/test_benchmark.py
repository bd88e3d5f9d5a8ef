"""The benchmark: presets (every preset file loads for every section), its claims, a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest

from medcommon.cli import run_main
from medcommon.errors import InputError
from medcommon.presets import Presets
from medcommon.report import CLAIM_KEYS, make_results
from unlearn_bench import config
from unlearn_bench.benchmark import run_benchmark
from unlearn_bench.claims import claims_for, declared_claims
from unlearn_bench.cli import main
from unlearn_bench.methods import METHODS, PAPER_ORDER
from unlearn_bench.methods.base import Method, UnlearnConfig

SECTIONS = {
    "synth": config.synth_preset,
    "finetune": config.finetune_preset,
    "eval": config.eval_preset,
    "benchmark": config.benchmark_preset,
    **{f"methods.{m}": METHODS.get(m).preset_config for m in METHODS.names()},
}


# ------------------------------------------------------------------------ presets
def test_the_standard_presets_are_files():
    assert config.PRESETS.names() == sorted(["tiny", "demo", "small", "full"])
    assert (config.PRESETS.folder / "_cpu.yaml").is_file()  # a base, not a preset


@pytest.mark.parametrize("preset", config.PRESETS.names())
@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_preset_file_loads_for_every_section(preset, section):
    cfg = SECTIONS[section](preset)
    full = SECTIONS[section]("full")
    assert type(cfg) is type(full)
    if preset != "full" and section != "benchmark":
        assert cfg != full  # every CPU preset scales every config down from the paper's


def test_full_is_the_papers_defaults():
    assert config.finetune_preset("full") == config.FinetuneConfig()
    assert config.synth_preset("full") == config.SynthConfig()
    assert config.eval_preset("full") == config.EvalConfig()
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert cls.preset_config("full") == cls.config_class()


def test_preset_values_reach_the_configs():
    small, demo = config.finetune_preset("small"), config.finetune_preset("demo")
    assert (small.model.hidden_size, small.model.intermediate_size) == (128, 256)
    assert demo.model == config.TinyModelConfig() and demo.lr == small.lr == 3e-3
    assert config.synth_preset("tiny") == config.SynthConfig(
        n_entities=10, n_general=2, image_size=32
    )
    # RMU's own changes land on top of the section every method shares
    rmu, npo = (METHODS.get(m).preset_config("tiny") for m in ("rmu", "npo"))
    assert (rmu.lr, rmu.steering_coeff, rmu.alpha, rmu.batch_size) == (1e-3, 20.0, 1.0, 8)
    assert (npo.lr, npo.batch_size, npo.log_every) == (1e-3, 8, 2)
    plan = config.benchmark_preset("demo")
    assert (plan.scenarios, plan.methods) == (("privacy",), ("npo", "ga"))
    assert config.benchmark_preset("small") == config.BenchmarkConfig()


def test_demo_is_its_own_preset_not_the_full_default():
    # before: `finetune --preset demo` fell through to the paper-scale config
    assert config.finetune_preset("demo") != config.FinetuneConfig()
    assert config.synth_preset("demo").n_entities < config.SynthConfig().n_entities
    assert config.eval_preset("demo").max_items > 0
    # before: `unlearn --preset demo` raised KeyError('demo')
    for name in PAPER_ORDER:
        cfg = METHODS.get(name).preset_config("demo")
        assert cfg.lr == METHODS.get(name).preset_config("small").lr


@pytest.mark.parametrize(
    "fn",
    [config.finetune_preset, config.synth_preset, config.eval_preset, config.benchmark_preset,
     METHODS.get("npo").preset_config],
)  # fmt: skip
@pytest.mark.parametrize("name", ["medium", "_cpu"])
def test_unknown_preset_is_an_input_error(fn, name):
    with pytest.raises(InputError, match=f"unknown preset '{name}'"):
        fn(name)


def _presets(tmp_path, monkeypatch, text: str) -> None:
    (tmp_path / "odd.yaml").write_text(text)
    monkeypatch.setattr(config, "PRESETS", Presets("unlearn_bench", folder=tmp_path))


def test_a_misspelt_method_in_a_preset_is_caught(tmp_path, monkeypatch):
    _presets(tmp_path, monkeypatch, "methods:\n  rmuu: {lr: 1.0}\n")
    with pytest.raises(InputError, match="methods.rmuu: unknown method"):
        METHODS.get("npo").preset_config("odd")


def test_a_misspelt_field_in_a_preset_is_caught(tmp_path, monkeypatch):
    _presets(tmp_path, monkeypatch, "finetune:\n  epoch: 3\n")
    with pytest.raises(InputError, match="odd.yaml: finetune.epoch"):
        config.finetune_preset("odd")


def test_an_unregistered_method_gets_the_common_section():
    class Local(Method):
        config_class = UnlearnConfig

    assert Local.preset_config("tiny") == METHODS.get("ga").preset_config("tiny")


def test_cli_rejects_an_unknown_preset(capsys):
    code = run_main(main, ["benchmark", "--out", "unused", "--preset", "medium"])
    assert code == 2 and "unknown preset 'medium'" in capsys.readouterr().err


# ------------------------------------------------------------------------ claims
def test_demo_checks_its_central_claims():
    plan = config.benchmark_preset("demo")
    demo = claims_for(plan.methods, plan.scenarios)
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
    sources = res["provenance"]["sources"]
    assert set(sources) == {
        "packages/unlearn_bench/src/unlearn_bench/claims.py",
        "packages/unlearn_bench/configs/tiny.yaml",
        "packages/unlearn_bench/configs/_cpu.yaml",
    }
    run = json.loads((out / "runs" / "privacy" / "s0" / "npo" / "config.json").read_text())
    assert run["run"]["preset"] == "tiny" and run["run"]["method"] == "npo"
    code = run_main(main, args)  # the same --out again: refused before any run starts
    assert code == 2 and not (out / "runs" / "incorrectness").exists()


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
