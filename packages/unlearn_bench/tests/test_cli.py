"""The console script: the shared contract (medai_testkit), then what is unlearn-bench's own.

The contract's "train" is ``finetune`` (method name ``finetune``) and ``unlearn --method M``
from a vanilla run that ``make_data`` trains beside the dataset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medai_testkit import CLIContract
from medcommon.cli import run_main
from medcommon.run import load_run
from unlearn_bench import PACKAGE, __version__
from unlearn_bench.cli import SCALE_FLAGS, app, build_parser, main
from unlearn_bench.config import FinetuneConfig, SynthConfig
from unlearn_bench.methods import METHODS

FAST = ["--quiet", "--device", "cpu", "--set", "epochs=0.06", "--set", "batch_size=8"]
EVAL = ["--quiet", "--device", "cpu", "--set", "max_new_tokens=4", "--set", "max_items=12"]


def run(argv, capsys):
    code = run_main(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _config_class(method: str) -> type:
    return FinetuneConfig if method == "finetune" else METHODS.get(method).config_class


class TestContract(CLIContract):
    main = staticmethod(main)
    prog, version, package = "unlearn-bench", __version__, PACKAGE
    methods = ("finetune", *METHODS.names())

    def make_data(self, root):
        """The tiny privacy dataset, and a 2-step vanilla run beside it for ``unlearn``."""
        from unlearn_bench.synth import generate
        from unlearn_bench.train import finetune, run_spec

        data = root / "data"
        generate(data, "privacy", SynthConfig(10, 2, 0.2, image_size=32), seed=0)
        spec = run_spec("finetune", root / "vanilla", data, preset="tiny",
                        overrides=("epochs=0.1",), device="cpu", quiet=True)  # fmt: skip
        finetune(spec)
        return data

    def train_argv(self, data, out, method, steps):
        # exact step counts: 240 questions at batch 30, 48 forget questions at batch 24;
        # a constant learning rate so that a resumed run equals an uninterrupted one
        if method == "finetune":
            return ["finetune", "--data", data, "--out", out, "--quiet", "--device", "cpu",
                    "--set", "batch_size=30", "--set", f"epochs={steps / 8}",
                    "--set", "lr_schedule=constant"]  # fmt: skip
        return ["unlearn", "--model", Path(data).parent / "vanilla", "--data", data,
                "--out", out, "--method", method, "--quiet", "--device", "cpu",
                "--set", "batch_size=24", "--set", f"epochs={steps / 2}"]  # fmt: skip

    def test_run_folder_round_trips(self, method, contract_data, tmp_path, capsys):
        self.config_class = _config_class(method)  # each method has its own config class
        super().test_run_folder_round_trips(method, contract_data, tmp_path, capsys)
        run = load_run(tmp_path / "run", package=PACKAGE)
        assert run.metrics()["steps"] == self.short_steps
        if method == "finetune":
            assert (run.info.command, run.info.extra) == ("finetune", {"init": "tiny"})
        else:
            vanilla = str((contract_data.parent / "vanilla" / "model").resolve())
            assert (run.info.command, run.info.extra) == ("unlearn", {"vanilla_model": vanilla})

    def bad_input_cases(self, data, tmp):
        vanilla = data.parent / "vanilla"
        broken = {name: shutil.copytree(data, tmp / f"data-{name}") for name in ("json", "image")}
        retain = (broken["json"] / "retain.jsonl").read_text().splitlines()
        retain[4] = retain[4][:-5]  # line 5 cut short
        (broken["json"] / "retain.jsonl").write_text("\n".join(retain) + "\n")
        first = json.loads((data / "forget.jsonl").read_text().splitlines()[0])
        (broken["image"] / first["image"]).unlink()  # the first forget question's image
        bert = tmp / "bert"
        bert.mkdir()
        (bert / "config.json").write_text('{"model_type": "bert"}')
        (tmp / "q.jsonl").write_text('{"question": "a?"}\n{"question": "b?", "image": "no.png"}\n')

        def finetune(d, name, *extra):
            return ["finetune", "--data", d, "--out", tmp / f"run-{name}", *FAST, *extra]

        def unlearn(model, name, *extra):
            return ["unlearn", "--model", model, "--data", data, "--out", tmp / f"run-{name}",
                    "--quiet", *extra]  # fmt: skip

        def predict(name, *args):
            return ["predict", "--model", vanilla, "--out", tmp / f"{name}.jsonl", *args]

        cases = {
            "malformed JSONL": (finetune(broken["json"], "j"), "retain.jsonl:5: malformed JSON"),
            "missing image": (finetune(broken["image"], "i"), "forget.jsonl:1: image not found"),
            "not a Llava": (
                unlearn(bert, "bert"),
                f"error: {bert}: not a Llava checkpoint (model_type 'bert', expected 'llava')",
            ),
            "no model folder": (
                finetune(data, "nomodel", "--model", tmp / "nope"),
                "nope: model folder not found",
            ),
            "unknown method, exact line": (
                unlearn(vanilla, "sgd", "--method", "sgd"),
                "error: --method: unknown method 'sgd'; choose from "
                + ", ".join(sorted(METHODS.names())),
            ),
            "benchmark method": (
                ["benchmark", "--out", tmp / "bench", "--methods", "ga", "bogus"],
                "unknown method 'bogus'",
            ),
            "unknown split": (
                ["evaluate", "--run", vanilla, "--data", data, "--split", "val"],
                "unknown split 'val'",
            ),
            "predict image": (
                predict("p1", "--image", tmp / "no.png", "a?"),
                "no.png: image not found",
            ),
            "predict file image": (
                predict("p2", "--questions", tmp / "q.jsonl"),
                "q.jsonl:2: image not found",
            ),
            "predict nothing": (predict("p3"), "no question given"),
            "unknown scenario": (
                ["generate", tmp / "gen-s", "--scenario", "cats"],
                "unknown scenario 'cats'",
            ),
            "generate --set": (["generate", tmp / "gen-set", "--set", "bogus=1"], "--set bogus"),
        }
        for ratio in ("0", "1", "1.2", "-0.5"):
            cases[f"forget ratio {ratio}"] = (
                ["generate", tmp / f"gen-{ratio}", "--forget-ratio", ratio, "--quiet"],
                f"error: --forget-ratio: must be in (0, 1), got {float(ratio)}",
            )
        return cases

    def test_package_bad_inputs(self, contract_data, tmp_path, capsys):
        super().test_package_bad_inputs(contract_data, tmp_path, capsys)
        assert not list(tmp_path.glob("gen-*")), "generate wrote a dataset for bad input"


# ------------------------------------------------------------------------ generate
@pytest.mark.parametrize("scenario", ["privacy", "incorrectness"])
def test_generate(tmp_path, scenario):
    out = tmp_path / "d"
    argv = ["generate", out, "--scenario", scenario, "--forget-ratio", "0.3", "--quiet"]
    assert main(argv) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["scenario"] == scenario and meta["entities"]["forget"] == 3
    for f in ("forget", "retain", "test", "general"):
        assert (out / f"{f}.jsonl").is_file()
    assert (out / "README.md").is_file() and (out / "entities.jsonl").is_file()
    assert any((out / "images").glob("*.png"))


# ---------------------------------------------------------------- finetune / retrain
def test_finetune_run_folder(tiny_run):
    for f in ("log.jsonl", "model/tokenizer.json", "checkpoint/trainer_state.json"):
        assert (tiny_run / f).is_file(), f
    run = load_run(tiny_run, package=PACKAGE)
    assert run.metrics()["steps"] == 2  # 0.06 epoch of 240 questions at batch 8
    assert (run.info.command, run.info.method, run.info.preset, run.info.extra) == (
        "finetune",
        "finetune",
        "tiny",
        {"init": "tiny"},
    )
    assert run.config_as(FinetuneConfig).batch_size == 8  # the --set over the tiny preset


def test_retrain_uses_retain_only_and_same_init(tmp_path, tiny_data, tiny_run):
    out = tmp_path / "gold"
    assert main(["retrain", "--data", str(tiny_data), "--out", str(out), *FAST]) == 0
    m = load_run(out).metrics()
    assert m["command"] == "retrain" and m["n_train"] == 192  # 8 retain patients x 24 questions
    assert load_run(out).info.command == "retrain"
    # same init for real: with lr = 0 (AdamW then leaves the weights untouched) finetune and
    # retrain with the same seed save the same initial weights and the same tokenizer
    from safetensors.torch import load_file

    frozen = [*FAST, "--seed", "0", "--set", "lr=0"]
    ft0, rt0 = tmp_path / "ft0", tmp_path / "rt0"
    assert main(["finetune", "--data", str(tiny_data), "--out", str(ft0), *frozen]) == 0
    assert main(["retrain", "--data", str(tiny_data), "--out", str(rt0), *frozen]) == 0
    assert json.loads((rt0 / "metrics.json").read_text())["steps"] == 2  # it did train steps
    wf = load_file(ft0 / "model" / "model.safetensors")
    wr = load_file(rt0 / "model" / "model.safetensors")
    assert wf.keys() == wr.keys() and all(torch.equal(wf[k], wr[k]) for k in wf)
    tok = (ft0 / "model" / "tokenizer.json").read_bytes()
    assert tok == (rt0 / "model" / "tokenizer.json").read_bytes()
    # and lr = 0 really froze them: the trained vanilla (same seed 0, lr > 0) differs
    wt = load_file(tiny_run / "model" / "model.safetensors")
    assert any(not torch.equal(wt[k], wf[k]) for k in wf)


def test_resume_refuses_another_command(tiny_data, tiny_run, capsys):
    argv = ["unlearn", "--model", tiny_run, "--data", tiny_data, "--out", tiny_run,
            "--method", "ga", "--resume", "--quiet", "--device", "cpu"]  # fmt: skip
    before = (tiny_run / "config.json").read_bytes()
    code, _, err = run(argv, capsys)
    assert code == 2 and "a finetune run; resume it with `finetune`" in err
    assert (tiny_run / "config.json").read_bytes() == before


@pytest.mark.parametrize("command", ["finetune", "retrain", "unlearn"])
def test_resume_of_a_missing_folder_is_an_error(command, tiny_data, tiny_run, tmp_path, capsys):
    out = tmp_path / "never"
    model = ["--model", tiny_run] if command == "unlearn" else []
    argv = [command, *model, "--data", tiny_data, "--out", out, "--resume", *FAST]
    code, _, err = run(argv, capsys)
    assert code == 2 and f"error: {out}: run folder not found" in err
    assert not out.exists()


def test_a_new_run_refuses_an_existing_out(tiny_data, tiny_run, capsys):
    before = (tiny_run / "config.json").read_bytes()
    code, _, err = run(["finetune", "--data", tiny_data, "--out", tiny_run, *FAST], capsys)
    assert code == 2 and "already exists and is not empty" in err
    assert (tiny_run / "config.json").read_bytes() == before


def test_resume_changes_only_step_counts_and_cadences(tiny_data, tiny_run, capsys):
    argv = ["finetune", "--data", tiny_data, "--out", tiny_run, "--resume", *FAST]
    code, _, err = run([*argv, "--set", "lr=0.5"], capsys)
    assert code == 2 and "--set lr: cannot change a resumed run's setting" in err
    code, _, err = run([*argv, "--preset", "small"], capsys)
    assert code == 2 and "the run was started with 'tiny', not 'small'" in err


# ----------------------------------------------------------- the scale flags (shorthands)
def test_scale_flags_are_shorthands_for_the_scale_group():
    argv = ["unlearn", "--model", "m", "--data", "d", "--out", "o", "--dtype", "bfloat16",
            "--lora", "--adapter-only", "--grad-accum", "2", "--grad-checkpointing",
            "--set", "scale.grad_accum_steps=4"]  # fmt: skip
    spec = app.spec(build_parser().parse_args(argv), shorthands=SCALE_FLAGS)
    assert spec.overrides == (
        "scale.dtype=bfloat16",
        "scale.lora=true",
        "scale.save_adapter_only=true",
        "scale.grad_accum_steps=2",
        "scale.gradient_checkpointing=true",
        "scale.grad_accum_steps=4",  # --set comes last, so it wins
    )
    assert spec.options["model"] == Path("m") and not set(SCALE_FLAGS) & set(spec.options)
    assert (spec.method, spec.seed, spec.preset) == ("npo", 0, None)  # preset: chosen later
    plain = app.spec(build_parser().parse_args(argv[:7]), shorthands=SCALE_FLAGS)
    assert plain.overrides == ()  # flags not given set nothing


def test_scale_flags_reach_the_run_config(tiny_data, tiny_run, tmp_path):
    out = tmp_path / "accum"
    argv = ["unlearn", "--model", tiny_run, "--data", tiny_data, "--out", out, "--method",
            "ga", "--grad-accum", "2", "--dtype", "float32", *FAST]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    run = load_run(out, package=PACKAGE)
    assert run.config["scale"]["grad_accum_steps"] == 2
    assert run.config["scale"]["dtype"] == "float32" and run.info.preset == "tiny"


# ------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def ga_run(tmp_path_factory, tiny_data, tiny_run):
    out = tmp_path_factory.mktemp("ga") / "ga"
    argv = ["unlearn", "--model", tiny_run, "--data", tiny_data, "--out", out, "--method", "ga",
            "--quiet", "--device", "cpu", "--set", "batch_size=48"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return out


def test_evaluate_writes_all_metrics(tiny_data, tiny_run, ga_run):
    args = ["evaluate", "--run", ga_run, "--data", tiny_data, *EVAL]
    assert main([*map(str, args), "--reference", str(tiny_run)]) == 0
    res = json.loads((ga_run / "eval-all.json").read_text())
    for s in ("forget", "retain", "test", "general"):
        for k in ("mcq_acc", "rougeL", "cloze_acc"):
            for suffix in ("", "_image_text", "_text_only"):
                assert k + suffix in res["subsets"][s]
    # no --vanilla was given, so the vanilla model can only come from the run's config
    assert 0.0 <= res["ues"] <= 1.0 and "ues_vanilla" in res
    assert load_run(ga_run).info.extra["vanilla_model"] == str((tiny_run / "model").resolve())
    assert main([*map(str, args), "--vanilla", str(tiny_run)]) == 0
    explicit = json.loads((ga_run / "eval-all.json").read_text())
    assert explicit["ues_vanilla"] == res["ues_vanilla"] and explicit["subsets"] == res["subsets"]
    assert "ues" not in explicit  # the retrain-anchored UES needs --reference
    assert 0.0 <= res["mia_auc"] <= 1.0 and "mia_auc_mink" in res and "privleak" in res
    assert not (tiny_run / "eval-all.json").is_file()  # the vanilla is evaluated, not overwritten
    one = ["evaluate", "--run", tiny_run, "--data", tiny_data, "--split", "forget", *EVAL]
    assert main([str(a) for a in one]) == 0
    assert set(json.loads((tiny_run / "eval-forget.json").read_text())["subsets"]) == {"forget"}


# ------------------------------------------------------------------------ pipelines
# the benchmark's own run: test_benchmark.py


def test_incorrectness_pipeline(tmp_path):
    data, run_dir = tmp_path / "d", tmp_path / "run"
    assert main(["generate", str(data), "--scenario", "incorrectness", "--quiet"]) == 0
    assert main(["finetune", "--data", str(data), "--out", str(run_dir), *FAST]) == 0
    assert (
        main(["evaluate", "--run", str(run_dir), "--data", str(data), "--quiet", "--device", "cpu"])
        == 0
    )
    res = json.loads((run_dir / "eval-all.json").read_text())
    assert res["ues"] == 0.0  # a finetune run is its own vanilla
    assert res["subsets"]["forget"]["n"] == 9  # 1 condition x 3 wrong facts x 3 question types
    assert 0.0 <= res["mia_auc"] <= 1.0
