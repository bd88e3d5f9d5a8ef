"""``smg-learning predict``: masks with the input's geometry, scored as ``evaluate`` scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcommon.cli import run_main
from medcommon.io import read_image, write_image
from medcommon.metrics import dice
from smg_learning.cli import main


def run(argv: list) -> int:
    return run_main(main, [str(a) for a in argv])


@pytest.fixture(scope="module")
def native_run(tmp_path_factory, prostate_dir):
    """A finetune run at the volumes' own in-plane size (24 px), I2CVB held out."""
    out = tmp_path_factory.mktemp("predict") / "run"
    argv = ["train", "--data", prostate_dir, "--out", out, "--method", "finetune", "--quiet"]
    argv += ["--sites", "RUNMC,BMC", "--heldout", "I2CVB"]
    assert run([*argv, "--set", "image_size=24", "--set", "steps_per_site=20"]) == 0
    return out


def test_predicted_masks_score_what_evaluate_reports(native_run, prostate_dir, capsys) -> None:
    """At the segmenter's own size the mask files are the slices ``evaluate`` scores: the
    mean Dice of the test cases' mask files equals the run's last-stage Dice, per site."""
    assert run(["evaluate", "--run", native_run, "--data", prostate_dir, "--quiet"]) == 0
    ev = json.loads((native_run / "eval-test.json").read_text())
    split = json.loads((native_run / "split.json").read_text())
    capsys.readouterr()
    assert run(["predict", "--run", native_run, prostate_dir, "--quiet"]) == 2
    assert "same output name as" in capsys.readouterr().err  # Case00 of every site
    for col, site in enumerate(ev["columns"]):
        out = native_run / "predictions"  # the default --out
        assert run(["predict", "--run", native_run, prostate_dir / site, "--quiet"]) == 0
        assert len(list(out.iterdir())) == 4  # the site's cases; no *_segmentation input
        dices = []
        for case in split[site]["test"]:
            pred = read_image(out / f"{case}_mask.nii.gz").array
            truth = read_image(prostate_dir / site / f"{case}_segmentation.nii.gz").array
            assert pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1}
            dices.append(dice(pred == 1, truth == 1))
        assert np.mean(dices) == pytest.approx(ev["dice_matrix"][-1][col], abs=1e-9), site
    # the masks overlap the truth somewhere (20 steps of a tiny U-Net: far from good)
    assert max(max(row) for row in ev["dice_matrix"]) > 0.05


def test_masks_keep_the_input_geometry(native_run, prostate_dir, tmp_path) -> None:
    """A non-square volume with its own spacing, origin and oblique direction (.mha and
    .nii.gz): the mask has its shape and geometry, and is binary."""
    import SimpleITK as sitk

    src = sitk.ReadImage(str(prostate_dir / "BMC" / "Case01.nii.gz"))
    arr = sitk.GetArrayFromImage(src)  # (z, y, x)
    arr = np.concatenate([arr, arr[:, :16]], axis=1)[:, :, :20]  # (4, 40, 20)
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("oblique.mha", "sub/oblique2.nii.gz"):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.6, 0.7, 2.5))
        img.SetOrigin((12.5, -3.0, 7.25))
        img.SetDirection(direction)
        (inputs / name).parent.mkdir(exist_ok=True)
        sitk.WriteImage(img, str(inputs / name))
    out = tmp_path / "masks"
    assert run(["predict", "--run", native_run, inputs, "--out", out, "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["oblique2_mask.nii.gz", "oblique_mask.nii.gz"]
    for p in out.iterdir():
        m = sitk.ReadImage(str(p))
        assert m.GetSize() == (20, 40, 4)
        np.testing.assert_allclose(m.GetSpacing(), (0.6, 0.7, 2.5), rtol=1e-6)
        np.testing.assert_allclose(m.GetOrigin(), (12.5, -3.0, 7.25), rtol=1e-6)
        np.testing.assert_allclose(m.GetDirection(), direction, atol=1e-6)
        assert set(np.unique(sitk.GetArrayFromImage(m))) <= {0, 1}


def test_bad_inputs_write_nothing(native_run, prostate_dir, tmp_path, capsys) -> None:
    good = prostate_dir / "BMC" / "Case00.nii.gz"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a volume" * 20)
    cut = tmp_path / "cut.nii"
    write_image(cut, read_image(good).array, (3.0, 1.0, 1.0))
    cut.write_bytes(cut.read_bytes()[:600])  # a truncated volume
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG")
    out = tmp_path / "out"
    for paths, expected in (
        ([good, broken], "broken.nii.gz"),
        ([good, tmp_path / "missing.nii.gz"], "missing.nii.gz: file or folder not found"),
        ([png], "photo.png: not a prostate input"),
        ([tmp_path / "empty"], "empty"),
    ):
        (tmp_path / "empty").mkdir(exist_ok=True)
        capsys.readouterr()
        assert run(["predict", "--run", native_run, *paths, "--out", out]) == 2
        lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
        assert not out.exists()
    capsys.readouterr()
    assert run(["predict", "--run", tmp_path, good]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_predicted_classes_are_written_as_each_layouts_own_mask_values():
    """prostate 0/1, fundus 0/255, DoFE 255 background / 128 rim / 0 cup."""
    from smg_learning.config import run_preset
    from smg_learning.data import mask_spec
    from smg_learning.predict import class_values

    cfg = run_preset("tiny")
    assert class_values(mask_spec(cfg, "prostate")) == [0, 1]
    assert class_values(mask_spec(cfg, "fundus")) == [0, 255]
    assert class_values(mask_spec(cfg, "dofe")) == [255, 128, 0]
