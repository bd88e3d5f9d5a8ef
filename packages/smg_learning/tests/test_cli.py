"""The console script: a 2-step smoke run of every command, resume, and bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medcommon.cli import run_main
from medcommon.io import read_image, write_image
from medcommon.models import from_pretrained
from smg_learning import __version__
from smg_learning.cli import main
from smg_learning.segmenter import Segmenter
from smg_learning.smd import SiteModulatedDiffusion

TWO_STEPS = ["--set", "steps_per_site=2", "--set", "smd.train_steps=2", "--quiet"]


def run(argv: list[str]) -> int:
    return run_main(main, [str(a) for a in argv])


def test_version(capsys) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"smg-learning {__version__}"


def test_synth_writes_both_layouts(tmp_path) -> None:
    assert run(["synth", tmp_path / "p", "--preset", "tiny", "--seed", "1", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["BMC", "I2CVB", "RUNMC"]
    assert len(list((tmp_path / "p" / "BMC").glob("Case*_segmentation.nii.gz"))) == 4
    assert run(["synth", tmp_path / "f", "--task", "fundus", "--sites", "2", "--quiet"]) == 0
    img = read_image(tmp_path / "f" / "Domain2" / "image" / "Domain2_000.png").array
    msk = read_image(tmp_path / "f" / "Domain2" / "mask" / "Domain2_000.png").array
    assert img.ndim == 3 and img.shape[:2] == msk.shape and set(np.unique(msk)) == {0, 255}


def test_train_evaluate_sample_smoke(tmp_path, prostate_dir, capsys) -> None:
    out = tmp_path / "run"
    code = run(
        [
            "train",
            "--data",
            prostate_dir,
            "--out",
            out,
            "--method",
            "smg",
            "--sites",
            "RUNMC,BMC",
            "--heldout",
            "I2CVB",
            *TWO_STEPS,
        ]
    )
    assert code == 0, capsys.readouterr().err
    for name in (
        "config.json",
        "run.json",
        "split.json",
        "log.jsonl",
        "metrics.json",
        "model/model.safetensors",
        "smd/model.safetensors",
        "stages/BMC/config.json",
        "checkpoint/site-RUNMC",
        "checkpoint/smd-site-BMC",
    ):
        assert (out / name).exists(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sites"] == ["RUNMC", "BMC"] and cfg["heldout"] == ["I2CVB"]
    split = json.loads((out / "split.json").read_text())
    assert set(split) == {"RUNMC", "BMC", "I2CVB"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.asarray(metrics["dice_matrix"]).shape == (2, 3)
    assert metrics["columns"] == ["RUNMC", "BMC", "I2CVB"]
    stages = [json.loads(x).get("stage") for x in (out / "log.jsonl").read_text().splitlines()]
    assert {"site-RUNMC", "site-BMC", "smd-site-RUNMC", "smd-site-BMC"} <= set(stages)
    from_pretrained(Segmenter, out / "model")

    assert (
        run(["evaluate", "--run", out, "--data", prostate_dir, "--split", "test", "--quiet"]) == 0
    )
    ev = json.loads((out / "eval-test.json").read_text())
    # evaluate recomputes exactly what training recorded
    np.testing.assert_allclose(ev["dice_matrix"], metrics["dice_matrix"], atol=1e-9)
    for key in ("memorizability", "generalizability", "bwt", "hd95"):
        assert ev[key] == pytest.approx(metrics[key])

    assert (
        run(
            [
                "sample",
                "--run",
                out,
                "--site",
                "BMC",
                "--n",
                "3",
                "--steps",
                "2",
                "--out",
                tmp_path / "samples",
            ]
        )
        == 0
    )
    imgs = sorted((tmp_path / "samples" / "image").glob("*.png"))
    assert len(imgs) == 3 and len(list((tmp_path / "samples" / "mask").glob("*.png"))) == 3
    assert read_image(imgs[0]).array.shape == (16, 16)
    capsys.readouterr()
    assert run(["sample", "--run", out, "--site", "HK", "--out", tmp_path / "s2"]) == 2
    assert "unknown site 'HK'" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()


@pytest.mark.parametrize(
    "method", ["finetune", "joint", "ewc", "lwf", "replay-real", "smd-replay", "pga-real"]
)
def test_every_strategy_trains_two_steps(tmp_path, prostate_dir, method) -> None:
    out = tmp_path / method
    assert (
        run(
            [
                "train",
                "--data",
                prostate_dir,
                "--out",
                out,
                "--method",
                method,
                "--sites",
                "RUNMC,BMC",
                *TWO_STEPS,
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and np.asarray(m["dice_matrix"]).shape == (2, 2)


def test_resume_gives_the_same_weights(tmp_path, prostate_dir) -> None:
    base = [
        "--data",
        prostate_dir,
        "--method",
        "pga-real",
        "--sites",
        "RUNMC,BMC",
        "--set",
        "steps_per_site=4",
        "--quiet",
    ]
    assert run(["train", "--out", tmp_path / "a", *base]) == 0
    assert run(["train", "--out", tmp_path / "b", *base, "--checkpoint-every", "2"]) == 0
    # simulate a kill between the two stages: drop the second stage's checkpoint and outputs
    b = tmp_path / "b"
    shutil.rmtree(b / "checkpoint" / "site-BMC")
    shutil.rmtree(b / "model")
    from medcommon.train.checkpoint import read_trainer_state

    assert read_trainer_state(b / "checkpoint" / "site-RUNMC")["step"] == 4
    resume = [a for a in base if a not in ("--method", "pga-real")]  # taken from run.json
    assert run(["train", "--out", b, *resume, "--resume"]) == 0
    wa = from_pretrained(Segmenter, tmp_path / "a" / "model").state_dict()
    wb = from_pretrained(Segmenter, b / "model").state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert run(["train", "--out", b, *resume, "--resume", "--method", "smg"]) == 2


def test_benchmark_tiny(tmp_path) -> None:
    out = tmp_path / "bench"
    assert (
        run(
            [
                "benchmark",
                "--out",
                out,
                "--preset",
                "tiny",
                "--seeds",
                "0",
                "--quiet",
                "--methods",
                "finetune,smg",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["rows"]} == {"finetune", "smg"}
    for key in ("pga_over_plain", "first_over_exact", "ddim_over_ddpm_time", "site_acc_smd"):
        assert key in res["extra"]
    for name in ("report.md", "summary.png", "dice_smg.png", "smd_samples.png"):
        assert (out / name).is_file()


# ----------------------------------------------------------------- bad inputs
def _copy(prostate_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prostate_dir, data)
    return data


def _mask_path(data):
    return data / "BMC" / "Case01_segmentation.nii.gz"


def _no_segmentation(data):
    _mask_path(data).unlink()
    return [], "BMC/Case01.nii.gz: image without its segmentation"


def _shape_mismatch(data):
    write_image(_mask_path(data), np.zeros((4, 10, 10), np.uint8), (3.0, 1.0, 1.0))
    return (
        [],
        "Case01_segmentation.nii.gz: mask shape (4, 10, 10) differs from image shape (4, 24, 24)",
    )


def _bad_labels(data):
    m = read_image(_mask_path(data)).array.copy()
    m[0, 0, 0] = 2
    write_image(_mask_path(data), m, (3.0, 1.0, 1.0))
    return [], "Case01_segmentation.nii.gz: mask has labels [2] not among the declared [0, 1]"


def _unknown_site(data):
    return ["--sites", "RUNMC,UCL"], "error: --sites: unknown site 'UCL'"


def _empty_site(data):
    (data / "UCL").mkdir()
    return ["--sites", "RUNMC,UCL"], "UCL: site has no cases"


def _overlap(data):
    return [
        "--sites",
        "RUNMC,BMC",
        "--heldout",
        "BMC",
    ], "error: --heldout: site 'BMC' is also in --sites"


@pytest.mark.parametrize(
    "make", [_no_segmentation, _shape_mismatch, _bad_labels, _unknown_site, _empty_site, _overlap]
)
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, prostate_dir, capsys, make) -> None:
    data = _copy(prostate_dir, tmp_path)
    extra, expected = make(data)
    out = tmp_path / "run"
    code = run(["train", "--data", data, "--out", out, *extra, *TWO_STEPS])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


def test_bad_config_and_method(tmp_path, prostate_dir, capsys) -> None:
    out = tmp_path / "run"
    assert run(["train", "--data", prostate_dir, "--out", out, "--set", "pga.nope=1"]) == 2
    assert "pga.nope: unknown config field" in capsys.readouterr().err
    assert run(["train", "--data", prostate_dir, "--out", out, "--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert run(["train", "--data", tmp_path / "missing", "--out", out]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert not out.exists()


def test_fundus_train_two_steps(tmp_path, fundus_dir) -> None:
    out = tmp_path / "fundus-run"
    assert (
        run(
            [
                "train",
                "--data",
                fundus_dir,
                "--out",
                out,
                "--method",
                "smg",
                "--sites",
                "Domain1,Domain2",
                "--heldout",
                "Domain3",
                *TWO_STEPS,
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["columns"] == ["Domain1", "Domain2", "Domain3"]
    assert json.loads((out / "run.json").read_text())["channels"] == 3
    assert (
        run(
            [
                "sample",
                "--run",
                out,
                "--site",
                "Domain1",
                "--n",
                "2",
                "--steps",
                "2",
                "--out",
                tmp_path / "fs",
            ]
        )
        == 0
    )
    assert read_image(next((tmp_path / "fs" / "image").glob("*.png"))).array.shape == (16, 16, 3)


def test_resume_after_a_kill_inside_a_stage(tmp_path, prostate_dir, monkeypatch) -> None:
    import smg_learning.continual as train_mod

    base = [
        "--data",
        prostate_dir,
        "--method",
        "smd-replay",
        "--sites",
        "RUNMC,BMC",
        "--set",
        "steps_per_site=4",
        "--set",
        "smd.train_steps=4",
        "--quiet",
        "--checkpoint-every",
        "2",
    ]
    assert run(["train", "--out", tmp_path / "a", *base]) == 0

    real_make_step = train_mod.make_step

    def killed_at_bmc_step_3(strategy, cfg, **kw):
        step = real_make_step(strategy, cfg, **kw)

        def wrapped(model, batch, ctx):
            if kw["stage"] == 1 and ctx.step == 2:
                raise KeyboardInterrupt
            return step(model, batch, ctx)

        return wrapped

    monkeypatch.setattr(train_mod, "make_step", killed_at_bmc_step_3)
    assert run(["train", "--out", tmp_path / "b", *base]) == 130
    monkeypatch.setattr(train_mod, "make_step", real_make_step)
    assert not (tmp_path / "b" / "metrics.json").exists()
    assert run(["train", "--out", tmp_path / "b", *base, "--resume"]) == 0
    for name in ("model", "smd"):
        cls = Segmenter if name == "model" else SiteModulatedDiffusion
        wa = from_pretrained(cls, tmp_path / "a" / name).state_dict()
        wb = from_pretrained(cls, tmp_path / "b" / name).state_dict()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["dice_matrix"] == mb["dice_matrix"]
