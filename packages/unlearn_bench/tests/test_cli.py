"""Every command: a 2-step smoke run in-process; bad input: exit 2, one error line, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from medcommon.cli import run_main
from unlearn_bench import __version__
from unlearn_bench.cli import main
from unlearn_bench.methods import METHODS

FAST = ["--quiet", "--device", "cpu", "--set", "epochs=0.06", "--set", "batch_size=8"]


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_version(capsys):
    assert run_main(main, ["--version"]) == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("scenario", ["privacy", "incorrectness"])
def test_generate(tmp_path, scenario):
    out = tmp_path / "d"
    assert (
        main(
            [
                "generate",
                str(out),
                "--scenario",
                scenario,
                "--preset",
                "tiny",
                "--forget-ratio",
                "0.3",
                "--quiet",
            ]
        )
        == 0
    )
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["scenario"] == scenario and meta["entities"]["forget"] == 3
    for f in (
        "forget.jsonl",
        "retain.jsonl",
        "test.jsonl",
        "general.jsonl",
        "README.md",
        "entities.jsonl",
    ):
        assert (out / f).is_file()
    assert any((out / "images").glob("*.png"))


def test_finetune_run_folder(tiny_run):
    for f in (
        "config.json",
        "log.jsonl",
        "metrics.json",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "checkpoint/trainer_state.json",
    ):
        assert (tiny_run / f).is_file(), f
    assert (
        json.loads((tiny_run / "metrics.json").read_text())["steps"] == 2
    )  # 0.06 epoch of 240 questions at batch 8
    assert json.loads((tiny_run / "config.json").read_text())["command"] == "finetune"


def test_retrain_uses_retain_only_and_same_init(tmp_path, tiny_data, tiny_run):
    out = tmp_path / "gold"
    assert main(["retrain", "--data", str(tiny_data), "--out", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["command"] == "retrain" and m["n_train"] == 192  # 8 retain patients x 24 questions
    assert (out / "model" / "model.safetensors").is_file()
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


@pytest.mark.parametrize("method", METHODS.names())
def test_unlearn_each_method(tmp_path, tiny_data, tiny_run, method):
    out = tmp_path / method
    args = [
        "unlearn",
        "--model",
        str(tiny_run / "model"),
        "--data",
        str(tiny_data),
        "--out",
        str(out),
        "--method",
        method,
        "--quiet",
        "--device",
        "cpu",
        "--set",
        "batch_size=48",
        "--set",
        "epochs=2",
    ]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and m["steps"] == 2  # 2 epochs of 48 forget questions at batch 48
    assert (out / "model" / "model.safetensors").is_file() and (out / "log.jsonl").is_file()


def test_evaluate_writes_all_metrics(tmp_path, tiny_data, tiny_run):
    un = tmp_path / "ga"
    assert (
        main(
            [
                "unlearn",
                "--model",
                str(tiny_run),
                "--data",
                str(tiny_data),
                "--out",
                str(un),
                "--method",
                "ga",
                "--quiet",
                "--device",
                "cpu",
                "--set",
                "batch_size=48",
            ]
        )
        == 0
    )
    args = [
        "evaluate",
        "--run",
        str(un),
        "--data",
        str(tiny_data),
        "--reference",
        str(tiny_run),
        "--quiet",
        "--device",
        "cpu",
        "--set",
        "max_new_tokens=4",
        "--set",
        "max_items=12",
    ]
    assert main(args) == 0
    res = json.loads((un / "eval-all.json").read_text())
    for s in ("forget", "retain", "test", "general"):
        for k in ("mcq_acc", "rougeL", "cloze_acc"):
            for suffix in ("", "_image_text", "_text_only"):
                assert k + suffix in res["subsets"][s]
    assert 0.0 <= res["ues"] <= 1.0  # vanilla taken from the run's config
    # no --vanilla was given, so the UES above can only come from the run's config
    un_cfg = json.loads((un / "config.json").read_text())
    assert un_cfg["command"] == "unlearn"
    assert un_cfg["vanilla_model"] == str((tiny_run / "model").resolve())
    explicit = [a for a in args if a not in ("--reference", str(tiny_run))]
    assert len(explicit) == len(args) - 2
    assert main([*explicit, "--vanilla", str(tiny_run)]) == 0
    res_explicit = json.loads((un / "eval-all.json").read_text())
    assert res_explicit["ues"] == res["ues"]
    assert res_explicit["subsets"] == res["subsets"]
    assert 0.0 <= res["mia_auc"] <= 1.0 and "mia_auc_mink" in res and "privleak" in res
    assert (
        tiny_run / "eval-all.json"
    ).is_file() is False  # the vanilla is evaluated, not overwritten
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(tiny_run),
                "--data",
                str(tiny_data),
                "--split",
                "forget",
                "--quiet",
                "--device",
                "cpu",
                "--set",
                "max_new_tokens=2",
            ]
        )
        == 0
    )
    assert set(json.loads((tiny_run / "eval-forget.json").read_text())["subsets"]) == {"forget"}


def test_benchmark_tiny(tmp_path):
    out = tmp_path / "bench"
    args = [
        "benchmark",
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--seeds",
        "0",
        "--scenarios",
        "privacy",
        "--methods",
        "ga",
        "npo",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["rows"]} == {"vanilla", "retrain", "ga", "npo"}
    assert res["extra"]["unlearn_over_retrain_time_mean"] > 0
    assert (
        (out / "report.md").is_file()
        and (out / "ues.png").is_file()
        and (out / "scores_privacy.png").is_file()
    )


# ----------------------------------------------------------------------------- bad input
def test_malformed_jsonl_names_the_line(tmp_path, tiny_data, capsys):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    lines = (data / "retain.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-5]
    (data / "retain.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert run_main(main, ["finetune", "--data", str(data), "--out", str(out), *FAST]) == 2
    assert "retain.jsonl:5: malformed JSON" in _err(capsys)
    assert not out.exists()


def test_missing_image(tmp_path, tiny_data, capsys):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    first = json.loads((data / "forget.jsonl").read_text().splitlines()[0])
    (data / first["image"]).unlink()
    out = tmp_path / "run"
    assert run_main(main, ["finetune", "--data", str(data), "--out", str(out), *FAST]) == 2
    line = _err(capsys)
    assert "forget.jsonl:1" in line and "image not found" in line
    assert not out.exists()


def test_unknown_method(tmp_path, tiny_data, tiny_run, capsys):
    out = tmp_path / "run"
    code = run_main(
        main,
        [
            "unlearn",
            "--model",
            str(tiny_run),
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--method",
            "sgd",
        ],
    )
    assert code == 2
    assert _err(capsys) == (
        "error: --method: unknown method 'sgd'; choose from ga, grad_diff, idk, kl_min, npo, rmu, simnpo"
    )
    assert not out.exists()


def test_model_folder_not_llava(tmp_path, tiny_data, capsys):
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bert"}')
    out = tmp_path / "run"
    code = run_main(
        main,
        [
            "unlearn",
            "--model",
            str(bad),
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--method",
            "ga",
        ],
    )
    assert code == 2
    assert (
        _err(capsys)
        == f"error: {bad}: not a Llava checkpoint (model_type 'bert', expected 'llava')"
    )
    assert not out.exists()
    assert (
        run_main(
            main,
            [
                "finetune",
                "--model",
                str(tmp_path / "nope"),
                "--data",
                str(tiny_data),
                "--out",
                str(out),
            ],
        )
        == 2
    )
    assert "model folder not found" in _err(capsys)
    assert not out.exists()


@pytest.mark.parametrize("ratio", ["0", "1", "1.2", "-0.5"])
def test_forget_ratio_out_of_range(tmp_path, capsys, ratio):
    out = tmp_path / "d"
    assert run_main(main, ["generate", str(out), "--forget-ratio", ratio, "--quiet"]) == 2
    assert _err(capsys) == f"error: --forget-ratio: must be in (0, 1), got {float(ratio)}"
    assert not out.exists()


def test_unknown_scenario_and_bad_set(tmp_path, capsys):
    assert run_main(main, ["generate", str(tmp_path / "d"), "--scenario", "cats"]) == 2
    assert "unknown scenario 'cats'" in _err(capsys)
    assert run_main(main, ["generate", str(tmp_path / "d"), "--set", "bogus=1"]) == 2
    assert "--set bogus" in _err(capsys)
    assert not (tmp_path / "d").exists()


def test_resume_matches_uninterrupted_run(tmp_path, tiny_data):
    from safetensors.torch import load_file

    base = ["finetune", "--data", str(tiny_data), "--quiet", "--device", "cpu"]
    base += ["--set", "batch_size=8", "--set", "lr_schedule=constant"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*base, "--out", str(a), "--set", "epochs=0.12"]) == 0  # 4 steps
    assert main([*base, "--out", str(b), "--set", "epochs=0.06"]) == 0  # stopped after 2
    assert main([*base, "--out", str(b), "--set", "epochs=0.12", "--resume"]) == 0  # 2 more
    assert json.loads((b / "metrics.json").read_text())["steps"] == 4
    wa = load_file(a / "model" / "model.safetensors")
    wb = load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_incorrectness_pipeline(tmp_path):
    data, run = tmp_path / "d", tmp_path / "run"
    assert (
        main(["generate", str(data), "--scenario", "incorrectness", "--preset", "tiny", "--quiet"])
        == 0
    )
    assert main(["finetune", "--data", str(data), "--out", str(run), *FAST]) == 0
    args = ["evaluate", "--run", str(run), "--data", str(data), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    res = json.loads((run / "eval-all.json").read_text())
    assert res["ues"] == 0.0  # a finetune run is its own vanilla
    assert res["subsets"]["forget"]["n"] == 9  # 1 condition x 3 wrong facts x 3 question types
    assert 0.0 <= res["mia_auc"] <= 1.0
