"""Issue #20 in smg-learning: a divergence is bad input (exit 2, nothing kept, a retry
works), bad intensities and masks are refused before anything is written, and a resumed
run's ``metrics.json`` is an uninterrupted run's, ``align_share`` included."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medcommon.cli import run_main
from medcommon.errors import Diverged
from medcommon.io import read_image, write_image
from smg_learning.cli import main
from smg_learning.config import run_preset
from smg_learning.data import load_continual

#: metrics.json entries that are timings (they differ between any two runs)
TIMINGS = ("train_seconds", "segmenter_seconds", "smd_seconds", "replay_sample_seconds")


def run(argv: list) -> int:
    return run_main(main, [str(a) for a in argv])


def metrics_without_timings(folder) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in TIMINGS}


def error_line(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _train(data, out, *extra) -> list:
    argv = ["train", "--data", data, "--out", out, "--sites", "RUNMC,BMC", "--heldout", "I2CVB"]
    return [*argv, "--set", "steps_per_site=2", "--set", "smd.train_steps=2", "--quiet", *extra]


# ----------------------------------------------------------------------------- divergence
@pytest.fixture
def nan_loss_in_stage_bmc(monkeypatch):
    """Every step of the second stage (BMC) returns a NaN loss, after the first stage
    wrote its checkpoint, model and log lines."""
    import smg_learning.continual as continual

    real = continual.make_step

    def make_step(strategy, cfg, **kw):
        step = real(strategy, cfg, **kw)
        if kw["stage"] != 1:
            return step

        def nan_step(model, batch, ctx):
            out = step(model, batch, ctx)
            out["loss"] = out["loss"] * float("nan")
            return out

        return nan_step

    monkeypatch.setattr(continual, "make_step", make_step)
    return lambda: monkeypatch.setattr(continual, "make_step", real)


def test_a_nan_loss_is_exit_2_leaves_nothing_and_a_retry_works(
    prostate_dir, tmp_path, capsys, nan_loss_in_stage_bmc
) -> None:
    out = tmp_path / "run"
    assert run(_train(prostate_dir, out, "--method", "pga-real")) == 2
    line = error_line(capsys)
    assert "error: training: diverged: loss is nan at step 1 in stage site-BMC" in line
    assert "lower the learning rate" in line
    assert not out.exists()  # the first stage's checkpoint, model and log went with it
    # an --out that was an empty folder is left empty, not removed
    (tmp_path / "empty").mkdir()
    assert run(_train(prostate_dir, tmp_path / "empty", "--method", "pga-real")) == 2
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    nan_loss_in_stage_bmc()  # sane again: the same command into the same --out works
    assert run(_train(prostate_dir, out, "--method", "pga-real")) == 0
    assert (out / "metrics.json").is_file()


def test_a_divergence_under_overwrite_leaves_the_old_run_bit_identical(
    prostate_dir, tmp_path, capsys, monkeypatch
) -> None:
    import smg_learning.continual as continual

    out = tmp_path / "run"
    assert run(_train(prostate_dir, out, "--method", "finetune")) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = continual.make_step

    def nan_step(strategy, cfg, **kw):
        step = real(strategy, cfg, **kw)

        def wrapped(model, batch, ctx):
            out = step(model, batch, ctx)
            return {**out, "loss": out["loss"] * float("nan")}

        return wrapped if kw["stage"] == 1 else step  # after site-RUNMC wrote its files

    monkeypatch.setattr(continual, "make_step", nan_step)
    argv = [*_train(prostate_dir, out, "--method", "finetune"), "--overwrite", "--seed", "5"]
    assert run(argv) == 2
    assert "diverged" in error_line(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left


@pytest.mark.parametrize(
    "override, expected",
    [
        # the case: finite, loss ~1e12, once exit 0 with memorizability 0
        ("lr=1e6", "more than 10000 x its start"),
        ("smd.lr=1e6", "in stage smd-site-RUNMC; lower the learning rate (--set smd.lr=...)"),
        # the virtual losses blow up from the first step, so the Trainer's growth bound,
        # relative to the first loss, would never fire
        ("pga.inner_lr=1e6", "PGA's virtual step (pga.inner_lr=1e+06) gave l_gen"),
    ],
)
def test_a_large_finite_rate_diverges_in_the_segmenter_the_smd_and_the_pga_step(
    prostate_dir, tmp_path, capsys, override, expected
) -> None:
    out = tmp_path / "run"
    assert run([*_train(prostate_dir, out, "--method", "smg"), "--set", override]) == 2
    line = error_line(capsys)
    assert line.startswith("error: training: diverged: ") and expected in line, line
    assert not out.exists()


def test_the_virtual_step_check_passes_sane_steps_and_raises_on_every_blow_up() -> None:
    from smg_learning.strategies.pga_real import check_virtual_step

    class Acc:
        process_index, num_processes = 0, 1

    class Ctx:
        accelerator, step = Acc, 4

        class config:  # TrainConfig's default bound
            max_loss_growth = 1e4

    t = torch.tensor
    sane = {"l_cur": t(0.6), "l_mtr": t(0.6), "l_gen": t(7.8), "l_mem": t(2.8)}
    check_virtual_step(sane, Ctx, 100.0, "site-BMC")  # inner_lr 100: poor, not diverged
    check_virtual_step({"l_cur": t(0.6)}, Ctx, 1e6, "site-RUNMC")  # no virtual loss yet
    for bad in ({"l_gen": t(1.1e4)}, {"l_mem": t(float("nan"))}, {"l_gen": t(float("inf"))}):
        with pytest.raises(Diverged, match="step 5 in stage site-BMC"):
            check_virtual_step({**sane, **bad}, Ctx, 1e6, "site-BMC")
    check_virtual_step({**sane, "l_gen": t(1e4)}, Ctx, 1e3, "site-BMC")  # at the bound: kept
    # the bound scales with the losses at θ (at least 1)
    check_virtual_step({**sane, "l_cur": t(3.0), "l_gen": t(2.9e4)}, Ctx, 1.0, "site-BMC")
    Ctx.config.max_loss_growth = None  # only the non-finite check
    check_virtual_step({**sane, "l_gen": t(1e30)}, Ctx, 1.0, "site-BMC")


# ------------------------------------------------------------------------- input values
def _spoiled(prostate_dir, tmp_path, spoil):
    data = tmp_path / "data"
    shutil.copytree(prostate_dir, data)
    spoil(data / "BMC" / "Case01.nii.gz", data / "BMC" / "Case01_segmentation.nii.gz")
    return data


def _set_voxel(value):
    def spoil(image, mask):
        a = read_image(image).array.astype(np.float32)
        a[1, 3, 4] = value
        write_image(image, a, (3.0, 1.0, 1.0))

    return spoil


def _zero(image, mask):
    write_image(image, np.zeros_like(read_image(image).array), (3.0, 1.0, 1.0))


def _nan_mask(image, mask):
    m = read_image(mask).array.astype(np.float32)
    m[0, 0, 0] = np.nan
    write_image(mask, m, (3.0, 1.0, 1.0))


@pytest.mark.parametrize(
    "spoil, expected",
    [
        (_set_voxel(np.nan), "Case01.nii.gz: volume holds 1 NaN or infinite value(s)"),
        (_set_voxel(-np.inf), "Case01.nii.gz: volume holds 1 NaN or infinite value(s)"),
        (_zero, "Case01.nii.gz: volume is all zero"),
        (_nan_mask, "Case01_segmentation.nii.gz: mask holds 1 NaN or infinite value(s)"),
    ],
    ids=["nan voxel", "inf voxel", "all-zero volume", "nan in a float mask"],
)
def test_bad_values_are_refused_before_anything_is_written(
    prostate_dir, tmp_path, capsys, spoil, expected
) -> None:
    data = _spoiled(prostate_dir, tmp_path, spoil)
    out = tmp_path / "run"
    assert run(_train(data, out, "--method", "finetune")) == 2
    assert expected in error_line(capsys)
    assert not out.exists()


def test_a_float_mask_of_whole_labels_still_loads(prostate_dir, tmp_path) -> None:
    def float_mask(image, mask):
        write_image(mask, read_image(mask).array.astype(np.float32), (3.0, 1.0, 1.0))

    data = _spoiled(prostate_dir, tmp_path, float_mask)
    a = load_continual(data, run_preset("tiny"), ("RUNMC", "BMC"))
    b = load_continual(prostate_dir, run_preset("tiny"), ("RUNMC", "BMC"))
    assert torch.equal(a.parts["train"]["BMC"].masks, b.parts["train"]["BMC"].masks)


# ---------------------------------------------------------------------------------- resume
def _killed_in_stage_bmc(monkeypatch):
    import smg_learning.continual as continual

    real = continual.make_step

    def make_step(strategy, cfg, **kw):
        step = real(strategy, cfg, **kw)

        def wrapped(model, batch, ctx):
            if kw["stage"] == 1 and ctx.step == 3:
                raise KeyboardInterrupt  # a kill after the checkpoint of step 2
            return step(model, batch, ctx)

        return wrapped

    monkeypatch.setattr(continual, "make_step", make_step)
    return lambda: monkeypatch.setattr(continual, "make_step", real)


@pytest.mark.parametrize("interruption", ["kill", "short run"])
def test_metrics_after_a_resume_equal_an_uninterrupted_runs(
    prostate_dir, tmp_path, monkeypatch, interruption
) -> None:
    """Every value of ``metrics.json`` but the timings, ``align_share`` included (once
    the mean of the steps run after the resume only), and again after resuming the
    finished run (once without ``align_share``)."""
    argv = ["train", "--data", prostate_dir, "--method", "smg", "--sites", "RUNMC,BMC"]
    argv += ["--heldout", "I2CVB", "--set", "smd.train_steps=2", "--quiet"]
    argv += ["--checkpoint-every", "2"]
    full = ["--set", "steps_per_site=4"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run([*argv, *full, "--out", straight]) == 0
    if interruption == "kill":
        restore = _killed_in_stage_bmc(monkeypatch)
        assert run([*argv, *full, "--out", resumed]) == 130
        restore()
        assert not (resumed / "metrics.json").exists()
    else:
        assert run([*argv, "--set", "steps_per_site=2", "--out", resumed]) == 0
    assert run([*argv, *full, "--out", resumed, "--resume"]) == 0
    want = metrics_without_timings(straight)
    assert want["align_share"] is not None and None not in want["align_share_per_stage"]
    assert metrics_without_timings(resumed) == want
    # resuming the finished run changes nothing
    assert run([*argv, "--out", resumed, "--resume"]) == 0
    assert metrics_without_timings(resumed) == want
