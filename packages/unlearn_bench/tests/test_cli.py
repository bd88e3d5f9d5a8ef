"""The console script: the shared contract (medcommon.testing), then what is unlearn-bench's own.

The contract's "train" is ``finetune`` (method name ``finetune``) and ``unlearn --method M``
from a vanilla run that ``make_data`` trains beside the dataset.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from medcommon.cli import run_main
from medcommon.run import load_run
from medcommon.testing import CLIContract
from unlearn_bench import PACKAGE, __version__
from unlearn_bench.cli import main
from unlearn_bench.config import FinetuneConfig, SynthConfig, finetune_preset
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
        from unlearn_bench.train import finetune

        data = root / "data"
        generate(data, "privacy", SynthConfig(10, 2, 0.2, image_size=32), seed=0)
        cfg = dataclasses.replace(finetune_preset("tiny"), epochs=0.1)
        finetune(data, root / "vanilla", cfg, device="cpu", quiet=True)
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
    run = load_run(tiny_run, package=PACKAGE, config_class=FinetuneConfig)
    assert run.metrics()["steps"] == 2  # 0.06 epoch of 240 questions at batch 8
    assert (run.info.command, run.info.method, run.info.extra) == (
        "finetune",
        "finetune",
        {"init": "tiny"},
    )


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
    assert code == 2 and "cannot resume a finetune run of method finetune" in err
    assert (tiny_run / "config.json").read_bytes() == before


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


def test_runs_in_the_earlier_layout_still_evaluate(tmp_path, tiny_data, tiny_run, ga_run):
    """config.json as unlearn-bench 0.1.0 wrote it: run facts beside a nested "config"."""
    old = {"package": "unlearn-bench", "version": "0.1.0", "data": str(tiny_data), "seed": 0}
    runs = {}
    for name, src, facts in (
        ("unlearn", ga_run, {"command": "unlearn", "method": "ga",
                             "vanilla_model": str((tiny_run / "model").resolve())}),
        ("finetune", tiny_run, {"command": "finetune", "init": "tiny"}),
    ):  # fmt: skip
        runs[name] = tmp_path / name
        shutil.copytree(src / "model", runs[name] / "model")
        cfg = json.loads((src / "config.json").read_text())["config"]
        (runs[name] / "config.json").write_text(json.dumps({**old, **facts, "config": cfg}))
        assert load_run(runs[name], package=PACKAGE).schema == "legacy-unlearn-bench"
    for run_dir in (ga_run, runs["unlearn"], runs["finetune"]):
        assert (
            main([str(a) for a in ["evaluate", "--run", run_dir, "--data", tiny_data, *EVAL]]) == 0
        )
    new, legacy, legacy_ft = (
        json.loads((r / "eval-all.json").read_text())
        for r in (ga_run, runs["unlearn"], runs["finetune"])
    )
    # the vanilla model is found in the old config as in the new one: the same UES
    assert legacy["subsets"] == new["subsets"] and legacy["ues_vanilla"] == new["ues_vanilla"]
    assert legacy_ft["ues"] == 0.0  # an old finetune run is still its own vanilla


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
