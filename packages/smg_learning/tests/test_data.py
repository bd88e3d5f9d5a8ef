"""Loaders: both layouts, normalisation, slices, per-site patient splits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medcommon.errors import InputError
from medcommon.io import read_image
from smg_learning.config import run_preset
from smg_learning.data import discover, load_continual, split_site


def test_discover_prostate_layout(prostate_dir) -> None:
    ms = discover(prostate_dir)
    assert ms.task == "prostate"
    assert list(ms.sites) == ["RUNMC", "BMC", "I2CVB"]  # the public order, not alphabetical
    case = ms.sites["BMC"][0]
    assert case.case_id == "Case00" and case.mask.name == "Case00_segmentation.nii.gz"


def test_prostate_slices_are_minmax_normalised_and_resized(prostate_dir) -> None:
    cfg = run_preset("tiny")
    data = load_continual(prostate_dir, cfg, ("RUNMC", "BMC"), ("I2CVB",))
    assert data.columns == ["RUNMC", "BMC", "I2CVB"]
    part = data.parts["train"]["RUNMC"]
    n_cases = len(data.split["RUNMC"]["train"])
    assert part.images.shape == (n_cases * 4, 1, cfg.image_size, cfg.image_size)
    assert part.masks.shape == (n_cases * 4, 1, cfg.image_size, cfg.image_size)
    assert set(part.masks.unique().tolist()) <= {0, 1}
    # min-max per volume: each case's slices span [0, 1] (up to the resize)
    vol = part.images[part.case_slices(0)]
    assert vol.min().item() == pytest.approx(0.0, abs=0.05)
    assert vol.max().item() == pytest.approx(1.0, abs=0.15)
    # the raw mask resized by nearest neighbour keeps its foreground share
    raw = read_image(
        prostate_dir / "RUNMC" / f"{data.split['RUNMC']['train'][0]}_segmentation.nii.gz"
    ).array
    # independent nearest-neighbour resize: source index floor(dst * in / out) per axis
    _, h, w = raw.shape
    size = cfg.image_size
    rows = np.minimum(np.floor(np.arange(size) * (h / size)).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(size) * (w / size)).astype(int), w - 1)
    want = (raw[:, rows][:, :, cols] > 0).astype(np.int64)
    assert (h, w) != (size, size)  # a real resize
    np.testing.assert_array_equal(part.masks[part.case_slices(0), 0].numpy(), want)
    assert 0 < want.mean() < 0.5  # non-trivial foreground
    assert part.masks[part.case_slices(0)].float().mean().item() == pytest.approx(
        raw.mean(), rel=0.1
    )


def test_adjacent_slices_as_channels(prostate_dir) -> None:
    cfg = dataclasses.replace(run_preset("tiny"), adjacent_slices=3)
    data = load_continual(prostate_dir, cfg, ("RUNMC",))
    part = data.parts["train"]["RUNMC"]
    assert data.channels == 3
    idx = part.case_slices(0)
    # channel 1 is the slice itself, channel 0 the previous one (clamped at the first slice)
    torch.testing.assert_close(part.images[idx[1], 0], part.images[idx[0], 1])
    torch.testing.assert_close(part.images[idx[0], 0], part.images[idx[0], 1])


def test_fundus_layout(fundus_dir) -> None:
    cfg = run_preset("tiny")
    data = load_continual(fundus_dir, cfg, ("Domain1", "Domain2"), ("Domain3",))
    assert data.task == "fundus" and data.channels == 3
    part = data.parts["test"]["Domain3"]
    assert part.images.shape[1:] == (3, cfg.image_size, cfg.image_size)
    assert len(part) == len(data.split["Domain3"]["test"])  # one slice per image
    assert 0 < part.masks.float().mean() < 0.5


def test_split_is_patient_level_and_deterministic(prostate_dir) -> None:
    cases = discover(prostate_dir).sites["BMC"]
    a, b = split_site(cases, 0.3, seed=0), split_site(cases, 0.3, seed=0)
    assert a == b
    assert not set(a["train"]) & set(a["test"])
    assert sorted(a["train"] + a["test"]) == [c.case_id for c in cases]
    assert len(a["test"]) == 1  # round(4 * 0.3)


def test_saved_split_is_reused(prostate_dir) -> None:
    cfg = run_preset("tiny")
    split = {
        s: {"train": ["Case00", "Case01", "Case02"], "test": ["Case03"]} for s in ("RUNMC", "BMC")
    }
    data = load_continual(prostate_dir, cfg, ("RUNMC", "BMC"), split=split)
    assert data.split["BMC"]["test"] == ["Case03"]
    assert len(data.parts["test"]["BMC"]) == 4


@pytest.mark.parametrize(
    ("sites", "heldout", "where", "text"),
    [
        (("RUNMC", "XYZ"), (), "--sites", "unknown site 'XYZ'"),
        (("RUNMC", "BMC"), ("BMC",), "--heldout", "'BMC' is also in --sites"),
        (("RUNMC", "RUNMC"), (), "--sites", "listed twice"),
    ],
)
def test_bad_site_lists(prostate_dir, sites, heldout, where, text) -> None:
    with pytest.raises(InputError) as exc:
        load_continual(prostate_dir, run_preset("tiny"), sites, heldout)
    assert exc.value.where == where and text in exc.value.problem


def test_minmax_constant_volume_is_zero(tmp_path) -> None:
    from smg_learning.data import _minmax

    assert np.all(_minmax(np.full((2, 3), 7.0)) == 0)


def test_layouts_are_not_mixed_and_a_dofe_site_without_test_is_split_by_case(tmp_path) -> None:
    import shutil

    from smg_learning.synth import generate, write_dofe_release

    dofe = write_dofe_release(tmp_path / "dofe", domains=2, train=4, test=1)
    shutil.rmtree(dofe / "Domain2" / "test")  # a domain shipped without its test part
    ms = discover(dofe)
    assert ms.layout == "dofe" and {c.part for c in ms.sites["Domain2"]} == {"train"}
    split = split_site(ms.sites["Domain2"], 0.5, seed=0)
    assert len(split["test"]) == 2 and not set(split["train"]) & set(split["test"])
    assert split_site(ms.sites["Domain1"], 0.5, seed=0)["test"] == ["test/d1_test_000"]

    mixed = tmp_path / "mixed"
    generate(mixed, "fundus", "tiny", num_sites=1)
    shutil.copytree(dofe / "Domain2", mixed / "Domain2")
    with pytest.raises(InputError, match="mixes the dofe and fundus layouts"):
        discover(mixed)
