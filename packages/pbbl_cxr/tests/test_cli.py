"""The console script: medcommon's shared contracts, then what is particular to pbbl-cxr.

- :class:`TestContract` (``medai_testkit.CLIContract``): --version, bad input is exit
  2 with one line and nothing written, the run folder round-trips through
  ``medcommon.run``, resume equals an uninterrupted run, for every registered method;
  plus pbbl's own bad inputs (manifests, images, oracles, evaluate, benchmark, predict).
- :class:`TestMethodSteps` (``MethodStepContract``): one step of each method's objective
  on a fixed batch lowers it and is deterministic under a seed.
- Then: PBBL's run folder and evaluate, a flat (pre-schema) ``config.json`` refused, the
  run specification (presets by name, shorthands, data flags, what ``--resume`` may
  change), predict on real radiographs and PNG folders, synth, build-splits, benchmark.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from medai_testkit import CLIContract, MethodProbe, MethodStepContract, pydicom_data_file
from medcommon.cli import run_main
from medcommon.config import replace_nested
from medcommon.models import save_pretrained
from medcommon.report import CLAIM_KEYS
from medcommon.run import load_run, make_run_info, write_run_config
from medcommon.train import seed_everything
from pbbl_cxr import PACKAGE, __version__
from pbbl_cxr.benchmark import method_names, preset_settings
from pbbl_cxr.cli import main
from pbbl_cxr.config import PRESETS, RunConfig, benchmark_preset, run_preset, synth_preset
from pbbl_cxr.data import DataOptions, load_split
from pbbl_cxr.evaluate import load_run_model, predict_probs
from pbbl_cxr.losses import GroupDROWeights, LossEMA
from pbbl_cxr.methods import (
    METHODS,
    erm_step,
    make_bbs_step,
    make_gce_step,
    make_groupdro_step,
    make_lff_step,
)
from pbbl_cxr.models import BiasedDebiasedPair, build_model
from pbbl_cxr.pseudo import bias_prior, log_prior, pseudo_bias_labels
from pbbl_cxr.synth import generate
from pbbl_cxr.train import make_optimizer

FAST = ["--set", "steps=2", "--set", "bias_steps=2", "--set", "eval_every=1", "--quiet"]


def run(args: list) -> int:
    return run_main(main, [str(a) for a in args])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_csv(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


# ---------------------------------------------------------------- the shared contracts
class TestContract(CLIContract):
    main = staticmethod(main)
    prog, version, package = "pbbl-cxr", __version__, "pbbl-cxr"
    methods = METHODS.names()
    config_class = RunConfig

    def make_data(self, root):
        return generate(root / "data", synth_preset("tiny", kind="gbp"), seed=0)

    def train_argv(self, data, out, method, steps):
        # PBBL's stage 1 stays at 2 steps so that a resumed stage 2 sees the same pseudo
        # labels; GCE *is* a stage-1 model, so it follows ``steps``.
        bias_steps = steps if method == "gce" else 2
        return [
            "train", "--data", data, "--out", out, "--method", method, "--quiet",
            "--set", f"steps={steps}", "--set", f"bias_steps={bias_steps}",
            "--set", "eval_every=1",
        ]  # fmt: skip

    def bad_input_cases(self, data, tmp):
        def train(d, *extra):
            return ["train", "--data", d, "--out", tmp / "run", "--method", "pbbl", *FAST, *extra]

        missing = _copy(data, tmp / "missing")
        (missing / "images" / "train_00004.png").unlink()
        truncated = _copy(data, tmp / "truncated")
        img = truncated / "images" / "valid_00002.png"
        img.write_bytes(img.read_bytes()[:60])
        label7 = _copy(data, tmp / "label7")
        _edit_csv(label7 / "train.csv", lambda x: [*x[:3], x[3].split(",")[0] + ",7,0", *x[4:]])
        empty = _copy(data, tmp / "empty")
        (empty / "valid.csv").write_text("path,pneumothorax,gender\n")
        no_bias = _copy(data, tmp / "no-bias")
        for name in ("train", "valid"):
            _edit_csv(no_bias / f"{name}.csv", lambda x: [",".join(r.split(",")[:2]) for r in x])
        broken = _copy(data, tmp / "broken")
        (broken / "test.csv").write_text("path,pneumothorax,gender\nimages/nothing.png,0,0\n")
        not_a_run = tmp / "not-a-run"
        not_a_run.mkdir()
        other = tmp / "other-run"
        other.mkdir()
        (other / "config.json").write_text(
            json.dumps({"schema": 1, "run": {"package": "brats-grading", "version": "0"},
                        "config": {}})
        )  # fmt: skip
        fresh = tmp / "fresh-run"  # an untrained run folder, enough for predict's checks
        cfg = run_preset("tiny")
        write_run_config(fresh, make_run_info("pbbl-cxr", __version__, method="erm"), cfg)
        save_pretrained(build_model(cfg.model), fresh / "model", cfg.model)
        scan = tmp / "scan.png"
        scan.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        good = data / "images" / "test_00000.png"
        # backbone weights a run cannot use: a pickled module, and the CNN of another width
        pickled = tmp / "module.pt"
        torch.save(torch.nn.Linear(2, 2), pickled)
        wide = tmp / "wide.safetensors"
        save_file(build_model(replace(cfg.model, width=16)).backbone.state_dict(), str(wide))
        # a DICOM cut before its pixel data, in a manifest and given to predict
        dicom = _copy(data, tmp / "dicom")
        cut = dicom / "images" / "cut.dcm"
        cut.write_bytes(pydicom_data_file("RG1_UNCR.dcm").read_bytes()[:1000])
        _edit_csv(dicom / "valid.csv", lambda x: [*x[:3], "images/cut.dcm,1,1", *x[4:]])
        nih = tmp / "Data_Entry_2017.csv"
        _nih_csv(nih)
        splits = ["build-splits", "--nih-csv", nih, "--out", tmp / "splits",
                  "--n-train", 40, "--n-valid", 16, "--n-test", 16]  # fmt: skip
        bench = [
            "benchmark",
            "--out",
            tmp / "bench",
            "--preset",
            "tiny",
            "--seeds",
            "0",
            "--threads",
            "1",
        ]
        return {
            "missing image": (train(missing), f"{missing / 'train.csv'}:6: image not found: "
                                              f"{missing / 'images' / 'train_00004.png'}"),
            "truncated image": (train(truncated), f"{truncated / 'valid.csv'}:4: {img}: "),
            "label outside the label set": (train(label7), f"{label7 / 'train.csv'}:4: label '7' "
                                                           "is outside the label set {0, 1}"),
            "missing column": (train(data, "--label-column", "pneumonia"),
                               f"{data / 'train.csv'}: missing column 'pneumonia'; "
                               "columns are path, pneumothorax, gender"),
            "empty split": (train(empty), f"{empty / 'valid.csv'}: the valid split is empty"),
            "unknown select metric": (train(data, "--set", "select_metric=f2"),
                                      "--set select_metric: unknown metric 'f2'"),
            "gce_q out of range": (train(data, "--set", "gce_q=2"),
                                   "--set gce_q: must be in (0, 1], got 2.0"),
            "oracle without bias column": (train(no_bias, "--method", "groupdro"),
                                           "--method: groupdro needs a bias column"),
            "evaluate: not a run folder": (["evaluate", "--run", not_a_run, "--data", data],
                                           f"{not_a_run}: not a run folder (no config.json)"),
            "evaluate: another package's run": (["evaluate", "--run", other, "--data", data],
                                                f"{other}: a run of brats-grading, not of pbbl-cxr"),
            "benchmark: a missing test image": ([*bench, "--data", broken, "--methods", "erm"],
                                                f"{broken / 'test.csv'}:2: image not found: "
                                                f"{broken / 'images' / 'nothing.png'}"),
            "benchmark: unknown method": ([*bench, "--methods", "erm", "magic"], "'magic'"),
            "benchmark: no threads": ([*bench, "--threads", "0"],
                                      "--threads: must be at least 1, got 0"),
            "predict: unreadable image": (["predict", "--run", fresh, good, scan, "--out",
                                           tmp / "p.csv"], f"error: {scan}: "),
            "predict: missing file": (["predict", "--run", fresh, tmp / "nope.dcm"],
                                      f"{tmp / 'nope.dcm'}: file or folder not found"),
            "predict: another package's run": (["predict", "--run", other, good],
                                               f"{other}: a run of brats-grading"),
            # issue #20
            "lr zero": (train(data, "--set", "lr=0"), "--set lr: must be positive, got 0.0"),
            "lr negative": (train(data, "--set", "lr=-0.001"),
                            "--set lr: must be positive, got -0.001"),
            "groupdro_eta negative": (train(data, "--set", "groupdro_eta=-1"),
                                      "--set groupdro_eta: must be >= 0, got -1.0"),
            "degenerate_min_share out of range": (train(data, "--set", "degenerate_min_share=0.5"),
                                                  "--set degenerate_min_share: must be in [0, 0.5)"),
            "large finite lr diverges (growth bound)": (
                train(data, "--set", "lr=100"),
                "at step 2 in stage debias, more than 10000 x its start"),  # finite, too large
            "backbone weights not found": (
                train(data, "--set", f"model.backbone_weights={tmp / 'none.safetensors'}"),
                f"{tmp / 'none.safetensors'}: backbone weights file not found"),
            "backbone weights pickled": (
                train(data, "--set", f"model.backbone_weights={pickled}"),
                f"{pickled}: refused or unreadable with torch.load(weights_only=True)"),
            "backbone weights of the wrong shape": (
                train(data, "--set", f"model.backbone_weights={wide}"),
                f"{wide}: weights do not fit (size mismatch for body.0.weight"),
            "batch_size larger than a cross-fitting fold": (
                train(data, "--set", "batch_size=80"),
                "--set batch_size: 80 exceeds the 64 images a cross-fitting fold model trains on"),
            "truncated DICOM in a manifest": (
                train(dicom), f"{dicom / 'valid.csv'}:4: {cut}: truncated DICOM: the file ends "
                              "before its pixel data (1000 bytes"),
            "predict: truncated DICOM": (["predict", "--run", fresh, good, cut],
                                         f"error: {cut}: truncated DICOM"),
            "build-splits: unknown finding": (
                [*splits, "--finding", "Pneumotorax"],
                "--finding: unknown finding 'Pneumotorax': not in "
                f"{nih}'s Finding Labels; did you mean 'Pneumothorax'? choose from Effusion, "
                "Mass, Pneumonia, Pneumothorax"),
            "build-splits: unknown bias value": (
                [*splits, "--bias-value", "male"],
                f"--bias-value: unknown value 'male': not a Patient Gender of {nih}; "
                "choose from F, M"),
        }  # fmt: skip


class TestMethodSteps(MethodStepContract):
    """One step of each method's own objective on a fixed batch of 16 (24 px) images."""

    methods = METHODS.names()

    @staticmethod
    def batch() -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        label = torch.tensor([0, 1] * 8)
        bias = label.clone()
        bias[:4] = 1 - bias[:4]  # 4 bias-conflicting samples
        image = 0.5 * torch.rand(16, 1, 24, 24, generator=g) + 0.3 * bias[:, None, None, None]
        image[label == 1, :, 10:14, 10:14] += 0.3  # the lesion
        return {"image": image, "label": label, "bias": bias, "bias_hat": label.clone(),
                "index": torch.arange(16)}  # fmt: skip

    def make_probe(self, method, seed):
        cfg = run_preset("tiny")
        batch = self.batch()
        seed_everything(seed)
        model = build_model(cfg.model)
        state: dict = {}
        if method == "erm":
            step_fn = erm_step
        elif method == "gce":  # GCE on the labels (run_gce sets bias_hat = label)
            step_fn = make_gce_step(cfg.gce_q, "bias_hat")
        elif method == "lff":  # GCE(f_B) + W * CE(f_D), W from the per-sample loss EMAs
            model = BiasedDebiasedPair(model, build_model(cfg.model))
            state = {"ema_b": LossEMA(16, cfg.lff_ema), "ema_d": LossEMA(16, cfg.lff_ema)}
            step_fn = make_lff_step(cfg.gce_q, batch["label"])
        elif method == "groupdro":
            state = {"dro": GroupDROWeights(4, cfg.groupdro_eta)}
            step_fn = make_groupdro_step(2)
        elif method == "bbs-oracle":
            prior = bias_prior(batch["bias"], batch["label"], 2, 2)
            step_fn = make_bbs_step(log_prior(prior, cfg.prior_eps), "bias")
        elif method == "pbbl":  # stage 2, with the prior of stage-1 pseudo labels
            seed_everything(seed + 1)
            biased = build_model(cfg.model)
            opt = make_optimizer(biased, cfg)
            gce = make_gce_step(cfg.gce_q, "bias_hat")
            for _ in range(3):
                opt.zero_grad()
                gce(biased, batch, None).backward()
                opt.step()
            with torch.no_grad():
                probs = torch.softmax(biased.eval()(batch["image"]), 1)
            batch["bias_hat"], _ = pseudo_bias_labels(probs, batch["label"])
            prior = bias_prior(batch["bias_hat"], batch["label"], 2, 2)
            step_fn = make_bbs_step(log_prior(prior, cfg.prior_eps), "bias_hat")
        else:
            raise AssertionError(f"no step probe for the new method {method!r}: add one here")
        opt = make_optimizer(model, cfg)

        def loss_of(out):
            return out["loss"] if isinstance(out, dict) else out

        def loss() -> float:  # the objective on the batch, on copies (no update, no EMA move)
            m, s = copy.deepcopy(model), copy.deepcopy(state)
            with torch.no_grad():
                return float(loss_of(step_fn(m, batch, SimpleNamespace(state=s))))

        def step() -> None:
            opt.zero_grad()
            loss_of(step_fn(model, batch, SimpleNamespace(state=state))).backward()
            opt.step()

        return MethodProbe(loss=loss, step=step, state=model.state_dict)


# ------------------------------------------------------------------- pbbl's run folder
@pytest.fixture(scope="module")
def pbbl_run(tmp_path_factory, gbp_tiny: Path) -> Path:
    out = tmp_path_factory.mktemp("pbbl-run") / "run"
    assert run(["train", "--data", gbp_tiny, "--out", out, "--method", "pbbl", *FAST]) == 0
    return out


def test_pbbl_run_folder_and_evaluate(pbbl_run: Path, gbp_tiny: Path):
    r = load_run(pbbl_run, package=PACKAGE)
    assert r.info.extra["data_options"]["image_size"] == 24
    # default cross-fitting: one stage-1 model per fold (issue 10)
    want = ["bias-r1-f0", "bias-r1-f1", "bias-r1-f2", "debias"]
    assert sorted(p.name for p in r.checkpoint_dir.iterdir()) == want
    lines = [json.loads(x) for x in (pbbl_run / "log.jsonl").read_text().splitlines()]
    assert any("pseudo_labels" in x for x in lines)
    with open(pbbl_run / "pseudo_bias.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "bias", "bias_hat"] and len(rows) == 96
    assert {r["bias_hat"] for r in rows} <= {"0", "1"}
    want = np.mean([int(r["bias"]) == int(r["bias_hat"]) for r in rows])
    metrics = r.metrics()
    assert metrics["pseudo_bias_accuracy"] == pytest.approx(want, rel=1e-6)  # float32 mean
    assert run(["evaluate", "--run", pbbl_run, "--data", gbp_tiny, "--quiet"]) == 0
    ev = json.loads((pbbl_run / "eval-test.json").read_text())
    assert ev["n"] == 32 and {"auc", "ap", "acc_worst_group", "acc_y1_b0"} <= set(ev)
    assert ev["auc_balanced"] == pytest.approx((ev["auc_aligned"] + ev["auc_conflicting"]) / 2)


def test_resume_of_a_finished_pbbl_run_keeps_its_model(pbbl_run: Path, gbp_tiny: Path, tmp_path):
    out = _copy(pbbl_run, tmp_path / "r")
    before = load_file(str(out / "model" / "model.safetensors"))
    args = ["train", "--data", gbp_tiny, "--out", out, "--method", "pbbl", *FAST]
    assert run(args) == 2  # an existing run folder needs --resume
    assert run([*args, "--resume"]) == 0
    after = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (out / "pseudo_bias.csv").read_text().count("\n") == 97  # header + 96 images


def test_a_large_finite_lr_diverges_and_leaves_every_folder_as_it_was(
    pbbl_run: Path, gbp_tiny: Path, tmp_path, capsys
):
    """Issue #20: lr=100 used to give exit 0 and garbage (loss ~1e13, AUC 0.5). Now stage
    2's loss passes medcommon's growth bound (1e4 x its start) at step 2: exit 2, one line
    with advice; a new --out is not created, an empty one stays empty, an --overwrite of a
    finished run leaves it byte for byte; the same commands then work at a sane lr."""
    fresh, empty = tmp_path / "fresh", tmp_path / "empty"
    empty.mkdir()
    old = _copy(pbbl_run, tmp_path / "old")
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    for out, extra in ((fresh, []), (empty, []), (old, ["--overwrite"])):
        argv = ["train", "--data", gbp_tiny, "--out", out, "--method", "pbbl", *FAST, *extra]
        capsys.readouterr()
        assert run([*argv, "--set", "lr=100"]) == 2
        err = capsys.readouterr().err
        errors = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err
        assert errors[0].startswith("error: training: diverged: loss is ")
        assert "in stage debias, more than 10000 x its start" in errors[0]
        assert "lower the learning rate" in errors[0]
        if out == fresh:
            assert not fresh.exists()
        elif out == empty:
            assert list(empty.iterdir()) == []
        else:
            assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        assert run(argv) == 0, capsys.readouterr().err
        assert load_run(out, package=PACKAGE).metrics() is not None


def test_a_flat_config_json_is_refused(pbbl_run: Path, gbp_tiny, tmp_path, capsys):
    """A ``config.json`` without the run header (run facts mixed into the config fields, as
    before the one schema) is no run folder: exit 2, one line naming the file."""
    from medcommon.config import config_to_dict

    old = tmp_path / "flat-run"
    shutil.copytree(pbbl_run / "model", old / "model")
    cfg = load_run(pbbl_run, package=PACKAGE).config_as(RunConfig)
    flat = {"method": "pbbl", "seed": 0, "preset": "tiny", "data": str(gbp_tiny),
            **config_to_dict(cfg)}  # fmt: skip
    (old / "config.json").write_text(json.dumps(flat))
    capsys.readouterr()
    assert run(["evaluate", "--run", old, "--data", gbp_tiny, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"error: {old / 'config.json'}: not a run header "
        + '(expected {"schema", "run", "config"})'
    )
    assert not (old / "eval-test.json").exists()


# ------------------------------------------------------------------ the run specification
def test_presets_by_name_shorthands_and_data_flags(gbp_tiny: Path, tmp_path: Path):
    """``--preset`` takes any file of configs/ (the run section is its base config);
    ``--checkpoint-every`` is the field ``checkpoint_every`` (a ``--set`` wins);
    ``--label-column``/``--bias-column`` land in the run's data options."""
    out = tmp_path / "run"
    args = ["train", "--data", gbp_tiny, "--out", out, "--method", "erm", "--preset", "tiny",
            *FAST, "--checkpoint-every", 1, "--label-column", "pneumothorax",
            "--bias-column", "gender"]  # fmt: skip
    assert run(args) == 0
    r = load_run(out, package=PACKAGE)
    cfg = r.config_as(RunConfig)
    want = replace_nested(run_preset("tiny"), steps=2, bias_steps=2, eval_every=1)
    assert cfg == replace_nested(want, checkpoint_every=1)
    assert (r.info.preset, r.info.method, r.info.seed) == ("tiny", "erm", 0)
    assert r.info.extra["data_options"]["label_column"] == "pneumothorax"
    assert r.info.extra["data_options"]["bias_column"] == "gender"
    out2 = tmp_path / "run2"
    args2 = ["train", "--data", gbp_tiny, "--out", out2, "--method", "erm", *FAST,
             "--checkpoint-every", 1, "--set", "checkpoint_every=3"]  # fmt: skip
    assert run(args2) == 0
    assert load_run(out2, package=PACKAGE).config_as(RunConfig).checkpoint_every == 3
    assert load_run(out2, package=PACKAGE).info.preset == "tiny"  # the default preset


def test_run_specification_errors_write_nothing(pbbl_run: Path, gbp_tiny, tmp_path, capsys):
    """Unknown preset, missing --image-root, and a --resume changing a fixed setting
    (or the method or seed) are one error line; nothing is written or changed."""
    out = tmp_path / "run"
    train = ["train", "--data", gbp_tiny, "--out", out, "--method", "erm", *FAST]
    cases = {
        "--preset": ([*train, "--preset", "huge"], "--preset: unknown preset 'huge'; choose "
                     "from tiny, demo, small, full, gbp-paper, gbp-robust, sbp-paper, sbp-robust"),
        "--image-root": ([*train, "--image-root", tmp_path / "nowhere"],
                         f"{tmp_path / 'nowhere'}: --image-root folder not found"),
    }  # fmt: skip
    resumed = _copy(pbbl_run, tmp_path / "resumed")
    before = {p: p.read_bytes() for p in resumed.rglob("*") if p.is_file()}
    again = ["train", "--data", gbp_tiny, "--out", resumed, *FAST, "--resume"]
    cases["resume: lr"] = ([*again, "--set", "lr=0.5"], "--set lr: cannot change a resumed run's")
    cases["resume: method"] = ([*again, "--method", "erm"], "--method: the run was started with")
    cases["resume: seed"] = ([*again, "--seed", "3"], "--seed: the run was started with 0, not 3")
    for case, (argv, message) in cases.items():
        capsys.readouterr()
        assert run(argv) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, (case, err)
        assert message in err, (case, err)
    assert not out.exists()
    assert {p: p.read_bytes() for p in resumed.rglob("*") if p.is_file()} == before


def test_train_run_from_python_equals_the_console_script(gbp_tiny: Path, tmp_path: Path):
    """A :class:`RunSpec` built in Python (device ``auto``, no seed) trains the model the
    console script trains, and writes the same run header."""
    from medcommon.run import RunSpec
    from pbbl_cxr.run import train_run

    cli, py = tmp_path / "cli", tmp_path / "py"
    assert run(["train", "--data", gbp_tiny, "--out", cli, "--method", "lff", *FAST]) == 0
    spec = RunSpec(PACKAGE, __version__, "train", out=py, data=gbp_tiny, method="lff",
                   preset="tiny", overrides=("steps=2", "bias_steps=2", "eval_every=1"),
                   quiet=True)  # fmt: skip
    metrics = train_run(spec)
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (cli, py))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = load_run(py, package=PACKAGE)
    assert saved.metrics()["valid"] == metrics["valid"] == load_run(cli).metrics()["valid"]
    assert (saved.info.method, saved.info.seed, saved.info.preset) == ("lff", 0, "tiny")
    assert saved.config == load_run(cli).config


def test_every_preset_file_loads_for_every_section():
    """Every selectable preset (and the standard four) resolves every section to a
    valid config; the bases are not selectable."""
    names = PRESETS.names()
    assert {"tiny", "demo", "small", "full", "gbp-paper", "sbp-paper", "gbp-robust",
            "sbp-robust"} <= set(names)  # fmt: skip
    assert not any(n.startswith("_") for n in names)
    for name in names:
        run_preset(name).check()
        synth_preset(name).check()
        bench = benchmark_preset(name)
        assert bench.kinds and bench.ratios and set(bench.kinds) <= {"gbp", "sbp"}
        assert set(bench.methods) <= set(method_names()), name
        assert preset_settings(name), name


def test_pbbl_needs_no_bias_labels_and_still_selects(gbp_tiny, tmp_path, capsys):
    # issue 10: PBBL selects on the pseudo-balanced valid AUC, so no bias column is needed
    data = _copy(gbp_tiny, tmp_path / "d")
    for name in ("train", "valid"):
        _edit_csv(data / f"{name}.csv", lambda x: [",".join(r.split(",")[:2]) for r in x])
    assert run(["train", "--data", data, "--out", tmp_path / "ok", "--method", "pbbl", *FAST]) == 0
    assert "kept the final weights" not in capsys.readouterr().err
    metrics = load_run(tmp_path / "ok", package=PACKAGE).metrics()
    assert metrics["selection"] == "best pseudo_balanced_auc on valid"
    assert "auc_balanced" not in metrics["valid"] and "pseudo_balanced_auc" in metrics["valid"]


# ------------------------------------------------------------------------------ predict
def _predict(args: list, capsys) -> list[dict[str, str]]:
    capsys.readouterr()
    assert run(["predict", *args, "--quiet"]) == 0
    return list(csv.DictReader(capsys.readouterr().out.splitlines()))


def test_predict_real_radiograph_and_its_jpeg2000_twin(pbbl_run: Path, tmp_path, capsys):
    """NEMA WG04 chest CR (MONOCHROME1, PixelSpacing 0\\0), uncompressed and J2K lossless."""
    plain, twin = pydicom_data_file("RG1_UNCR.dcm"), pydicom_data_file("RG1_J2KR.dcm")
    out = tmp_path / "pred.csv"
    assert run(["predict", "--run", pbbl_run, plain, twin, "--out", out, "--quiet"]) == 0
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [str(plain), str(twin)]
    p = [float(r["p_y1"]) for r in rows]
    assert all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in p)
    assert p[0] == p[1]  # lossless twins: the same pixels, so the same probability
    assert _predict(["--run", pbbl_run, plain], capsys) == rows[:1]  # stdout == the file


def test_predict_warns_about_what_is_not_a_chest_radiograph(pbbl_run: Path, gbp_tiny, capsys):
    """An extremity CR (NEMA WG04 RG3, BodyPartExamined EXTREMITY) and an RGB secondary
    capture (Modality OT) are scored, with one warning line each on stderr (issue #20);
    the chest CR is not warned about, nor is a PNG (no header to go by)."""
    chest, limb = pydicom_data_file("RG1_UNCR.dcm"), pydicom_data_file("RG3_UNCR.dcm")
    rgb = pydicom_data_file("SC_rgb.dcm")
    png = gbp_tiny / "images" / "test_00000.png"
    capsys.readouterr()
    assert run(["predict", "--run", pbbl_run, chest, limb, rgb, png, "--quiet"]) == 0
    out, err = capsys.readouterr()
    got = [r["path"] for r in csv.DictReader(out.splitlines())]
    assert got == [str(chest), str(limb), str(rgb), str(png)]
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines == [
        f"warning: {limb}: BodyPartExamined EXTREMITY: not a chest radiograph; scored anyway, "
        "but the model was trained on chest radiographs",
        f"warning: {rgb}: Modality OT, RGB colour: not a chest radiograph; scored anyway, "
        "but the model was trained on chest radiographs",
    ]


def test_predict_on_png_folders_matches_evaluate(pbbl_run: Path, gbp_tiny: Path, tmp_path, capsys):
    """Files found recursively get exactly the probabilities evaluate scores them with."""
    test = load_split(gbp_tiny, "test", DataOptions(image_size=24))
    want = predict_probs(load_run_model(pbbl_run), test)[:, 1]
    folder = tmp_path / "pngs"
    for i, path in enumerate(test.paths):
        dst = folder / f"site{i % 2}" / ("deep" if i % 3 else "") / Path(path).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dst)
    (folder / "notes.txt").write_text("not an image, not a match")
    rows = _predict(["--run", pbbl_run, folder], capsys)
    assert len(rows) == len(test.paths)
    got = {Path(r["path"]).name: float(r["p_y1"]) for r in rows}
    for path, p in zip(test.paths, want.tolist()):
        assert got[Path(path).name] == pytest.approx(p, abs=5e-7)  # 6 decimals in the CSV


# ---------------------------------------------------------------- synth, splits, benchmark
def test_synth_writes_the_sbp_layout(tmp_path: Path):
    out = tmp_path / "syn"
    args = ["synth", out, "--preset", "tiny", "--kind", "sbp", "--bias-ratio", "0.9", "--quiet"]
    assert run(args) == 0
    names = sorted(p.name for p in out.glob("*.csv"))
    assert names == ["test.csv", "train_MIMIC.csv", "train_NIH.csv", "valid.csv"]
    info = json.loads((out / "dataset.json").read_text())
    assert info["kind"] == "sbp" and info["bias_ratio"] == 0.9
    with open(out / "train_MIMIC.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["MIMIC"] for r in rows} == {"1"} and all((out / r["path"]).is_file() for r in rows)


def _nih_csv(path: Path, n_patients: int = 240) -> None:
    rng = np.random.default_rng(0)
    lines = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
    ]
    findings = ["No Finding", "Pneumothorax", "Pneumonia", "Effusion|Pneumothorax", "Mass"]
    for p in range(n_patients):
        sex = "M" if p % 2 else "F"
        for k in range(2):
            finding = findings[rng.integers(0, 5)]
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
        groups: dict = {}
        for r in rows:
            key = (r["pneumothorax"], r["gender"])
            groups[key] = groups.get(key, 0) + 1
        if split == "train":
            assert groups == {("0", "0"): 18, ("1", "1"): 18, ("1", "0"): 2, ("0", "1"): 2}
        else:
            assert set(groups.values()) == {4}
    assert not (patients["train"] & patients["test"])
    assert not (patients["train"] & patients["valid"])
    assert run([*args, "--n-test", 3]) == 2  # too small a split


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
        "build-splits", "--kind", "sbp", "--nih-csv", tmp_path / "nih.csv", "--out", out,
        "--mimic-chexpert", tmp_path / "chex.csv", "--mimic-metadata", tmp_path / "meta.csv",
        "--n-train", 40, "--n-valid", 8, "--n-test", 8, "--bias-ratio", 0.9,
    ]  # fmt: skip
    assert run(args) == 0
    mimic = (out / "train_MIMIC.csv").read_text().splitlines()
    assert mimic[0] == "path,pneumonia,MIMIC"
    assert mimic[1].startswith("MIMIC/files/p10/p100")
    assert len(mimic) - 1 == 20  # 18 aligned positives + 2 conflicting negatives


def test_benchmark_smoke(tmp_path: Path):
    out = tmp_path / "bench"
    args = ["benchmark", "--out", out, "--preset", "tiny", "--seeds", "0", "--kinds", "gbp"]
    fast = ["--set", "steps=2", "--set", "bias_steps=2", "--threads", "1", "--quiet"]
    assert run([*args, "--ratios", "0.9", *fast]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == [*METHODS.names(), "pbbl-oracle-select"]
    assert results["rows"][0]["setting"] == "gbp-0.9"
    assert results["provenance"]["threads"] == 1  # --threads, pinned and recorded
    assert len(results["claims"]) == 5  # the declared claims of one shortcut setting
    assert all(set(c) >= CLAIM_KEYS for c in results["claims"])
    assert results["extra"]["stage2_step_over_erm_step"] > 0
    assert results["extra"]["pbbl_pipeline_over_erm"] > 0
    assert (out / "report.md").read_text().startswith("# pbbl-cxr benchmark")
    assert (out / "auc_conflicting.png").is_file() and (out / "pseudo_label_accuracy.png").is_file()


def test_benchmark_on_a_dataset_folder(tmp_path: Path, sbp_tiny: Path):
    out = tmp_path / "bench"
    args = ["benchmark", "--out", out, "--preset", "tiny", "--seeds", "0", "--data", sbp_tiny]
    assert run([*args, "--methods", "erm", "pbbl", "--threads", "1", *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["erm", "pbbl"]
    assert results["rows"][0]["setting"] == "data"
