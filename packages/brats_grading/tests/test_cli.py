"""The console script: the shared contracts (medai_testkit), then what is BraTS-specific."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_grading import __version__
from brats_grading.claims import CLAIMS, MARGIN
from brats_grading.cli import main
from brats_grading.config import (
    PRESETS,
    BenchmarkConfig,
    RunConfig,
    SynthConfig,
    benchmark_preset,
    run_preset,
    synth_preset,
)
from brats_grading.data import class_weights
from brats_grading.methods import METHODS
from brats_grading.model import GradingNet
from brats_grading.synth import write_synthetic
from brats_grading.train import method_config, stage_optimizer
from medai_testkit import CLIContract, MethodProbe, MethodStepContract
from medcommon.cli import run_main
from medcommon.io import read_image, write_image
from medcommon.report import CLAIM_KEYS
from medcommon.run import load_run

FAST = ["--set", "steps=2", "--set", "primary_steps=2", "--set", "batch_size=2", "--quiet"]


def run(argv, capsys):
    code = run_main(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _set_voxels(path: Path, index, value: float) -> None:
    arr = read_image(path).array.astype(np.float32)
    arr[index] = value
    write_image(path, arr)


def plant_pickled_optimizer(stage_ckpt: Path) -> None:
    """A stage checkpoint as an older version wrote it: the optimizer state pickled
    (``torch.save``) as ``optimizer.pt`` instead of ``optimizer.json`` + ``.safetensors``."""
    for old in stage_ckpt.glob("optimizer.*"):
        old.unlink()
    torch.save({"state": {}, "param_groups": [{"lr": 1e-3, "params": []}]},
               stage_ckpt / "optimizer.pt")  # fmt: skip


class TestContract(CLIContract):
    main = staticmethod(main)
    prog, version, package = "brats-grading", __version__, "brats-grading"
    methods = METHODS.names()
    config_class = RunConfig
    # the cosine period is fixed at long_steps so that --resume --set steps=4 extends
    # a 2-step run into the 4-step one (the primary stage stays at 2 steps)
    short_steps, long_steps = 2, 4

    def make_data(self, root):
        return write_synthetic(root / "d", synth_preset("tiny"), "2019", seed=7, quiet=True)

    def train_argv(self, data, out, method, steps):
        return ["train", "--data", data, "--out", out, "--method", method, "--quiet",
                "--set", f"steps={steps}", "--set", "primary_steps=2", "--set", "batch_size=2",
                "--set", f"schedule_steps={self.long_steps}"]  # fmt: skip

    def bad_input_cases(self, data, tmp):
        """BraTS's own bad inputs (issue #20), on top of ``standard_bad_cases``: each
        exits 2 with one line and leaves its ``--out`` as it was."""

        def train(d, name, *extra):
            return ["train", "--data", d, "--out", tmp / f"run-{name}", *FAST, *extra]

        case = sorted((data / "HGG").iterdir())[0].name
        file = {m: f"{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")}

        def cut_in_half(path: Path) -> None:
            raw = path.read_bytes()
            path.write_bytes(raw[: len(raw) // 2])

        corruptions = {  # name: (change to the first HGG case folder, text of the error line)
            "missing modality file": (lambda c: (c / file["flair"]).unlink(),
                                      f"{file['flair']}: case {case}: modality flair missing"),
            "file with a wrong name (t1ce saved as _t1c)": (
                lambda c: (c / file["t1ce"]).rename(c / f"{case}_t1c.nii.gz"),
                f"modality t1ce missing; the folder holds {case}_t1c.nii.gz, expected"),
            "modalities of different shapes": (
                lambda c: write_image(c / file["t2"], np.ones((5, 6, 7), np.int16)),
                f"{file['t2']}: case {case}: t2 has shape (5, 6, 7)"),
            "a 2-D image as a modality": (
                lambda c: write_image(c / file["t2"], np.ones((24, 24), np.int16)),
                f"{file['t2']}: case {case}: expected a 3-D volume, got shape (24, 24)"),
            "NIfTI with a NaN voxel": (lambda c: _set_voxels(c / file["t1ce"], (0, 0, 0), np.nan),
                                       f"{file['t1ce']}: case {case}: t1ce contains NaN"),
            "NIfTI with an inf voxel": (
                lambda c: _set_voxels(c / file["t2"], (1, 2, 3), np.inf),
                f"{file['t2']}: case {case}: t2 contains NaN or infinite values"),
            "all-zero modality": (lambda c: _set_voxels(c / file["t1ce"], slice(None), 0.0),
                                  f"{file['t1ce']}: case {case}: t1ce is all zero"),
            "truncated .nii.gz (cut in half)": (lambda c: cut_in_half(c / file["flair"]),
                                                f"{file['flair']}: truncated NIfTI"),
            "unreadable file (not NIfTI)": (
                lambda c: (c / file["t1"]).write_bytes(b"not a nifti file" * 40), file["t1"]),
        }  # fmt: skip
        cases = {}
        for i, (name, (change, needle)) in enumerate(corruptions.items()):
            shutil.copytree(data, tmp / f"data{i}")
            change(tmp / f"data{i}" / "HGG" / case)
            cases[name] = (train(tmp / f"data{i}", i), needle)
        d20g = write_synthetic(tmp / "d20g", synth_preset("tiny"), "2020", seed=7, quiet=True)
        mapping = d20g / "name_mapping.csv"
        lines = mapping.read_text().splitlines(keepends=True)
        lines[2] = "GBM" + lines[2][lines[2].index(",") :]  # an unknown grade on line 3
        mapping.write_text("".join(lines))
        cases["2020 name_mapping.csv with an unknown grade"] = (
            train(d20g, "grade"),
            "name_mapping.csv:3: Grade 'GBM' is not HGG or LGG",
        )
        d20f = write_synthetic(tmp / "d20f", synth_preset("tiny"), "2020", seed=7, quiet=True)
        shutil.rmtree(d20f / "BraTS20_Training_004")
        cases["2020 case listed without its folder"] = (
            train(d20f, "listed"),
            "case BraTS20_Training_004 is listed in name_mapping.csv but has no folder",
        )
        # --resume of nothing, of a folder that is no run, of a checkpoint holding a pickle
        cases["resume of a missing run folder"] = (
            [*train(data, "never-started"), "--resume"],
            "run-never-started: run folder not found (nothing to --resume)",
        )
        cases["resume of a folder that is not a run (the data folder)"] = (
            ["train", "--data", data, "--out", data, "--resume", "--quiet"],
            "not a run folder (no config.json)",
        )
        pickled = tmp / "run-pickled"
        assert run_main(main, [str(a) for a in train(data, "pickled")]) == 0
        plant_pickled_optimizer(pickled / "checkpoint" / "guided")
        cases["resume of a checkpoint holding optimizer.pt"] = (
            ["train", "--data", data, "--out", pickled, "--resume", "--quiet"],
            "optimizer.pt: pickled training state, which this version never loads",
        )
        cases["a large finite lr diverges"] = (
            train(data, "lr1e3", "--set", "lr=1e3"),
            "training: diverged: loss is",
        )
        d20 = write_synthetic(tmp / "d20", synth_preset("tiny"), "2020", seed=7, quiet=True)
        (d20 / "name_mapping.csv").unlink()
        cases["2020 layout without name_mapping.csv"] = (
            train(d20, "2020"),
            "name_mapping.csv: not found",
        )
        (tmp / "empty").mkdir()
        cases["empty folder"] = (train(tmp / "empty", "empty"), "empty folder")
        cases["fold out of range"] = (
            train(data, "fold", "--folds", "3", "--fold", "5"),
            "error: fold: must be in 0..2",
        )
        cases["more folds than LGG cases"] = (
            train(data, "folds", "--folds", "5"),
            "--folds: 5 folds but only 4 cases of the rarer grade",
        )
        bad_config = {  # --set value: text of the error line (checked before any data is read)
            "model.modalities=[t1,t3]": "model.modalities: unknown modality 't3'",
            "model.modalities=[t1,t2]": "model.primary: 't1ce' is not among model.modalities",
            "model.modalities=[t1,t1]": "model.modalities: need distinct modalities",
            "model.primary=dwi": "model.primary: unknown modality 'dwi'",
            "folds=1": "folds: need at least 2 folds",
            "shape=[0,16,16]": "shape: need three sizes >= 4",
            "batch_size=0": "batch_size: must be positive",
            "model.stem_channels=0": "model.stem_channels: need positive sizes",
            "model.widths=[4,0]": "model.widths: need positive sizes",
            "model.blocks=[1,0]": "model.blocks: need positive sizes",
            "model.attention_reduction=0": "model.attention_reduction: need positive sizes",
            "model.dropout=1.5": "model.dropout: must be in [0, 1)",
            "model.num_classes=3": "model.num_classes: grading is HGG vs LGG",
            "lr=-1": "lr: must be > 0",
            "lr=0": "lr: must be > 0, got 0",
            "weight_decay=-0.1": "weight_decay: must be >= 0",
            "guidance.temperature=0": "guidance.temperature: must be > 0",
            "guidance.kd_weight=-1": "guidance.kd_weight: must be >= 0",
            "mixed_precision=fp8": "mixed_precision: 'fp8' is not one of",
        }
        for i, (setting, needle) in enumerate(bad_config.items()):
            cases[f"bad config {setting}"] = (train(data, f"cfg{i}", "--set", setting), needle)
        d20m = write_synthetic(tmp / "d20m", synth_preset("tiny"), "2020", seed=7, quiet=True)
        mapping = d20m / "name_mapping.csv"
        mapping.write_text(mapping.read_text().replace("_subject_ID", "_ID"))
        cases["name mapping without an ID column"] = (
            train(d20m, "map"),
            "name_mapping.csv: no BraTS_<year>_subject_ID column",
        )
        cases["predict without a run"] = (
            ["predict", "--run", tmp / "no-run", data, "--out", tmp / "p.csv"],
            "run folder not found",
        )
        return cases


class TestMethodSteps(MethodStepContract):
    """One optimizer step of each method's (last) training stage on a fixed tiny batch.

    cmg's step is its stage-2 guided step: the primary branch is first trained as in
    stage 1 (``teacher_steps`` steps on the batch) and then guides as a frozen teacher.
    """

    methods = METHODS.names()
    teacher_steps = 5

    def make_probe(self, method, seed):
        m, cfg = method_config(method, "tiny")
        torch.manual_seed(seed)
        net = GradingNet(cfg.model)
        gen = torch.Generator().manual_seed(1)
        y = torch.tensor([1, 0, 1, 1])
        x = torch.randn(4, 4, *cfg.shape, generator=gen) + y.view(-1, 1, 1, 1, 1) * 0.5
        batch = {"x": x, "y": y}
        stages = m.stages(cfg, net, class_weights(y.tolist()))

        def update(stage, opt) -> None:
            net.train()
            opt.zero_grad()
            stage.step_fn(net, batch, None)["loss"].backward()
            opt.step()

        for stage in stages[:-1]:  # cmg: stage 1 trains the teacher
            opt = stage_optimizer(cfg, net, stage)
            for _ in range(self.teacher_steps):
                update(stage, opt)
        last = stages[-1]
        opt = stage_optimizer(cfg, net, last)

        def loss() -> float:
            with torch.random.fork_rng(), torch.no_grad():
                torch.manual_seed(1234)  # the same dropout masks before and after the step
                net.train()
                return float(last.step_fn(net, batch, None)["loss"])

        return MethodProbe(loss=loss, step=lambda: update(last, opt), state=net.state_dict)


def test_guided_step_keeps_the_teacher_fixed_and_uses_guidance():
    """The frozen teacher's weights and BN statistics survive the guided step (a teacher
    left in train mode would update them), and switching the guidance off changes it."""
    steps = TestMethodSteps()
    before = {k: v.clone() for k, v in steps.make_probe("cmg", 0).state().items()}
    probe = steps.make_probe("cmg", 0)
    probe.step()
    after = probe.state()
    teacher = [k for k in before if k.startswith("branches.t1ce.")]
    assert any("running_mean" in k for k in teacher)
    for k in teacher:
        assert torch.equal(before[k], after[k]), f"teacher {k} changed"
    student = [k for k in before if k.startswith("branches.flair.") and "weight" in k]
    assert any(not torch.equal(before[k], after[k]) for k in student)
    unguided = steps.make_probe("cmg-no-guidance", 0)
    unguided.step()
    plain = unguided.state()
    assert all(torch.equal(before[k], plain[k]) for k in teacher)  # same stage 1
    assert any(not torch.equal(after[k], plain[k]) for k in student)


# ---------------------------------------------------------------- BraTS-specific


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


@pytest.mark.parametrize("layout", ["2018", "2019", "2020"])
def test_every_layout_trains_one_fold_and_evaluates(tmp_path, capsys, data_root, layout):
    data, run_dir = data_root / layout, tmp_path / "run"
    argv = ["train", "--data", data, "--out", run_dir, "--folds", "2", "--fold", "1", *FAST]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    saved = load_run(run_dir, package="brats-grading")
    assert saved.info.extra == {"layout": "2020" if layout == "2020" else "2019"}
    assert (saved.info.method, saved.config["fold"], saved.config["folds"]) == ("cmg", 1, 2)
    split = json.loads((run_dir / "split.json").read_text())
    assert split["fold"] == 1 and not set(split["train"]) & set(split["test"])
    stages = {json.loads(line).get("stage") for line in (run_dir / "log.jsonl").open()}
    assert stages == {"primary", "guided"}
    # reliability fusion: weights fitted on an inner split of the training fold only
    metrics = saved.metrics()
    fusion = metrics["fusion"]
    assert fusion["n_inner"] + fusion["n_val"] == len(split["train"])
    model_cfg = json.loads((run_dir / "model" / "config.json").read_text())
    assert model_cfg["branch_weights"] == pytest.approx(
        [fusion["weights"][m] for m in model_cfg["modalities"]] if fusion["weights"] else []
    )
    code, _, err = run(["evaluate", "--run", run_dir, "--data", data], capsys)
    assert code == 0, err
    ev = json.loads((run_dir / "eval-test.json").read_text())
    for key in ("accuracy", "auc", "sensitivity", "specificity", "f1", "brier"):
        assert math.isfinite(ev[key]), key
        assert ev[key] == pytest.approx(metrics["test"][key], rel=1e-6, abs=1e-9), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    """A 2-step cmg run on the 2019 folder, evaluated on all of it."""
    data, out = data_root / "2019", tmp_path_factory.mktemp("trained") / "run"
    assert run_main(main, ["train", "--data", str(data), "--out", str(out), *FAST]) == 0
    assert (
        run_main(main, ["evaluate", "--run", str(out), "--data", str(data), "--split", "all"]) == 0
    )
    return out


def test_predict_prints_and_writes_csv(trained, data_root, tmp_path, capsys):
    cases = sorted((data_root / "2019" / "LGG").iterdir())[:2]
    code, out, err = run(["predict", "--run", trained, *cases], capsys)
    assert code == 0, err
    # an independent path to the same numbers: evaluate --split all read the layout
    expected = json.loads((trained / "eval-all.json").read_text())["cases"]
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [row[0] for row in lines] == [c.name for c in cases]
    for name, p, grade in lines:
        assert float(p.removeprefix("p_hgg=")) == pytest.approx(expected[name], abs=1e-4)
        assert grade == ("HGG" if expected[name] >= 0.5 else "LGG")
    csv_path = tmp_path / "out" / "pred.csv"
    code, _, err = run(["predict", "--run", trained, *cases, "--out", csv_path], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["case"] for r in rows] == [c.name for c in cases]
    for r in rows:
        assert float(r["p_hgg"]) == pytest.approx(expected[r["case"]], abs=1e-6)
        assert r["grade"] == ("HGG" if float(r["p_hgg"]) >= 0.5 else "LGG")
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["pred.csv"]  # no temp left


def test_fold_flags_are_shorthands_for_the_config_fields(data_root, tmp_path, capsys):
    """``--folds 3 --fold 2`` set ``folds``/``fold``; a later ``--set`` of the same field wins."""
    data = data_root / "2019"
    code, _, err = run(["train", "--data", data, "--out", tmp_path / "a", "--folds", "3",
                        "--fold", "2", *FAST], capsys)  # fmt: skip
    assert code == 0, err
    a = load_run(tmp_path / "a", package="brats-grading")
    assert (a.config["folds"], a.config["fold"]) == (3, 2)
    assert json.loads((tmp_path / "a" / "split.json").read_text())["fold"] == 2
    code, _, err = run(["train", "--data", data, "--out", tmp_path / "b", "--fold", "1",
                        "--set", "fold=0", *FAST], capsys)  # fmt: skip
    assert code == 0, err
    assert load_run(tmp_path / "b", package="brats-grading").config["fold"] == 0


def test_resume_takes_the_runs_own_settings_and_changes_only_step_counts(
    trained, data_root, tmp_path, capsys
):
    """``--resume`` without ``--method``/``--seed``/``--preset`` continues the run as it
    was started; a different seed, or a setting other than a step count or cadence,
    is refused before anything is written."""
    data, run_dir = data_root / "2019", tmp_path / "run"
    shutil.copytree(trained, run_dir)
    header = (run_dir / "config.json").read_text()
    for extra, needle in (
        (["--seed", "3"], "--seed: the run was started with 0, not 3"),
        (["--set", "lr=0.1"], "--set lr: cannot change a resumed run's setting"),
        (["--set", "model.dropout=0"], "--set model.dropout: cannot change"),
    ):
        code, _, err = run(["train", "--data", data, "--out", run_dir, "--resume", *extra], capsys)
        assert code == 2 and needle in err, err
    assert (run_dir / "config.json").read_text() == header
    code, _, err = run(["train", "--data", data, "--out", run_dir, "--resume", "--quiet",
                        "--set", "steps=3", "--set", "log_every=1"], capsys)  # fmt: skip
    assert code == 0, err
    saved = load_run(run_dir, package="brats-grading")
    assert (saved.info.method, saved.info.seed, saved.info.preset) == ("cmg", 0, "tiny")
    assert (saved.config["steps"], saved.config["log_every"]) == (3, 1)
    assert saved.metrics()["stages"][-1]["steps"] == 3


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
    return errors[0]


@pytest.mark.parametrize(
    ("lr", "what"),
    [("1e30", "loss is nan at step 2 in stage primary"),  # a non-finite loss
     ("1e3", "more than 10000 x its start")],  # a large but finite lr: no garbage run
)  # fmt: skip
def test_a_diverging_run_leaves_nothing_and_the_same_command_with_a_sane_lr_works(
    data_root, tmp_path, capsys, lr, what
):
    """Issue #20: a NaN loss was exit 1 with a traceback and left config.json and
    split.json behind (only an undocumented ``--resume --set lr=`` retried); a large
    finite lr gave exit 0 and garbage. Now both are exit 2 with one line and advice,
    nothing is kept (a new --out is not created, an empty one stays empty), and the
    same command with a sane lr runs into the same --out."""
    data, out = data_root / "2019", tmp_path / "run"
    argv = ["train", "--data", data, "--out", out, *FAST]
    code, _, err = run([*argv, "--set", f"lr={lr}"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert line.startswith("error: training: diverged: ") and what in line, line
    assert "lower the learning rate" in line and "nothing of this run was kept" in line
    assert not out.exists()
    out.mkdir()  # an existing empty --out: emptied again, not removed
    code, _, err = run([*argv, "--set", f"lr={lr}"], capsys)
    assert code == 2 and "diverged" in _one_error_line(err)
    assert out.is_dir() and not any(out.iterdir())
    code, _, err = run([*argv, "--set", "lr=1e-3"], capsys)
    assert code == 0, err
    saved = load_run(out, package="brats-grading")
    assert saved.config["lr"] == pytest.approx(1e-3)
    assert all(math.isfinite(v) for v in saved.metrics()["test"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_diverging_overwrite_leaves_the_finished_run_bit_identical(
    trained, data_root, tmp_path, capsys
):
    """``--overwrite`` trains beside the old run; diverging, it leaves the old run (its
    model, checkpoints, metrics and eval-*.json) byte for byte, and no staging folder."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = _files(out)
    argv = ["train", "--data", data_root / "2019", "--out", out, *FAST, "--overwrite"]
    code, _, err = run([*argv, "--set", "lr=1e30"], capsys)
    assert code == 2 and "diverged" in _one_error_line(err)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_refuses_a_pickled_optimizer_before_reading_data_or_training(
    trained, data_root, tmp_path, capsys, monkeypatch
):
    """Issue #20: a checkpoint holding ``optimizer.pt`` (as an older version wrote it, or
    a planted pickle) gave exit 1. ``--resume`` now refuses it with exit 2 and one line
    naming the file, and before the data is read or anything trained (cmg's reliability
    fusion would first retrain the whole method on the inner split); the run folder is
    left byte for byte."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    plant_pickled_optimizer(out / "checkpoint" / "primary")
    before = _files(out)

    def no_reading(*args, **kwargs):
        raise AssertionError("the data was read before the checkpoint was checked")

    monkeypatch.setattr("brats_grading.train.load_cases", no_reading)
    code, _, err = run(["train", "--data", data_root / "2019", "--out", out, "--resume"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert line.startswith(f"error: {out / 'checkpoint' / 'primary' / 'optimizer.pt'}: ")
    assert "pickled training state, which this version never loads" in line
    assert _files(out) == before


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_file_loads_every_section(name):
    assert PRESETS.names() == ["demo", "full", "small", "tiny"]
    for section, cls, accessor in (
        ("run", RunConfig, run_preset),
        ("synth", SynthConfig, synth_preset),
        ("benchmark", BenchmarkConfig, benchmark_preset),
    ):
        assert isinstance(accessor(name), cls), section
        assert PRESETS.section(name, section, cls) == accessor(name)
    assert set(PRESETS.tree(name)) <= {"run", "synth", "benchmark"}
    for m in benchmark_preset(name).methods:
        METHODS.get(m)


def test_presets_are_the_sizes_the_readme_states():
    tiny, small, full = run_preset("tiny"), run_preset("small"), run_preset("full")
    assert (tiny.shape, tiny.folds, tiny.steps, tiny.model.widths) == ((8, 16, 16), 2, 4, (4, 8))
    assert (small.shape, small.folds, small.steps, small.batch_size) == ((16, 24, 24), 3, 80, 8)
    assert small.model.widths == (8, 16, 16) and small.lr == pytest.approx(3e-3)
    assert full == RunConfig()  # the paper-scale defaults
    assert synth_preset("tiny") == SynthConfig(hgg=6, lgg=4, shape=(12, 24, 24))
    assert synth_preset("full") == SynthConfig(hgg=259, lgg=76, shape=(64, 120, 120))


def test_an_unknown_preset_is_one_error_line_listing_the_presets(tmp_path, capsys):
    code, _, err = run(["synth", tmp_path / "d", "--preset", "huge", "--quiet"], capsys)
    assert code == 2
    assert "error: --preset: unknown preset 'huge'; choose from tiny, demo, small, full" in err
    assert not (tmp_path / "d").exists()


def test_benchmark_tiny(tmp_path, capsys):
    out = tmp_path / "bench"
    code, _, err = run(
        ["benchmark", "--out", out, "--preset", "tiny", "--seeds", "0", "--threads", "1",
         "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["provenance"]["threads"] == 1  # --threads, pinned and recorded
    assert {r["method"] for r in res["rows"]} == set(METHODS.names())
    assert len(res["rows"]) == len(METHODS.names()) * 2  # 2 folds x 1 seed
    assert "throughput_ratio_cmg_over_early_fusion" in res["extra"]
    assert (out / "report.md").is_file() and (out / "auc.png").is_file()
    assert (out / "attention.png").is_file() and (out / "paired.png").is_file()
    # Claims as data: one entry per declared claim, holding or not, with every key.
    assert [c["claim"] for c in res["claims"]] == [c.claim for c in CLAIMS]
    # Each is decided on the paired differences CMG − baseline of the test AUC, one per
    # (seed, fold), with a 95 % interval against MARGIN.
    for c in res["claims"]:
        assert set(c) >= CLAIM_KEYS and isinstance(c["holds"], bool)
        assert c["value"] == pytest.approx(_mean_auc(res, c["method"]))
        d = _paired_auc(res, c["method"], c["baseline"])
        assert c["pairs"] == len(d) == 2  # 2 folds x 1 seed
        assert c["difference"] == pytest.approx(np.mean(d))
        lo, hi = c["interval"]
        assert lo <= np.mean(d) <= hi
        expected = "holds" if lo > MARGIN else "fails" if hi < MARGIN else "undecided"
        assert c["decision"] == expected
        assert c["holds"] == (expected == "holds")
    # The headline figure leads, and every listed figure was written.
    assert res["figures"][0] == "headline.png"
    assert all((out / f).is_file() for f in res["figures"])
    report = (out / "report.md").read_text()
    assert report.index("## Claims") < report.index("![headline.png]")
    # single-t1ce's training served as stage 1 of cmg, cmg-no-guidance and cmg-mid (the
    # last two also in their inner-validation fits): 5 hits per fold, 2 folds.
    assert res["extra"]["stages_reused"] == 2 * 5
    # provenance: the claims and the preset file the run used
    assert list(res["provenance"]["sources"]) == [
        "packages/brats_grading/src/brats_grading/claims.py",
        "packages/brats_grading/configs/tiny.yaml",
    ]


def _mean_auc(res, method):
    return float(np.mean([r["metrics"]["auc"] for r in res["rows"] if r["method"] == method]))


def _paired_auc(res, method, baseline):
    """AUC(method) − AUC(baseline) per (seed, fold) run of both."""
    auc = {(r["method"], r["seed"], r["fold"]): r["metrics"]["auc"] for r in res["rows"]}
    runs = sorted((s, f) for m, s, f in auc if m == method)
    return [auc[method, s, f] - auc[baseline, s, f] for s, f in runs]
