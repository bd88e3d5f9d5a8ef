"""Manifests (every published split file), path resolution, image formats, bad inputs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from medcommon.errors import InputError
from medcommon.io import write_image
from pbbl_cxr.data import (
    DataOptions,
    Record,
    XrayDataset,
    load_image,
    load_split,
    read_manifest,
    read_split,
    split_files,
)

PUBLIC = Path(__file__).parent / "data" / "pbbl-public-csv"

# Group counts (label, bias) stated by the authors: GbP train 800/800 aligned + 100/100
# conflicting, valid 600 and test 1000 group-balanced; SbP 5000 aligned + 500/250/50
# conflicting per source at 90/95/99 %, valid 800 and test 1600 group-balanced.
_GBP = {
    "train.csv": {(0, 0): 800, (1, 1): 800, (0, 1): 100, (1, 0): 100},
    "valid.csv": {g: 150 for g in [(0, 0), (0, 1), (1, 0), (1, 1)]},
    "test.csv": {g: 250 for g in [(0, 0), (0, 1), (1, 0), (1, 1)]},
}


def _expected(case: str, name: str) -> dict[tuple[int, int], int]:
    if case.startswith("GbP"):
        return _GBP[name]
    conflicting = {"SbP-bias90": 500, "SbP-bias95": 250, "SbP-bias99": 50}[case]
    if name == "train_NIH.csv":
        return {(0, 0): 5000, (1, 0): conflicting}
    if name == "train_MIMIC.csv":
        return {(1, 1): 5000, (0, 1): conflicting}
    n = 200 if name == "valid.csv" else 400
    return {g: n for g in [(0, 0), (0, 1), (1, 0), (1, 1)]}


PUBLISHED = sorted(PUBLIC.glob("*/*.csv"))


def test_all_published_files_are_present():
    assert len(PUBLISHED) == 18  # 2 GbP cases x 3 + 3 SbP ratios x 4


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_published_csv_parses(path: Path):
    records = read_manifest(path, DataOptions())
    counts = Counter((r.label, r.bias) for r in records)
    assert dict(counts) == _expected(path.parent.name, path.name)
    first = str(records[0].path)
    assert first.endswith((".png", ".jpg")) and "\ufeff" not in first and "\r" not in first


def test_sbp_train_is_both_source_files_and_missing_images_are_named():
    folder = PUBLIC / "SbP-bias95"
    files = split_files(folder, "train")
    assert [f.name for f in files] == ["train_MIMIC.csv", "train_NIH.csv"]
    with pytest.raises(InputError) as err:
        read_split(folder, "train", DataOptions())
    # train_MIMIC.csv has a BOM and an unnamed index column: its first row is line 2.
    assert err.value.where == f"{folder / 'train_MIMIC.csv'}:2"
    assert err.value.problem.startswith("image not found: /research/dept8/msc/dyxu21/MIMIC/")


def _fake_images(records: list[Record]) -> None:
    for i, r in enumerate(records):
        r.path.parent.mkdir(parents=True, exist_ok=True)
        write_image(r.path, np.full((8, 8), 40 + (i % 5) * 40, np.uint8))


def test_path_map_remaps_the_authors_absolute_paths(tmp_path: Path):
    opts = DataOptions(path_map=(("/research/dept8/msc/dyxu21", str(tmp_path)),), image_size=8)
    folder = PUBLIC / "SbP-bias90"
    records = read_manifest(folder / "valid.csv", opts)
    assert str(records[0].path) == f"{tmp_path}/NIH_JPG/useful_images/00027428_000.jpg"
    _fake_images(records)
    ds = load_split(folder, "valid", opts)
    assert len(ds) == 800 and ds.images.shape == (800, 1, 8, 8)
    assert ds.labels.sum().item() == 400 and ds.bias.sum().item() == 400


def test_image_root_resolves_relative_gbp_paths(tmp_path: Path):
    opts = DataOptions(image_root=tmp_path, image_size=8)
    records = read_manifest(PUBLIC / "GbP-case1" / "valid.csv", opts)
    assert records[0].path == tmp_path / "dataset" / "GbP" / "00015214_010.png"
    _fake_images(records)
    assert len(load_split(PUBLIC / "GbP-case1", "valid", opts)) == 600


def test_absolute_missing_path_is_found_by_name_under_image_root(tmp_path: Path):
    opts = DataOptions(image_root=tmp_path)
    records = read_manifest(PUBLIC / "SbP-bias99" / "test.csv", opts)
    assert records[0].path == tmp_path / "00000218_007.jpg"


def _write_manifest(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_custom_columns_and_unknown_header(tmp_path: Path):
    write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    p = _write_manifest(tmp_path, "train.csv", "path,finding,site\na.png,1,0\n")
    with pytest.raises(InputError) as err:
        read_manifest(p, DataOptions())
    assert "name it with --label-column" in err.value.problem
    with pytest.raises(InputError, match="missing column 'path'"):
        read_manifest(
            _write_manifest(tmp_path / "x", "t.csv", "img,label\na.png,1\n"), DataOptions()
        )
    p2 = _write_manifest(tmp_path / "y", "train.csv", "path,finding,site\n../a.png,1,0\n")
    (r,) = read_manifest(p2, DataOptions(label_column="finding", bias_column="site"))
    assert (r.label, r.bias) == (1, 0) and r.path.resolve() == (tmp_path / "a.png").resolve()
    with pytest.raises(InputError) as err:
        read_manifest(p2, DataOptions(label_column="finding", bias_column="sex"))
    assert err.value.problem == "missing column 'sex'; columns are path, finding, site"


def test_label_outside_label_set_names_the_row(tmp_path: Path):
    p = _write_manifest(tmp_path, "train.csv", "path,label,bias\na.png,1,0\nb.png,2,1\n")
    with pytest.raises(InputError) as err:
        read_manifest(p, DataOptions())
    assert err.value.where == f"{p}:3"
    assert err.value.problem == "label '2' is outside the label set {0, 1}"


def test_empty_split(tmp_path: Path):
    _write_manifest(tmp_path, "valid.csv", "path,label,bias\n")
    with pytest.raises(InputError) as err:
        read_split(tmp_path, "valid", DataOptions())
    assert err.value.problem == "the valid split is empty (no rows)"


def test_truncated_and_unreadable_images_name_the_row(tmp_path: Path):
    write_image(tmp_path / "ok.png", (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    for name in ("cut.png", "junk.png"):
        rec = Record(tmp_path / name, 0, 0, "train.csv:7")
        with pytest.raises(InputError) as err:
            load_image(rec, 16)
        assert err.value.where == "train.csv:7"
        assert str(tmp_path / name) in err.value.problem


def test_png16_jpeg_and_dicom_load_to_unit_range(tmp_path: Path):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    write_image(tmp_path / "a16.png", (ramp * 65535).astype(np.uint16))
    write_image(tmp_path / "a.jpg", (ramp * 255).astype(np.uint8))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.Rows, ds.Columns = "DX", 32, 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (ramp * 4095).astype(np.uint16).tobytes()
    pydicom.dcmwrite(tmp_path / "a.dcm", ds, enforce_file_format=True)
    for name in ("a16.png", "a.jpg", "a.dcm"):
        t = load_image(Record(tmp_path / name, 0, 0, name), 16)
        assert t.shape == (1, 16, 16)
        assert t.min().item() == pytest.approx(0.0, abs=0.03)
        assert t.max().item() == pytest.approx(1.0, abs=0.03)
        assert t[0, 0, 0] < t[0, -1, -1]  # the ramp survives decoding and resizing


def test_synthetic_layouts(gbp_tiny: Path, sbp_tiny: Path):
    assert {p.name for p in gbp_tiny.glob("*.csv")} == {"train.csv", "valid.csv", "test.csv"}
    assert (gbp_tiny / "train.csv").read_text().splitlines()[0] == "path,pneumothorax,gender"
    assert {p.name for p in sbp_tiny.glob("*.csv")} == {
        "train_NIH.csv",
        "train_MIMIC.csv",
        "valid.csv",
        "test.csv",
    }
    opts = DataOptions(image_size=24)
    train = load_split(sbp_tiny, "train", opts)
    aligned = (train.labels == train.bias).float().mean().item()
    assert aligned == pytest.approx(0.95, abs=0.02)
    test = load_split(gbp_tiny, "test", opts)
    groups = Counter(zip(test.labels.tolist(), test.bias.tolist()))
    assert set(groups.values()) == {8}
    item = train[3]
    assert item["image"].shape == (1, 24, 24) and item["image"].dtype == torch.float32
    assert isinstance(train.with_bias_hat(train.bias), XrayDataset)
