"""The released layouts as shipped: tiny replicas load and train with the default settings.

Prostate: the public six-site set, where RUNMC and BMC masks also carry label 2 and
mask files are ``_segmentation`` or ``_Segmentation``. Fundus: the public DoFE layout
``DomainK/{train,test}/ROIs/{image,mask}`` with 0 = cup, 128 = disc rim, 255 = background,
its official split, and disc and cup as two structures scored separately.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medcommon.errors import InputError
from medcommon.io import read_image
from smg_learning.config import PROSTATE_SITES, run_preset
from smg_learning.continual import train_continual
from smg_learning.data import SiteSlices, discover, load_continual
from smg_learning.evaluate import evaluate_site, summarize
from smg_learning.replay import resize_pairs
from smg_learning.synth import write_dofe_release, write_prostate_release


@pytest.fixture(scope="module")
def prostate_release(tmp_path_factory):
    # 16 px = the tiny preset's image_size: slices are compared with the raw masks as is
    return write_prostate_release(tmp_path_factory.mktemp("rel") / "prostate", size=16)


@pytest.fixture(scope="module")
def dofe_release(tmp_path_factory):
    return write_dofe_release(tmp_path_factory.mktemp("rel") / "dofe", size=32)


def test_prostate_release_is_discovered_with_both_mask_names(prostate_release) -> None:
    ms = discover(prostate_release)
    assert ms.task == "prostate" and list(ms.sites) == list(PROSTATE_SITES)
    assert ms.sites["RUNMC"][0].mask.name == "Case00_segmentation.nii.gz"
    assert ms.sites["UCL"][0].mask.name == "Case00_Segmentation.nii.gz"
    assert [c.case_id for c in ms.sites["UCL"]] == ["Case00", "Case01", "Case02"]


def test_prostate_release_label_2_is_gland_by_default(prostate_release) -> None:
    cfg = run_preset("tiny")  # no label settings
    data = load_continual(prostate_release, cfg, ("RUNMC", "BMC", "UCL"))
    assert data.structures == ("prostate",)
    for site in ("RUNMC", "UCL"):
        part = data.parts["train"][site]
        case = data.split[site]["train"][0]
        suffix = "_segmentation" if site == "RUNMC" else "_Segmentation"
        raw = read_image(prostate_release / site / f"{case}{suffix}.nii.gz").array
        got = part.masks[part.case_slices(0), 0].numpy()
        np.testing.assert_array_equal(got, (raw != 0).astype(np.int64))
    raw = read_image(prostate_release / "RUNMC" / "Case00_segmentation.nii.gz").array
    assert (raw == 2).any() and (raw == 1).any()  # the replica has the quirk

    # configurable: only label 1, or declared labels that reject label 2
    only1 = load_continual(
        prostate_release, dataclasses.replace(cfg, foreground_labels=(1,)), ("RUNMC",)
    )
    case = only1.split["RUNMC"]["train"][0]
    raw = read_image(prostate_release / "RUNMC" / f"{case}_segmentation.nii.gz").array
    part = only1.parts["train"]["RUNMC"]
    np.testing.assert_array_equal(part.masks[part.case_slices(0), 0].numpy(), raw == 1)
    with pytest.raises(InputError, match=r"labels \[2\] not among the declared \[0, 1\]"):
        load_continual(prostate_release, dataclasses.replace(cfg, mask_labels=(0, 1)), ("BMC",))


def test_dofe_release_is_fundus_with_its_official_split(dofe_release) -> None:
    ms = discover(dofe_release)
    assert (ms.task, ms.layout) == ("fundus", "dofe")
    assert list(ms.sites) == ["Domain1", "Domain2"]
    for seed in (0, 1):  # the release's split, whatever the split settings
        cfg = dataclasses.replace(run_preset("tiny"), split_seed=seed, test_fraction=0.5)
        data = load_continual(dofe_release, cfg)
        assert data.split["Domain2"] == {
            "train": [f"train/d2_train_{i:03d}" for i in range(3)],
            "test": [f"test/d2_test_{i:03d}" for i in range(2)],
        }


def test_dofe_masks_become_disc_and_cup(dofe_release) -> None:
    cfg = dataclasses.replace(run_preset("tiny"), image_size=32)  # the replica's size: no resize
    data = load_continual(dofe_release, cfg)
    assert data.task == "fundus" and data.channels == 3
    assert data.structures == ("disc", "cup")
    part = data.parts["test"]["Domain1"]
    raw = read_image(dofe_release / "Domain1" / "test" / "ROIs" / "mask" / "d1_test_001.png").array
    label = part.masks[1, 0].numpy()
    np.testing.assert_array_equal(label > 0, raw < 255)  # disc: cup included
    np.testing.assert_array_equal(label > 1, raw == 0)  # cup
    assert (label == 2).any() and (label == 1).any()


def _site(masks: torch.Tensor) -> SiteSlices:
    n = len(masks)
    return SiteSlices("S", [f"c{i}" for i in range(n)], torch.rand(n, 1, 8, 8), masks, np.arange(n))


class _Fixed(torch.nn.Module):
    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.labels = labels
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.labels


def test_dice_per_structure_by_hand() -> None:
    truth = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    truth[0, 0, 1:7, 1:7] = 1  # disc: 36 px
    truth[0, 0, 3:5, 3:5] = 2  # cup: 4 px
    pred = torch.zeros(1, 8, 8, dtype=torch.long)
    pred[0, 1:7, 1:7] = 1  # the disc exactly, cup missed
    pred[0, 3:5, 3:4] = 2  # half of the cup (2 of 4 px)
    got = evaluate_site(_Fixed(pred), _site(truth), structures=("disc", "cup"))
    assert got["dice/disc"] == pytest.approx(1.0)
    assert got["dice/cup"] == pytest.approx(2 * 2 / (2 + 4))
    assert got["dice"] == pytest.approx((1.0 + 4 / 6) / 2)
    # one structure: the binary Dice of label > 0, as before
    one = evaluate_site(_Fixed(pred), _site(truth))
    assert set(one) == {"dice", "hd95"} and one["dice"] == pytest.approx(1.0)

    rows = [
        {"dice/A": 0.5, "hd95/A": 1.0, "dice/disc/A": 0.8, "hd95/disc/A": 1.0}
        | {"dice/cup/A": 0.2, "hd95/cup/A": 1.0},
        {"dice/A": 0.6, "hd95/A": 2.0, "dice/disc/A": 0.9, "hd95/disc/A": 2.0}
        | {"dice/cup/A": 0.3, "hd95/cup/A": 2.0},
    ]
    rows = [r | {k.replace("/A", "/B"): v for k, v in r.items()} for r in rows]
    out = summarize(rows, ["A", "B"], ["A", "B"])
    assert out["dice_matrix"] == [[0.5, 0.5], [0.6, 0.6]]
    assert out["by_structure"]["cup"]["dice_matrix"] == [[0.2, 0.2], [0.3, 0.3]]
    assert out["by_structure"]["disc"]["memorizability"] == pytest.approx(0.9)
    assert "by_structure" not in summarize(
        [{k: v for k, v in r.items() if k.count("/") == 1} for r in rows], ["A", "B"], ["A", "B"]
    )


def test_label_maps_resize_per_structure() -> None:
    m = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    m[0, 0, 0:8, 0:4] = 1
    m[0, 0, 0:4, 0:2] = 2
    _, small = resize_pairs(torch.rand(1, 1, 8, 8), m, 4)
    want = torch.zeros(4, 4, dtype=torch.long)
    want[:, :2] = 1
    want[:2, :1] = 2
    torch.testing.assert_close(small[0, 0], want)


@pytest.mark.parametrize("method", ["finetune", "smd-replay"])
def test_dofe_replica_trains_with_defaults(dofe_release, method) -> None:
    cfg = run_preset("tiny")
    data = load_continual(dofe_release, cfg, ("Domain1", "Domain2"))
    out = train_continual(data, cfg, method, None, seed=0)
    assert out["_model"].config.out_channels == 3  # background, disc rim, cup
    assert set(out["by_structure"]) == {"disc", "cup"}
    for entry in out["by_structure"].values():
        assert np.asarray(entry["dice_matrix"]).shape == (2, 2)
    d, c = (np.asarray(out["by_structure"][s]["dice_matrix"]) for s in ("disc", "cup"))
    np.testing.assert_allclose(out["dice_matrix"], (d + c) / 2)
    if method == "smd-replay":
        smd = out["_smd"]
        assert smd.config.mask_channels == 2
        _, masks = smd.sample(torch.tensor([0, 1]), steps=2)
        assert masks.shape == (2, 1, 16, 16) and int(masks.max()) <= 2


def test_prostate_replica_trains_with_defaults(prostate_release) -> None:
    cfg = run_preset("tiny")
    data = load_continual(prostate_release, cfg, ("RUNMC", "BMC"), ("HK",))
    out = train_continual(data, cfg, "replay-real", None, seed=0)
    assert out["_model"].config.out_channels == 2
    assert "by_structure" not in out
    assert np.asarray(out["dice_matrix"]).shape == (2, 3)
    assert all(0 <= v <= 1 for row in out["dice_matrix"] for v in row)
