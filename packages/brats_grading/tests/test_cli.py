"""Two-step smoke runs of every command, and the bad-input contract (exit 2, one line)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from brats_grading import __version__
from brats_grading.cli import main
from brats_grading.methods import METHODS
from medcommon.cli import run_main
from medcommon.io import read_image, write_image

FAST = ["--set", "steps=2", "--set", "primary_steps=2", "--set", "batch_size=2", "--quiet"]


def run(argv, capsys):
    code = run_main(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and __version__ in out


@pytest.mark.parametrize("layout", ["2019", "2020"])
def test_synth_writes_the_layout(tmp_path, capsys, layout):
    code, _, _ = run(
        ["synth", tmp_path / "d", "--preset", "tiny", "--layout", layout, "--quiet"], capsys
    )
    assert code == 0
    if layout == "2020":
        assert (tmp_path / "d" / "name_mapping.csv").is_file()
        case = tmp_path / "d" / "BraTS20_Training_001"
    else:
        case = next((tmp_path / "d" / "HGG").iterdir())
    for mod in ("t1", "t1ce", "t2", "flair", "seg"):
        assert (case / f"{case.name}_{mod}.nii.gz").is_file()


def test_synth_grade_shows_in_t1ce(data19):
    """HGG rims enhance: the mean T1ce intensity on the seg rim/core is higher for HGG."""
    from brats_grading.data import discover

    _, cases = discover(data19)
    contrast = {0: [], 1: []}
    for c in cases:
        t1ce = read_image(c.files["t1ce"]).array.astype(float)
        seg = read_image(c.files["t1ce"].with_name(f"{c.name}_seg.nii.gz")).array
        brain = t1ce[t1ce > 0].mean()
        ring = np.zeros_like(seg, bool)
        from scipy import ndimage

        ring = ndimage.binary_dilation(seg == 1) & (seg != 1)
        contrast[c.label].append(t1ce[ring].mean() / brain)
    assert np.mean(contrast[1]) > np.mean(contrast[0]) + 0.15


@pytest.mark.parametrize("method", METHODS.names())
def test_train_two_steps_every_method(tmp_path, capsys, data19, method):
    code, _out, err = run(
        ["train", "--data", data19, "--out", tmp_path / "run", "--method", method, *FAST], capsys
    )
    assert code == 0, err
    run_dir = tmp_path / "run"
    for name in (
        "config.json",
        "split.json",
        "log.jsonl",
        "metrics.json",
        "model/model.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoint").is_dir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"accuracy", "auc", "sensitivity", "specificity", "f1"}
    split = json.loads((run_dir / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"])
    if method.startswith("cmg"):
        stages = {json.loads(line).get("stage") for line in (run_dir / "log.jsonl").open()}
        assert stages == {"primary", "guided"}
        # reliability fusion: weights fitted on an inner split of the training fold only
        fusion = metrics["fusion"]
        assert fusion["n_inner"] + fusion["n_val"] == len(split["train"])
        saved = json.loads((run_dir / "model" / "config.json").read_text())
        assert saved["branch_weights"] == pytest.approx(
            [fusion["weights"][m] for m in saved["modalities"]] if fusion["weights"] else []
        )


def test_train_evaluate_predict_resume(tmp_path, capsys, data20):
    run_dir = tmp_path / "run"
    argv = [
        "train",
        "--data",
        data20,
        "--out",
        run_dir,
        "--method",
        "cmg",
        "--folds",
        "2",
        "--fold",
        "1",
        *FAST,
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads((run_dir / "split.json").read_text())["fold"] == 1
    code, out, err = run(
        ["evaluate", "--run", run_dir, "--data", data20, "--split", "test"], capsys
    )
    assert code == 0, err
    ev = json.loads((run_dir / "eval-test.json").read_text())
    train_m = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert math.isfinite(ev["auc"])
    for key in ("accuracy", "auc", "sensitivity", "specificity", "f1"):
        assert math.isfinite(ev[key]), key
        assert ev[key] == pytest.approx(train_m[key], rel=1e-6, abs=1e-9), key
    cases = sorted(p for p in data20.iterdir() if p.is_dir())[:2]
    code, out, err = run(["predict", "--run", run_dir, *cases], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(cases[0].name)
    p = float(lines[0].split("p_hgg=")[1].split()[0])
    assert 0.0 <= p <= 1.0
    # a finished run resumes to the same weights
    before = (run_dir / "model" / "model.safetensors").read_bytes()
    code, _, err = run([*argv, "--resume"], capsys)
    assert code == 0, err
    assert (run_dir / "model" / "model.safetensors").read_bytes() == before


def test_resume_after_interruption_matches_uninterrupted(tmp_path, capsys, data19, monkeypatch):
    import brats_grading.methods as methods

    base = ["--data", data19, "--method", "cmg", "--quiet", "--set", "batch_size=2",
            "--set", "steps=4", "--set", "primary_steps=4", "--checkpoint-every", "2"]  # fmt: skip
    full = tmp_path / "full"
    assert run(["train", *base, "--out", full], capsys)[0] == 0

    real, calls = methods.guidance_loss, {"n": 0}

    def crash_on_third_guided_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated kill")
        return real(*args, **kwargs)

    part = tmp_path / "part"
    monkeypatch.setattr(methods, "guidance_loss", crash_on_third_guided_step)
    assert run(["train", *base, "--out", part], capsys)[0] == 1  # internal error mid-stage 2
    monkeypatch.setattr(methods, "guidance_loss", real)
    assert not (part / "model").exists()
    assert run(["train", *base, "--out", part, "--resume"], capsys)[0] == 0
    from safetensors.torch import load_file

    a = load_file(full / "model" / "model.safetensors")
    b = load_file(part / "model" / "model.safetensors")
    for k in a:
        assert np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6), k


def test_benchmark_tiny(tmp_path, capsys):
    out = tmp_path / "bench"
    code, _, err = run(
        ["benchmark", "--out", out, "--preset", "tiny", "--seeds", "0", "--quiet"], capsys
    )
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["rows"]} == set(METHODS.names())
    assert len(res["rows"]) == len(METHODS.names()) * 2  # 2 folds x 1 seed
    assert "throughput_ratio_cmg_over_early_fusion" in res["extra"]
    assert (out / "report.md").is_file() and (out / "auc.png").is_file()
    assert (out / "attention.png").is_file() and (out / "paired.png").is_file()


# ---------------------------------------------------------------- bad inputs


def _copy(data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(data, dst)
    return dst


def _first_case(data: Path) -> Path:
    return sorted((data / "HGG").iterdir())[0]


def _expect_error(capsys, tmp_path, data, *needles):
    out = tmp_path / "run"
    code, _, err = run(["train", "--data", data, "--out", out, "--quiet", *FAST], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists(), "bad input must leave nothing behind"
    return lines[0]


def test_missing_modality(tmp_path, capsys, data19):
    data = _copy(data19, tmp_path)
    case = _first_case(data)
    (case / f"{case.name}_flair.nii.gz").unlink()
    line = _expect_error(capsys, tmp_path, data, case.name, f"{case.name}_flair.nii.gz")
    assert "missing" in line


def test_modalities_of_different_shapes(tmp_path, capsys, data19):
    data = _copy(data19, tmp_path)
    case = _first_case(data)
    write_image(case / f"{case.name}_t2.nii.gz", np.ones((5, 6, 7), np.int16))
    _expect_error(capsys, tmp_path, data, case.name, f"{case.name}_t2.nii.gz", "shape")


@pytest.mark.parametrize("kind", ["nan", "zero"])
def test_nan_or_all_zero_volume(tmp_path, capsys, data19, kind):
    data = _copy(data19, tmp_path)
    case = _first_case(data)
    path = case / f"{case.name}_t1ce.nii.gz"
    arr = read_image(path).array.astype(np.float32)
    if kind == "nan":
        arr[0, 0, 0] = np.nan
    else:
        arr[:] = 0
    write_image(path, arr)
    line = _expect_error(capsys, tmp_path, data, case.name, f"{case.name}_t1ce.nii.gz")
    assert ("NaN" in line) if kind == "nan" else ("all zero" in line)


def test_unreadable_file(tmp_path, capsys, data19):
    data = _copy(data19, tmp_path)
    case = _first_case(data)
    (case / f"{case.name}_t1.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
    _expect_error(capsys, tmp_path, data, f"{case.name}_t1.nii.gz")


def test_2020_without_name_mapping(tmp_path, capsys, data20):
    data = _copy(data20, tmp_path)
    (data / "name_mapping.csv").unlink()
    _expect_error(capsys, tmp_path, data, "name_mapping.csv")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, tmp_path, tmp_path / "empty", "empty folder")


def test_unknown_method_and_bad_fold(tmp_path, capsys, data19):
    code, _, err = run(
        ["train", "--data", data19, "--out", tmp_path / "r", "--method", "nope"], capsys
    )
    assert code == 2 and "unknown method 'nope'" in err
    code, _, err = run(
        ["train", "--data", data19, "--out", tmp_path / "r", "--folds", "3", "--fold", "5"], capsys
    )
    assert code == 2 and err.startswith("error: fold:")
    assert not (tmp_path / "r").exists()
