"""The console script: the shared contract (medai_testkit), then what is unlearn-bench's own.

The contract's "train" is ``finetune`` (method name ``finetune``) and ``unlearn --method M``
from a vanilla run that ``make_data`` trains beside the dataset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

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
        """The package's bad inputs (issue #20), beside the contract's standard ones."""
        vanilla = data.parent / "vanilla"
        names = ("json", "image", "answer", "question", "options", "imagetype", "split", "train")
        broken = {name: shutil.copytree(data, tmp / f"data-{name}") for name in names}
        retain = (broken["json"] / "retain.jsonl").read_text().splitlines()
        retain[4] = retain[4][:-5]  # line 5 cut short
        (broken["json"] / "retain.jsonl").write_text("\n".join(retain) + "\n")
        first = json.loads((data / "forget.jsonl").read_text().splitlines()[0])
        (broken["image"] / first["image"]).unlink()  # the first forget question's image
        _edit_row(broken["answer"] / "forget_train.jsonl", 3, answer=42)
        _edit_row(broken["question"] / "forget_train.jsonl", 2, question=None)
        _edit_row(broken["options"] / "test.jsonl", 1, options="A, B, C, D")
        _edit_row(broken["imagetype"] / "retain_train.jsonl", 1, image=7)
        (broken["split"] / "test.jsonl").unlink()
        (broken["train"] / "forget_train.jsonl").unlink()
        bert = tmp / "bert"
        bert.mkdir()
        (bert / "config.json").write_text('{"model_type": "bert"}')
        pickled_bin = _pickled_copy(vanilla / "model", tmp / "pickled-bin", "pytorch_model.bin")
        pickled_pt = _pickled_copy(vanilla / "model", tmp / "pickled-pt", "model.pt")
        (tmp / "q.jsonl").write_text('{"question": "a?"}\n{"question": "b?", "image": "no.png"}\n')
        (tmp / "qnull.jsonl").write_text('{"question": null}\n')
        # a finished, evaluated run: refused as --out, and left bit-identical by a run that
        # diverges while --overwrite-ing it
        evaluated = shutil.copytree(vanilla, tmp / "evaluated")
        eval_argv = ["evaluate", "--run", evaluated, "--data", data, *EVAL]
        assert main([str(a) for a in eval_argv]) == 0
        assert (evaluated / "eval-all.json").is_file()

        def finetune(d, name, *extra):
            return ["finetune", "--data", d, "--out", tmp / f"run-{name}", *FAST, *extra]

        def unlearn(model, name, *extra, d=data):
            return ["unlearn", "--model", model, "--data", d, "--out", tmp / f"run-{name}",
                    "--quiet", "--device", "cpu", *extra]  # fmt: skip

        def predict(name, *args):
            return ["predict", "--model", vanilla, "--out", tmp / f"{name}.jsonl", *args]

        type_error = "must be a string, got"
        into_evaluated = ["unlearn", "--model", vanilla, "--data", data, "--out", evaluated,
                          "--quiet", "--device", "cpu"]  # fmt: skip
        resume_evaluated = ["finetune", "--data", data, "--out", evaluated, "--resume",
                            "--quiet", "--device", "cpu"]  # fmt: skip
        cases = {
            # the dataset (JSON Lines rows, images, split files)
            "JSONL line malformed": (
                finetune(broken["json"], "j"),
                "retain.jsonl:5: malformed JSON",
            ),
            "JSONL answer is a number": (
                finetune(broken["answer"], "a"),
                f"forget_train.jsonl:3: field 'answer' {type_error} 42",
            ),
            "JSONL question is null (unlearn)": (
                unlearn(vanilla, "q", d=broken["question"]),
                f"forget_train.jsonl:2: field 'question' {type_error} null",
            ),
            "JSONL options not a list": (
                finetune(broken["options"], "o"),
                "test.jsonl:1: field 'options' must be a list of strings",
            ),
            "JSONL image is a number (unlearn)": (
                unlearn(vanilla, "it", "--method", "grad_diff", d=broken["imagetype"]),
                "retain_train.jsonl:1: field 'image' must be a string or null, got 7",
            ),
            "missing image": (finetune(broken["image"], "i"), "forget.jsonl:1: image not found"),
            "dataset missing a split file": (
                finetune(broken["split"], "s"),
                "test.jsonl: split file not found",
            ),
            "dataset missing forget_train (unlearn)": (
                unlearn(vanilla, "ft", d=broken["train"]),
                "forget_train.jsonl: split file not found",
            ),
            # --model folders
            "--model not a Llava": (
                unlearn(bert, "bert"),
                f"error: {bert}: not a Llava checkpoint (model_type 'bert', expected 'llava')",
            ),
            "--model without config.json": (
                finetune(data, "noconfig", "--model", data),
                "not a Hugging Face model folder (no config.json)",
            ),
            "--model missing": (
                finetune(data, "nomodel", "--model", tmp / "nope"),
                "nope: model folder not found",
            ),
            "--model pickled pytorch_model.bin (unlearn)": (
                unlearn(pickled_bin, "pkl"),
                "pytorch_model.bin: pickled weights are never loaded (unpickling can run code); "
                "convert them once, where you trust the file: in transformers, "
                "model.save_pretrained(dir, safe_serialization=True)",
            ),
            "--model pickled *.pt (finetune)": (
                finetune(data, "pt", "--model", pickled_pt),
                "model.pt: pickled weights are never loaded",
            ),
            "npo_reference pickled": (
                unlearn(vanilla, "ref", "--set", f"npo_reference={pickled_bin}"),
                "pytorch_model.bin: pickled weights",
            ),
            # config values
            "unknown method, exact line": (
                unlearn(vanilla, "sgd", "--method", "sgd"),
                "error: --method: unknown method 'sgd'; choose from "
                + ", ".join(sorted(METHODS.names())),
            ),
            "lr 0 (finetune)": (finetune(data, "lr0", "--set", "lr=0"), "lr: must be > 0, got 0.0"),
            "lr negative (unlearn)": (
                unlearn(vanilla, "lrneg", "--set", "lr=-1e-4"),
                "lr: must be > 0, got -0.0001",
            ),
            "batch_size 0 (unlearn)": (
                unlearn(vanilla, "b0", "--set", "batch_size=0"),
                "batch_size: must be >= 1, got 0",
            ),
            "checkpoint_every negative (unlearn)": (
                unlearn(vanilla, "ce", "--set", "checkpoint_every=-1"),
                "checkpoint_every: must be >= 0, got -1",
            ),
            "float16 on the CPU (unlearn)": (
                unlearn(vanilla, "f16", "--dtype", "float16"),
                "float16 autocast needs CUDA",
            ),
            # run folders: existing runs are never touched
            "finetune into a finished, evaluated run": (
                ["finetune", "--data", data, "--out", evaluated, *FAST],
                "already exists and is not empty",
            ),
            "unlearn diverges (new folder)": (
                unlearn(vanilla, "div", "--method", "ga", "--set", "lr=1e30"),
                "diverged",
            ),
            "unlearn diverges while --overwrite-ing an evaluated run": (
                [*into_evaluated, "--overwrite", "--method", "ga", "--set", "lr=1e30"],
                "diverged",
            ),
            "unlearn --overwrite of its own --model": (
                [*into_evaluated[:2], evaluated, *into_evaluated[3:], "--overwrite"],
                "--model: " + str(evaluated / "model") + " is inside --out",
            ),
            "unlearn --resume of a finetune run": (
                [*into_evaluated, "--resume", "--method", "ga"],
                "a finetune run; resume it with `finetune`",
            ),
            "--resume changing lr": (
                [*resume_evaluated, "--set", "lr=0.5"],
                "--set lr: cannot change a resumed run's setting",
            ),
            "--resume of a mistyped folder (unlearn)": (
                unlearn(vanilla, "typo", "--resume"),
                "run-typo: run folder not found",
            ),
            # the other commands
            "benchmark method": (
                ["benchmark", "--out", tmp / "bench", "--methods", "ga", "bogus"],
                "unknown method 'bogus'",
            ),
            "evaluate unknown split": (
                ["evaluate", "--run", vanilla, "--data", data, "--split", "val"],
                "unknown split 'val'",
            ),
            "evaluate a pickled --vanilla": (
                ["evaluate", "--run", vanilla, "--data", data, "--vanilla", pickled_bin, *EVAL],
                "pytorch_model.bin: pickled weights",
            ),
            "predict image": (
                predict("p1", "--image", tmp / "no.png", "a?"),
                "no.png: image not found",
            ),
            "predict file image": (
                predict("p2", "--questions", tmp / "q.jsonl"),
                "q.jsonl:2: image not found",
            ),
            "predict file question null": (
                predict("p4", "--questions", tmp / "qnull.jsonl"),
                "qnull.jsonl:1: needs a non-empty string field 'question'",
            ),
            "predict pickled --model": (
                ["predict", "--model", pickled_bin, "--out", tmp / "p5.jsonl", "a?"],
                "pytorch_model.bin: pickled weights",
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

    def test_bad_inputs_exit_2_leave_nothing_and_a_retry_works(
        self, contract_data, tmp_path, capsys
    ):
        super().test_bad_inputs_exit_2_leave_nothing_and_a_retry_works(
            contract_data, tmp_path, capsys
        )
        assert not list(tmp_path.glob("gen-*")), "generate wrote a dataset for bad input"
        assert not list(tmp_path.glob("run-*")), "a bad run left a folder"
        assert not list(tmp_path.glob(".*")), "a staging folder was left behind"
        assert not list(tmp_path.glob("p*.jsonl")), "predict wrote answers for bad input"
        assert not (tmp_path / "pwned").exists(), "a pickle was loaded"

    def test_package_cases_cover_the_issue(self, contract_data, tmp_path):
        """At least 20 bad-input cases (standard + package) for finetune and unlearn."""
        std = self.standard_bad_cases(contract_data, tmp_path / "std")
        own = self.bad_input_cases(contract_data, tmp_path)
        runs = [c for c, (argv, _) in {**std, **own}.items() if argv[0] in ("finetune", "unlearn")]
        assert len(runs) >= 20, runs


def _edit_row(path: Path, line: int, **changes) -> None:
    """Set fields of row ``line`` (1-based) of a JSON Lines file."""
    rows = path.read_text().splitlines()
    row = json.loads(rows[line - 1])
    row.update(changes)
    rows[line - 1] = json.dumps(row)
    path.write_text("\n".join(rows) + "\n")


class _Pwned:
    """A pickle that, when loaded, writes a file: proof that nothing unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _pickled_copy(model_dir: Path, out: Path, name: str) -> Path:
    """``model_dir`` with its weights replaced by a pickle ``name`` (one that would write
    ``out.parent/pwned`` if anything loaded it)."""
    import pickle

    shutil.copytree(model_dir, out)
    (out / "model.safetensors").unlink()
    (out / name).write_bytes(pickle.dumps(_Pwned(out.parent / "pwned")))
    return out


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
    # same init for real: with lr = 1e-30 (a learning rate must be > 0; AdamW then moves a
    # weight by about 1e-30) finetune and retrain with the same seed save the same initial
    # weights, up to those steps, and the same tokenizer
    from safetensors.torch import load_file

    frozen = [*FAST, "--seed", "0", "--set", "lr=1e-30"]
    ft0, rt0 = tmp_path / "ft0", tmp_path / "rt0"
    assert main(["finetune", "--data", str(tiny_data), "--out", str(ft0), *frozen]) == 0
    assert main(["retrain", "--data", str(tiny_data), "--out", str(rt0), *frozen]) == 0
    assert json.loads((rt0 / "metrics.json").read_text())["steps"] == 2  # it did train steps
    wf = load_file(ft0 / "model" / "model.safetensors")
    wr = load_file(rt0 / "model" / "model.safetensors")
    assert wf.keys() == wr.keys() and max((wf[k] - wr[k]).abs().max() for k in wf) < 1e-25
    tok = (ft0 / "model" / "tokenizer.json").read_bytes()
    assert tok == (rt0 / "model" / "tokenizer.json").read_bytes()
    # and lr = 1e-30 really froze them: the trained vanilla (same seed 0, lr 3e-3) differs
    wt = load_file(tiny_run / "model" / "model.safetensors")
    assert max((wt[k] - wf[k]).abs().max() for k in wf) > 1e-4


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
    # no --vanilla was given, so the vanilla model can only come from the run's config; it
    # is also the reference here, so there is nothing to forget and UES is undefined
    assert res["ues"] is None and res["ues_undefined"].startswith("nothing to forget")
    from unlearn_bench.evaluate import summary_lines

    assert any(ln.startswith("ues") and "undefined: nothing to forget" in ln
               for ln in summary_lines(res))  # fmt: skip
    assert "ues_vanilla" in res
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
