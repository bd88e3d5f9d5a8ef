"""Two-step smoke runs of every command, --resume, and bad inputs (exit 2, one error line)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from medcommon.cli import run_main
from medcommon.models import from_pretrained
from pbbl_cxr.cli import main
from pbbl_cxr.models import Classifier

FAST = ["--set", "steps=2", "--set", "bias_steps=2", "--set", "eval_every=1", "--quiet"]


def run(args: list[str]) -> int:
    return run_main(main, [str(a) for a in args])


def test_version(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "pbbl-cxr 0.1.0"


def test_synth_writes_the_sbp_layout(tmp_path: Path):
    out = tmp_path / "syn"
    assert (
        run(["synth", out, "--preset", "tiny", "--kind", "sbp", "--bias-ratio", "0.9", "--quiet"])
        == 0
    )
    names = sorted(p.name for p in out.glob("*.csv"))
    assert names == ["test.csv", "train_MIMIC.csv", "train_NIH.csv", "valid.csv"]
    info = json.loads((out / "dataset.json").read_text())
    assert info["kind"] == "sbp" and info["bias_ratio"] == 0.9
    with open(out / "train_MIMIC.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["MIMIC"] for r in rows} == {"1"} and all((out / r["path"]).is_file() for r in rows)


@pytest.mark.parametrize("method", ["pbbl", "lff"])
def test_train_and_evaluate_smoke(tmp_path: Path, gbp_tiny: Path, method: str):
    run_dir = tmp_path / "run"
    assert run(["train", "--data", gbp_tiny, "--out", run_dir, "--method", method, *FAST]) == 0
    for name in (
        "config.json",
        "log.jsonl",
        "metrics.json",
        "model/config.json",
        "model/model.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoint").is_dir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == method and config["steps"] == 2 and config["gce_q"] == 0.7
    model = from_pretrained(Classifier, run_dir / "model")
    assert model.config.image_size == 24
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "auc_balanced" in metrics["valid"]
    if method == "pbbl":
        assert sorted(p.name for p in (run_dir / "checkpoint").iterdir()) == ["bias-r1", "debias"]
        lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
        assert any("pseudo_labels" in x for x in lines)
        assert (run_dir / "pseudo_bias.csv").read_text().startswith("path,label,bias,bias_hat\n")
        with open(run_dir / "pseudo_bias.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 96  # every train image
        assert {r["bias_hat"] for r in rows} <= {"0", "1"}
        want = np.mean([int(r["bias"]) == int(r["bias_hat"]) for r in rows])
        assert metrics["pseudo_bias_accuracy"] == pytest.approx(want, rel=1e-6)  # float32 mean
    assert (
        run(["evaluate", "--run", run_dir, "--data", gbp_tiny, "--split", "test", "--quiet"]) == 0
    )
    ev = json.loads((run_dir / "eval-test.json").read_text())
    for key in (
        "auc",
        "auc_aligned",
        "auc_conflicting",
        "auc_balanced",
        "ap",
        "acc_worst_group",
        "acc_y1_b0",
    ):
        assert key in ev
    assert ev["n"] == 32
    assert ev["auc_balanced"] == pytest.approx((ev["auc_aligned"] + ev["auc_conflicting"]) / 2)


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path: Path, sbp_tiny: Path):
    common = ["--data", sbp_tiny, "--method", "erm", "--quiet", "--set", "eval_every=1"]
    assert run(["train", *common, "--out", tmp_path / "a", "--set", "steps=4"]) == 0
    assert run(["train", *common, "--out", tmp_path / "b", "--set", "steps=2"]) == 0
    assert run(["train", *common, "--out", tmp_path / "b", "--set", "steps=4"]) == 2
    assert run(["train", *common, "--out", tmp_path / "b", "--set", "steps=4", "--resume"]) == 0
    wa = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_pbbl_resume_of_a_finished_run_keeps_its_model(tmp_path: Path, gbp_tiny: Path):
    args = ["train", "--data", gbp_tiny, "--out", tmp_path / "r", "--method", "pbbl", *FAST]
    assert run(args) == 0
    before = load_file(str(tmp_path / "r" / "model" / "model.safetensors"))
    assert run([*args, "--resume"]) == 0
    after = load_file(str(tmp_path / "r" / "model" / "model.safetensors"))
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    b_hat = (tmp_path / "r" / "pseudo_bias.csv").read_text()
    assert b_hat.count("\n") == 97  # header + 96 train images


def test_unknown_select_metric(tmp_path: Path, gbp_tiny: Path, capsys):
    args = ["train", "--data", gbp_tiny, "--out", tmp_path / "r", "--set", "select_metric=f2"]
    assert run(args) == 2
    _assert_one_error(capsys, contains="error: --set select_metric: unknown metric 'f2'")


def test_benchmark_smoke(tmp_path: Path):
    out = tmp_path / "bench"
    args = ["benchmark", "--out", out, "--preset", "tiny", "--seeds", "0", "--kinds", "gbp"]
    assert (
        run([*args, "--ratios", "0.9", "--set", "steps=2", "--set", "bias_steps=2", "--quiet"]) == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["rows"]} == {
        "erm",
        "gce",
        "lff",
        "groupdro",
        "bbs-oracle",
        "pbbl",
    }
    assert results["rows"][0]["setting"] == "gbp-0.9"
    assert results["extra"]["stage2_step_over_erm_step"] > 0
    assert results["extra"]["pbbl_pipeline_over_erm"] > 0
    assert (out / "report.md").read_text().startswith("# pbbl-cxr benchmark")
    assert (out / "auc_conflicting.png").is_file() and (out / "pseudo_label_accuracy.png").is_file()


def _nih_csv(path: Path, n_patients: int = 240) -> None:
    rng = np.random.default_rng(0)
    lines = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
    ]
    for p in range(n_patients):
        sex = "M" if p % 2 else "F"
        for k in range(2):
            finding = ["No Finding", "Pneumothorax", "Pneumonia", "Effusion|Pneumothorax", "Mass"][
                rng.integers(0, 5)
            ]
            lines.append(f"{p:08d}_{k:03d}.png,{finding},{k},{p},50,{sex},PA")
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")


def test_build_splits_gbp_is_patient_disjoint_and_biased(tmp_path: Path):
    _nih_csv(tmp_path / "Data_Entry_2017.csv")
    out = tmp_path / "splits"
    args = ["build-splits", "--nih-csv", tmp_path / "Data_Entry_2017.csv", "--out", out]
    assert run([*args, "--n-train", 40, "--n-valid", 16, "--n-test", 16, "--bias-ratio", 0.9]) == 0
    patients = {}
    for split in ("train", "valid", "test"):
        with open(out / f"{split}.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == ["path", "pneumothorax", "gender"]
        patients[split] = {r["path"].split("/")[-1].split("_")[0] for r in rows}
        groups = {}
        for r in rows:
            key = (r["pneumothorax"], r["gender"])
            groups[key] = groups.get(key, 0) + 1
        if split == "train":
            assert groups == {("0", "0"): 18, ("1", "1"): 18, ("1", "0"): 2, ("0", "1"): 2}
        else:
            assert set(groups.values()) == {4}
    assert not (patients["train"] & patients["test"]) and not (
        patients["train"] & patients["valid"]
    )


def test_build_splits_sbp(tmp_path: Path):
    _nih_csv(tmp_path / "nih.csv")
    chex = ["subject_id,study_id,Pneumonia,No Finding"]
    meta = ["dicom_id,subject_id,study_id,ViewPosition"]
    for s in range(200):
        sid, study = 10000000 + s, 50000000 + s
        chex.append(f"{sid},{study},{'1.0' if s % 2 else ''},{'' if s % 2 else '1.0'}")
        meta.append(f"d{s},{sid},{study},PA")
    (tmp_path / "chex.csv").write_text("\n".join(chex) + "\n")
    (tmp_path / "meta.csv").write_text("\n".join(meta) + "\n")
    out = tmp_path / "sbp"
    args = [
        "build-splits",
        "--kind",
        "sbp",
        "--nih-csv",
        tmp_path / "nih.csv",
        "--out",
        out,
        "--mimic-chexpert",
        tmp_path / "chex.csv",
        "--mimic-metadata",
        tmp_path / "meta.csv",
        "--n-train",
        40,
        "--n-valid",
        8,
        "--n-test",
        8,
        "--bias-ratio",
        0.9,
    ]
    assert run(args) == 0
    mimic = (out / "train_MIMIC.csv").read_text().splitlines()
    assert mimic[0] == "path,pneumonia,MIMIC"
    assert mimic[1].startswith("MIMIC/files/p10/p100")
    assert len(mimic) - 1 == 20  # 18 aligned positives + 2 conflicting negatives


# ------------------------------------------------------------------ bad inputs
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _assert_one_error(capsys, expected: str | None = None, contains: str = "") -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    if expected is not None:
        assert lines[0] == expected
    assert contains in lines[0]
    return lines[0]


def _train(data: Path, out: Path, *extra) -> int:
    return run(["train", "--data", data, "--out", out, "--method", "pbbl", *FAST, *extra])


def test_missing_image(tmp_path: Path, gbp_tiny: Path, capsys):
    data = _copy(gbp_tiny, tmp_path / "d")
    (data / "images" / "train_00004.png").unlink()
    assert _train(data, tmp_path / "run") == 2
    _assert_one_error(
        capsys,
        f"error: {data / 'train.csv'}:6: image not found: {data / 'images' / 'train_00004.png'}",
    )
    assert not (tmp_path / "run").exists()


def test_truncated_image(tmp_path: Path, gbp_tiny: Path, capsys):
    data = _copy(gbp_tiny, tmp_path / "d")
    img = data / "images" / "valid_00002.png"
    img.write_bytes(img.read_bytes()[:60])
    assert _train(data, tmp_path / "run") == 2
    _assert_one_error(capsys, contains=f"error: {data / 'valid.csv'}:4: {img}: ")
    assert not (tmp_path / "run").exists()


def test_label_outside_label_set(tmp_path: Path, gbp_tiny: Path, capsys):
    data = _copy(gbp_tiny, tmp_path / "d")
    lines = (data / "train.csv").read_text().splitlines()
    path = lines[3].split(",")[0]
    lines[3] = f"{path},7,0"
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    assert _train(data, tmp_path / "run") == 2
    _assert_one_error(
        capsys, f"error: {data / 'train.csv'}:4: label '7' is outside the label set {{0, 1}}"
    )
    assert not (tmp_path / "run").exists()


def test_missing_column(tmp_path: Path, gbp_tiny: Path, capsys):
    assert _train(gbp_tiny, tmp_path / "run", "--label-column", "pneumonia") == 2
    _assert_one_error(
        capsys,
        f"error: {gbp_tiny / 'train.csv'}: missing column 'pneumonia'; "
        "columns are path, pneumothorax, gender",
    )
    assert not (tmp_path / "run").exists()


def test_empty_split(tmp_path: Path, gbp_tiny: Path, capsys):
    data = _copy(gbp_tiny, tmp_path / "d")
    (data / "valid.csv").write_text("path,pneumothorax,gender\n")
    assert _train(data, tmp_path / "run") == 2
    _assert_one_error(capsys, f"error: {data / 'valid.csv'}: the valid split is empty (no rows)")
    assert not (tmp_path / "run").exists()


def test_unknown_method_and_bad_override(tmp_path: Path, gbp_tiny: Path, capsys):
    assert run(["train", "--data", gbp_tiny, "--out", tmp_path / "r", "--method", "magic"]) == 2
    _assert_one_error(
        capsys,
        "error: --method: unknown method 'magic'; choose from erm, gce, lff, groupdro, bbs-oracle, pbbl",
    )
    assert run(["train", "--data", gbp_tiny, "--out", tmp_path / "r", "--set", "gce_q=2"]) == 2
    _assert_one_error(capsys, "error: --set gce_q: must be in (0, 1], got 2.0")
    assert run(["train", "--data", gbp_tiny, "--out", tmp_path / "r", "--set", "nope=1"]) == 2
    _assert_one_error(capsys, contains="error: --set nope: unknown config field")
    assert not (tmp_path / "r").exists()


def test_oracle_without_bias_column(tmp_path: Path, gbp_tiny: Path, capsys):
    data = _copy(gbp_tiny, tmp_path / "d")
    for name in ("train", "valid"):
        rows = (data / f"{name}.csv").read_text().splitlines()
        (data / f"{name}.csv").write_text(
            "\n".join(",".join(r.split(",")[:2]) for r in rows) + "\n"
        )
    args = ["train", "--data", data, "--out", tmp_path / "r", "--method", "groupdro", *FAST]
    assert run(args) == 2
    _assert_one_error(capsys, "error: --method: groupdro needs a bias column in the train manifest")
    # PBBL needs no bias labels at all; without them in valid, the final weights are kept.
    assert run(["train", "--data", data, "--out", tmp_path / "ok", "--method", "pbbl", *FAST]) == 0
    assert "kept the final weights" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert metrics["selection"] == "final weights" and "auc_balanced" not in metrics["valid"]


def test_evaluate_bad_run_folder(tmp_path: Path, gbp_tiny: Path, capsys):
    assert run(["evaluate", "--run", tmp_path, "--data", gbp_tiny]) == 2
    _assert_one_error(capsys, f"error: {tmp_path}: not a finished run folder (no model/)")
    assert not list(tmp_path.glob("eval-*.json"))


def test_benchmark_on_a_dataset_folder(tmp_path: Path, sbp_tiny: Path, capsys):
    out = tmp_path / "bench"
    args = ["benchmark", "--out", out, "--preset", "tiny", "--seeds", "0", "--data", sbp_tiny]
    fast = ["--methods", "erm", "pbbl", "--set", "steps=2", "--set", "bias_steps=2", "--quiet"]
    assert run([*args, *fast]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["erm", "pbbl"]
    assert results["rows"][0]["setting"] == "data"
    capsys.readouterr()
    broken = _copy(sbp_tiny, tmp_path / "broken")
    (broken / "test.csv").write_text("path,pneumonia,MIMIC\nNIH/nothing.png,0,0\n")
    args = ["benchmark", "--out", tmp_path / "b2", "--preset", "tiny", "--seeds", "0"]
    assert run([*args, "--data", broken, *fast]) == 2
    _assert_one_error(
        capsys, f"error: {broken / 'test.csv'}:2: image not found: {broken / 'NIH' / 'nothing.png'}"
    )
    assert not (tmp_path / "b2").exists()
