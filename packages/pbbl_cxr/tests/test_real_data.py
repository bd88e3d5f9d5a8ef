"""Real data layouts: NIH's nested image folders, the published CSVs' names mapped to the
files a user has, and ``build-splits`` on the real NIH ``Data_Entry_2017`` metadata."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medcommon.cli import run_main
from medcommon.errors import InputError
from medcommon.io import write_image
from pbbl_cxr.cli import main
from pbbl_cxr.data import DataOptions, load_split, read_manifest, resolve_image_path

PUBLIC = Path(__file__).parent / "data" / "pbbl-public-csv"
AUTHORS = "/research/dept8/msc/dyxu21"


def _value(name: str) -> int:
    """A gray level that identifies the file (by its stem), so a wrong match shows."""
    return 10 + zlib.crc32(Path(name).stem.encode()) % 230


def _nih_tree(root: Path, names: list[str], suffix: str = ".png") -> None:
    """NIH ChestX-ray14 as unpacked: images_001/images/ ... images_012/images/."""
    for i, name in enumerate(sorted(names)):
        folder = root / f"images_{1 + i % 12:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        write_image(folder / (Path(name).stem + suffix), np.full((8, 8), _value(name), np.uint8))


def _check_pixels(ds, opts_paths: list[str]) -> None:
    expected = np.array([_value(p) for p in opts_paths]) / 255.0
    got = ds.images[:, 0, 0, 0].float().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_gbp_csv_on_nested_nih_folders(tmp_path: Path):
    rows = read_manifest(PUBLIC / "GbP-case1" / "valid.csv", DataOptions())
    names = [r.path.name for r in rows]  # ./dataset/GbP/<name>.png
    _nih_tree(tmp_path / "nih", names)
    opts = DataOptions(image_root=tmp_path / "nih", image_size=8)
    ds = load_split(PUBLIC / "GbP-case1", "valid", opts)
    assert len(ds) == 600
    assert all("/images_0" in p and p.endswith(n) for p, n in zip(ds.paths, names))
    assert len({Path(p).parent.parent.name for p in ds.paths}) == 12
    _check_pixels(ds, names)


def test_sbp_jpg_names_find_nih_pngs_and_mimic_jpegs(tmp_path: Path):
    rows = read_manifest(PUBLIC / "SbP-bias90" / "valid.csv", DataOptions())
    nih = [r.path.name for r in rows if "NIH_JPG" in str(r.path)]
    mimic = [r.path for r in rows if "NIH_JPG" not in str(r.path)]
    assert nih and mimic and all(n.endswith(".jpg") for n in nih)
    _nih_tree(tmp_path / "nih", nih, suffix=".png")  # the user has NIH's original PNGs
    mimic_root = tmp_path / "mimic-cxr-jpg"
    for p in mimic:
        rel = str(p).split("mimic-cxr-jpg-2.0.0.physionet.org/")[1]
        (mimic_root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(mimic_root / rel, np.full((8, 8), _value(p.name), np.uint8))
    opts = DataOptions(
        image_root=tmp_path / "nih",
        path_map=((f"{AUTHORS}/MIMIC/mimic-cxr-jpg-2.0.0.physionet.org", str(mimic_root)),),
        image_size=8,
    )
    ds = load_split(PUBLIC / "SbP-bias90", "valid", opts)
    assert len(ds) == 800
    assert sum(p.endswith(".png") for p in ds.paths) == len(nih)
    assert sum(p.endswith(".jpg") for p in ds.paths) == len(mimic)
    expected = [r.path.name for r in rows]
    got = ds.images[:, 0, 0, 0].float().numpy() * 255
    np.testing.assert_allclose(got, [_value(n) for n in expected], atol=3)  # JPEG rounding
    # label / bias columns follow their rows (the authors' SbP loader shifts them).
    assert ds.labels.tolist() == [r.label for r in rows]
    assert ds.bias.tolist() == [r.bias for r in rows]


def test_build_splits_paths_resolve_in_nested_folders(tmp_path: Path):
    _nih_tree(tmp_path, ["00000001_000.png", "00000002_000.png"])
    opts = DataOptions(image_root=tmp_path)
    got = resolve_image_path("images/00000002_000.png", tmp_path, opts)
    assert got == tmp_path / "images_002" / "images" / "00000002_000.png"
    # Two copies of a name: the match would be a guess.
    _nih_tree(tmp_path / "copy", ["00000001_000.png"])
    with pytest.raises(InputError, match="occurs 2 times"):
        read_manifest_text(tmp_path, "path,label\nimages/00000001_000.png,1\n", opts)


def read_manifest_text(folder: Path, text: str, opts: DataOptions):
    path = folder / "m.csv"
    path.write_text(text, encoding="utf-8")
    return read_manifest(path, opts)


def _nih_metadata() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")  # not imported: it needs torchvision
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision (test extra, installed with --no-deps) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "Data_Entry_2017_v2020.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} missing from the torchxrayvision wheel")
    return path


def test_build_splits_on_the_real_nih_metadata(tmp_path: Path):
    meta = _nih_metadata()
    with gzip.open(meta, "rt", encoding="utf-8") as fh:
        table = {r["Image Index"]: r for r in csv.DictReader(fh)}
    assert len(table) == 112_120  # NIH ChestX-ray14
    out = tmp_path / "gbp90"
    args = ["build-splits", "--kind", "gbp", "--nih-csv", str(meta), "--out", str(out)]
    sizes = ["--n-train", "1800", "--n-valid", "600", "--n-test", "1000"]
    assert run_main(main, [*args, *sizes, "--bias-ratio", "0.9", "--seed", "0"]) == 0
    patients = {}
    for split, n in (("train", 1800), ("valid", 600), ("test", 1000)):
        with open(out / f"{split}.csv", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        groups = Counter((int(r["pneumothorax"]), int(r["gender"])) for r in rows)
        if split == "train":  # 90 % aligned (label == bias), each half per label
            assert groups == {(0, 0): 810, (1, 1): 810, (1, 0): 90, (0, 1): 90}
        else:
            assert groups == {g: n // 4 for g in [(0, 0), (0, 1), (1, 0), (1, 1)]}
        ids = set()
        for r in rows:  # every row agrees with the metadata
            m = table[Path(r["path"]).name]
            findings = m["Finding Labels"].split("|")
            label = 1 if "Pneumothorax" in findings else 0
            assert label == 1 or findings == ["No Finding"]
            assert (label, int(m["Patient Gender"] == "M")) == (
                int(r["pneumothorax"]),
                int(r["gender"]),
            )
            ids.add(m["Patient ID"])
        assert len({r["path"] for r in rows}) == n
        patients[split] = ids
    assert not patients["train"] & patients["valid"]
    assert not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]


def test_build_splits_reads_nih_data_entry_2017_as_shipped(tmp_path: Path, capsys):
    """NIH's own ``Data_Entry_2017.csv`` ends every line, the header too, with a comma (an
    unnamed empty last column; issue #20). The real metadata written that way gives the
    splits the comma-free file gives, byte for byte."""
    with gzip.open(_nih_metadata(), "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    shipped = tmp_path / "Data_Entry_2017.csv"
    shipped.write_text("".join(line + ",\r\n" for line in lines), encoding="utf-8")
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    sizes = ["--n-train", "400", "--n-valid", "100", "--n-test", "100", "--bias-ratio", "0.9"]
    for meta, out in ((shipped, "a"), (plain, "b")):
        args = ["build-splits", "--nih-csv", str(meta), "--out", str(tmp_path / out), *sizes]
        assert run_main(main, args) == 0, capsys.readouterr().err
    for name in ("train.csv", "valid.csv", "test.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # a value under the unnamed column is not silently dropped
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{lines[0]},\n{lines[1]},\n{lines[2]},oops\n", encoding="utf-8")
    capsys.readouterr()
    assert (
        run_main(main, ["build-splits", "--nih-csv", str(bad), "--out", str(tmp_path / "c")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}:3: a value under the header's unnamed last column"
    assert not (tmp_path / "c").exists()
