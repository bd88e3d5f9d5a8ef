"""The console script: the shared contract over every strategy, each strategy's step, and
the smg-specific commands (synth layouts, shorthands, resume, evaluate, sample, predict, benchmark)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medai_testkit import CLIContract, MethodProbe, MethodStepContract
from medcommon.cli import run_main
from medcommon.io import read_image, write_image
from medcommon.models import from_pretrained
from medcommon.run import load_run
from smg_learning import __version__
from smg_learning.cli import main
from smg_learning.config import RunConfig, run_preset
from smg_learning.data import ContinualData, SiteSlices
from smg_learning.replay import ReplayMemory
from smg_learning.segmenter import Segmenter, SegmenterConfig
from smg_learning.smd import SiteModulatedDiffusion
from smg_learning.strategies import STRATEGIES, RunContext
from smg_learning.synth import generate

TWO_STEPS = ["--set", "steps_per_site=2", "--set", "smd.train_steps=2", "--quiet"]
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(argv: list) -> int:
    return run_main(main, [str(a) for a in argv])


def weights(folder) -> dict[str, torch.Tensor]:
    cls = SiteModulatedDiffusion if folder.name == "smd" else Segmenter
    return from_pretrained(cls, folder).state_dict()


# -------------------------------------------------------------------- the shared contract
def _mask_path(data):
    return data / "BMC" / "Case01_segmentation.nii.gz"


def _image_path(data):
    return data / "BMC" / "Case01.nii.gz"


def _write_mask(data, array):
    write_image(_mask_path(data), array, (3.0, 1.0, 1.0))


def _with_voxel(path, value):
    """Write ``path`` back as float32 with one voxel set to ``value``."""
    a = read_image(path).array.astype(np.float32)
    a[1, 3, 4] = value
    write_image(path, a, (3.0, 1.0, 1.0))


def _all_zero(path):
    write_image(path, np.zeros_like(read_image(path).array), (3.0, 1.0, 1.0))


def _cut_in_half(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


# case: (how to spoil a copy of the data, extra argv, text of the error line)
BAD_DATA = {
    "image without its segmentation": (lambda d: _mask_path(d).unlink(), [],
                                       "BMC/Case01.nii.gz: image without its segmentation"),
    "mask of another shape": (lambda d: _write_mask(d, np.zeros((4, 10, 10), np.uint8)), [],
                              "mask shape (4, 10, 10) differs from image shape (4, 24, 24)"),
    # label 2 is foreground by default (the released RUNMC/BMC masks carry it); a
    # declared label set makes it bad input again
    "undeclared mask label": (lambda d: _write_mask(d, np.full((4, 24, 24), 2, np.uint8)),
                              ["--set", "mask_labels=0,1"],
                              "mask has labels [2] not among the declared [0, 1]"),
    "truncated .nii.gz": (lambda d: _cut_in_half(_image_path(d)), [],
                          "Case01.nii.gz: truncated NIfTI"),
    "NaN voxel": (lambda d: _with_voxel(_image_path(d), np.nan), [],
                  "Case01.nii.gz: volume holds 1 NaN or infinite value(s)"),
    "inf voxel": (lambda d: _with_voxel(_image_path(d), np.inf), [],
                  "Case01.nii.gz: volume holds 1 NaN or infinite value(s)"),
    "all-zero volume": (lambda d: _all_zero(_image_path(d)), [],
                        "Case01.nii.gz: volume is all zero"),
    "NaN in a float mask": (lambda d: _with_voxel(_mask_path(d), np.nan), [],
                            "Case01_segmentation.nii.gz: mask holds 1 NaN or infinite value(s)"),
    "unknown site": (None, ["--sites", "RUNMC,UCL"], "error: --sites: unknown site 'UCL'"),
    "unknown held-out site": (None, ["--heldout", "HK"], "error: --heldout: unknown site 'HK'"),
    "site listed twice": (None, ["--sites", "RUNMC,RUNMC"],
                          "error: --sites: site 'RUNMC' is listed twice"),
    "empty site name": (None, ["--sites", "RUNMC,,BMC"],
                        "error: --sites: empty site name in 'RUNMC,,BMC'"),
    "empty site": (lambda d: (d / "UCL").mkdir(), ["--sites", "RUNMC,UCL"],
                   "UCL: site has no cases"),
    "held-out site also trained": (None, ["--sites", "RUNMC,BMC", "--heldout", "BMC"],
                                   "error: --heldout: site 'BMC' is also in --sites"),
    "unknown nested field": (None, ["--set", "pga.nope=1"], "pga.nope: unknown config field"),
    "preset choices": (None, ["--preset", "huge"],
                       "error: --preset: unknown preset 'huge'; choose from tiny, demo, small, full"),
    "bad timestep spacing": (None, ["--set", "smd.timestep_spacing=middle"],
                             "error: smd.timestep_spacing: 'middle' is not one of leading, "
                             "trailing, linspace"),
    "lr zero": (None, ["--set", "lr=0"], "error: --set lr: must be > 0"),
    "smd.lr negative": (None, ["--set", "smd.lr=-1e-4"], "error: --set smd.lr: must be > 0"),
    "pga.inner_lr negative": (None, ["--set", "pga.inner_lr=-0.01"],
                              "error: --set pga.inner_lr: must be >= 0"),
    # large but finite: once exit 0 with a loss of ~1e12 and memorizability 0
    "lr 1e6 diverges": (None, ["--set", "lr=1e6"],
                        "in stage site-RUNMC, more than 10000 x its start"),

    "smd.lr 1e6 diverges": (None, ["--method", "smd-replay", "--set", "smd.lr=1e6"],
                            "in stage smd-site-RUNMC; lower the learning rate (--set smd.lr=...)"),
    "pga.inner_lr 1e6 diverges": (None, ["--method", "pga-real", "--set", "pga.inner_lr=1e6"],
                                  "diverged: PGA's virtual step (pga.inner_lr=1e+06) gave l_gen"),
}  # fmt: skip


def _fake_smd_stages(root, site_names):
    """A folder shaped like a run's ``smd_stages/RUNMC`` whose SMD knows ``site_names``."""
    stage = root / "smd_stages" / "RUNMC"
    stage.mkdir(parents=True)
    (stage / "config.json").write_text(json.dumps({"site_names": site_names}))
    (stage / "model.safetensors").write_bytes(b"")
    return root


class TestContract(CLIContract):
    """Two sites and a held-out one; resuming raises the segmenter's steps per site, so
    the first stage continues and the later ones, trained from its old result, redo."""

    main = staticmethod(main)
    prog, version, package = "smg-learning", __version__, "smg-learning"
    methods = STRATEGIES.names()
    config_class = RunConfig
    short_steps, long_steps = 2, 4

    def make_data(self, root):
        return generate(root / "prostate", "prostate", "tiny", seed=0)

    def train_argv(self, data, out, method, steps):
        return [
            "train",
            *("--data", data, "--out", out, "--method", method),
            *("--sites", "RUNMC,BMC", "--heldout", "I2CVB"),
            *("--set", f"steps_per_site={steps}", "--set", "smd.train_steps=2", "--quiet"),
        ]

    def bad_input_cases(self, data, tmp):
        cases = {}
        for i, (name, (spoil, extra, expected)) in enumerate(BAD_DATA.items()):
            d = data
            if spoil is not None:
                d = tmp / f"data{i}"
                shutil.copytree(data, d)
                spoil(d)
            argv = ["train", "--data", d, "--out", tmp / f"run{i}", *TWO_STEPS, *extra]
            cases[name] = (argv, expected)

        def train(*extra):
            return ["train", "--data", data, "--sites", "RUNMC,BMC", *TWO_STEPS, *extra]

        fundus = generate(tmp / "fundus", "fundus", "tiny", seed=0)
        next((fundus / "Domain2" / "mask").glob("*.png")).unlink()
        cases["fundus PNG without its mask"] = (
            ["train", "--data", fundus, "--out", tmp / "fundus-run", *TWO_STEPS],
            "image without its mask (mask/Domain2_",
        )
        (tmp / "no-smd").mkdir()
        cases["--smd-from not a run"] = (
            train("--method", "smg", "--out", tmp / "smd-a", "--smd-from", tmp / "no-smd"),
            "no-smd: not a run with SMD stages (no smd_stages/)",
        )
        cases["--smd-from missing"] = (
            train("--method", "smg", "--out", tmp / "smd-b", "--smd-from", tmp / "no-such-run"),
            "no-such-run: run folder not found (--smd-from)",
        )
        other = _fake_smd_stages(tmp / "other-sites", ["BMC"])
        cases["--smd-from of other sites"] = (
            train("--method", "smd-replay", "--out", tmp / "smd-c", "--smd-from", other),
            "SMD was trained on sites ['BMC'], not ['RUNMC']",
        )
        cases["--resume of a missing run"] = (
            train("--out", tmp / "never-trained", "--resume"),
            "never-trained: run folder not found (nothing to --resume)",
        )
        (tmp / "not-a-run").mkdir()
        cases["--resume of a folder that is no run"] = (
            train("--out", tmp / "not-a-run", "--resume"),
            "not-a-run: not a run folder (no config.json)",
        )
        # predict, evaluate, sample: bad inputs to a finished run
        trained = tmp / "trained"
        assert run(train("--method", "finetune", "--out", trained)) == 0
        inputs = tmp / "predict-inputs"
        inputs.mkdir()
        for name, spoil in (
            ("nan", lambda f: _with_voxel(f, np.nan)),
            ("zero", _all_zero),
            ("cut", _cut_in_half),
        ):
            shutil.copy(_image_path(data), inputs / f"{name}.nii.gz")
            spoil(inputs / f"{name}.nii.gz")
        for name, case, expected in (
            ("nan", "NaN voxel", "nan.nii.gz: volume holds 1 NaN or infinite value(s)"),
            ("zero", "all-zero volume", "zero.nii.gz: volume is all zero"),
            ("cut", "truncated .nii.gz", "cut.nii.gz: truncated NIfTI"),
        ):
            cases[f"predict: {case}"] = (
                ["predict", "--run", trained, _image_path(data), inputs / f"{name}.nii.gz",
                 "--out", tmp / f"pred-{name}", "--quiet"],
                expected,
            )  # fmt: skip
        cases["predict: not a run"] = (
            ["predict", "--run", tmp / "not-a-run", _image_path(data), "--out", tmp / "pred-x"],
            "not-a-run: not a run folder (no config.json)",
        )
        cases["evaluate: missing run"] = (
            ["evaluate", "--run", tmp / "no-such-run", "--data", data, "--quiet"],
            "no-such-run: run folder not found",
        )
        cases["sample: run without an SMD"] = (
            ["sample", "--run", trained, "--site", "RUNMC", "--out", tmp / "samples"],
            "no SMD model in this run",
        )
        cases["unknown benchmark method"] = (
            ["benchmark", "--out", tmp / "bench", "--methods", "finetune,magic"],
            "unknown method 'magic'",
        )
        cases["unknown benchmark config field"] = (
            ["benchmark", "--out", tmp / "bench2", "--set", "smd.nope=1"],
            "smd.nope: unknown config field",
        )
        cases["benchmark preset"] = (
            ["benchmark", "--out", tmp / "bench3", "--preset", "huge"],
            "error: --preset: unknown preset 'huge'",
        )
        return cases


# ------------------------------------------------------------------- each strategy's step
def _site(name: str, n: int, seed: int, size: int = 16) -> SiteSlices:
    """Discs of random centre and radius: images (n, 1, S, S), masks (n, 1, S, S)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centre = (torch.rand(n, 2, generator=g) - 0.5) * 0.6
    radius = 0.25 + 0.3 * torch.rand(n, generator=g)
    dist = (yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2
    masks = (dist < radius[:, None, None] ** 2).long()[:, None]
    images = (0.2 + 0.6 * masks + 0.05 * torch.randn(masks.shape, generator=g)).clamp(0, 1)
    return SiteSlices(name, [name], images.float(), masks, np.zeros(n, dtype=int))


class _Ctx:
    """The parts of medcommon's StepContext a strategy's step reads (one process, step 0)."""

    class accelerator:  # mimics StepContext.accelerator
        process_index, num_processes = 0, 1

    step = 0


class TestStrategySteps(MethodStepContract):
    """Stage 1 of a two-site run: the current site's fixed batch, plus a fixed replay
    memory of site 0 where the strategy replays; EWC and LwF have finished site 0."""

    methods = STRATEGIES.names()
    steps_to_lower = 2

    def make_probe(self, method, seed):
        cfg = run_preset("tiny")
        a, b = _site("A", 8, seed=1), _site("B", 8, seed=2)
        data = ContinualData("prostate", ["A", "B"], [], {}, {"train": {"A": a, "B": b}}, 1)
        torch.manual_seed(seed)
        model = Segmenter(SegmenterConfig(1, tuple(cfg.channels), cfg.num_res_units))
        strategy = STRATEGIES.get(method)(RunContext(data, cfg, seed=seed))
        if strategy.replay == "none":
            strategy.end_stage(0, model)  # EWC's Fisher, LwF's teacher
        else:
            strategy.memory = ReplayMemory(a.images, a.masks, torch.zeros(len(a)).long())
        strategy.stage = 1
        batch = {"image": b.images[:4], "mask": b.masks[:4]}
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

        def loss() -> float:  # the same replay draw and shifted copies as the step's
            return float(strategy.step(model, batch, _Ctx)["loss"].detach())

        def step() -> None:
            opt.zero_grad()
            strategy.step(model, batch, _Ctx)["loss"].backward()
            opt.step()

        return MethodProbe(loss=loss, step=step, state=model.state_dict)


# ------------------------------------------------------------------------ smg-specific
def test_synth_writes_both_layouts(tmp_path) -> None:
    assert run(["synth", tmp_path / "p", "--preset", "tiny", "--seed", "1", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["BMC", "I2CVB", "RUNMC"]
    assert len(list((tmp_path / "p" / "BMC").glob("Case*_segmentation.nii.gz"))) == 4
    assert run(["synth", tmp_path / "f", "--task", "fundus", "--sites", "2", "--quiet"]) == 0
    img = read_image(tmp_path / "f" / "Domain2" / "image" / "Domain2_000.png").array
    msk = read_image(tmp_path / "f" / "Domain2" / "mask" / "Domain2_000.png").array
    assert img.ndim == 3 and img.shape[:2] == msk.shape and set(np.unique(msk)) == {0, 255}


def test_smd_v32_overlay_sets_the_named_smd_fields(prostate_dir, tmp_path) -> None:
    """``--config benchmarks/smd-v32/config.yaml`` sets the ``smd`` fields it names
    (before ``--set``); the rest keep the preset's; the saved SMD samples with trailing
    spacing and v-prediction."""
    from medcommon.models import from_pretrained
    from smg_learning.smd import SiteModulatedDiffusion

    out = tmp_path / "run"
    argv = ["train", "--data", prostate_dir, "--out", out, "--method", "smd-replay"]
    argv += ["--sites", "RUNMC,BMC", "--config", BENCHMARKS / "smd-v32" / "config.yaml"]
    argv += ["--set", "smd.replay_per_site=2"]
    assert run([*argv, *TWO_STEPS]) == 0
    smd = json.loads((out / "config.json").read_text())["config"]["smd"]
    assert (smd["image_size"], smd["prediction_type"], smd["timestep_spacing"]) == (
        32, "v_prediction", "trailing")  # fmt: skip
    assert (smd["replay_per_site"], smd["train_steps"]) == (2, 2)  # --set wins
    assert smd["num_train_timesteps"] == 100  # not named by the overlay: tiny's
    model = from_pretrained(SiteModulatedDiffusion, out / "smd")
    sched = model.ddim_scheduler()
    assert (sched.config.timestep_spacing, sched.config.prediction_type) == (
        "trailing", "v_prediction")  # fmt: skip


def test_sites_shorthands_set_the_config_fields(prostate_dir, tmp_path) -> None:
    """``--sites``/``--heldout`` are the ``sites``/``heldout`` fields; a ``--set`` wins."""
    out = tmp_path / "run"
    argv = ["train", "--data", prostate_dir, "--out", out, "--method", "finetune"]
    argv += ["--sites", "RUNMC,BMC", "--heldout", "I2CVB", "--set", "sites=BMC,RUNMC"]
    assert run([*argv, *TWO_STEPS]) == 0
    run_ = load_run(out, package="smg-learning")
    assert (run_.config["sites"], run_.config["heldout"]) == (["BMC", "RUNMC"], ["I2CVB"])
    assert (run_.info.extra["sites"], run_.info.preset) == (["BMC", "RUNMC"], "tiny")
    # without them: every site trains, in the public order, and the config says so
    assert run(["train", "--data", prostate_dir, "--out", tmp_path / "all", *TWO_STEPS]) == 0
    assert load_run(tmp_path / "all").config["sites"] == ["RUNMC", "BMC", "I2CVB"]


def test_resume_checks(prostate_dir, tmp_path, capsys) -> None:
    """``--resume`` takes the run's method, seed, sites and split; anything but the step
    counts and cadences is refused; a folder that is no run is an error, not a new run."""
    argv = ["train", "--data", prostate_dir, "--method", "pga-real", "--sites", "RUNMC,BMC"]
    out = tmp_path / "run"
    assert run([*argv, "--out", out, *TWO_STEPS]) == 0
    resume = ["train", "--data", prostate_dir, "--out", out, "--resume", "--quiet"]
    for extra, expected in (
        (["--seed", "3"], "error: --seed: the run was started with 0, not 3"),
        (["--method", "smg"], "error: --method: the run was started with 'pga-real', not 'smg'"),
        (["--set", "image_size=24"], "error: --set image_size: cannot change a resumed run's"),
        (["--sites", "BMC,RUNMC"], "error: --set sites: cannot change a resumed run's setting"),
    ):
        capsys.readouterr()
        assert run([*resume, *extra]) == 2, extra
        assert expected in capsys.readouterr().err
    # method, seed, sites and split come from the run; the steps are raised to 4
    assert run([*resume, "--set", "steps_per_site=4"]) == 0
    assert run([*argv, "--out", tmp_path / "new", "--set", "steps_per_site=4", "--quiet"]) == 0
    wa, wb = weights(out / "model"), weights(tmp_path / "new" / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert load_run(out).config["steps_per_site"] == 4
    # a folder without config.json (e.g. killed before its header) is no run to resume
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert run([*resume[:4], tmp_path / "empty", "--resume", "--quiet"]) == 2
    assert "not a run folder (no config.json)" in capsys.readouterr().err
    assert not any((tmp_path / "empty").iterdir())


def test_train_evaluate_sample(prostate_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", prostate_dir, "--out", out, "--method", "smg"]
    assert run([*argv, "--sites", "RUNMC,BMC", "--heldout", "I2CVB", *TWO_STEPS]) == 0
    for name in ("split.json", "log.jsonl", "smd/model.safetensors", "stages/BMC/config.json",
                 "checkpoint/site-RUNMC", "checkpoint/smd-site-BMC"):  # fmt: skip
        assert (out / name).exists(), name
    assert not (out / "run.json").exists()
    info = load_run(out).info
    assert info.extra == {"task": "prostate", "channels": 1, "sites": ["RUNMC", "BMC"],
                          "heldout": ["I2CVB"]}  # fmt: skip
    assert set(json.loads((out / "split.json").read_text())) == {"RUNMC", "BMC", "I2CVB"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["columns"] == ["RUNMC", "BMC", "I2CVB"]
    assert np.asarray(metrics["dice_matrix"]).shape == (2, 3)
    stages = {json.loads(x).get("stage") for x in (out / "log.jsonl").read_text().splitlines()}
    assert {"site-RUNMC", "site-BMC", "smd-site-RUNMC", "smd-site-BMC"} <= stages

    assert run(["evaluate", "--run", out, "--data", prostate_dir, "--quiet"]) == 0
    ev = json.loads((out / "eval-test.json").read_text())  # recomputes what training recorded
    np.testing.assert_allclose(ev["dice_matrix"], metrics["dice_matrix"], atol=1e-9)
    for key in ("memorizability", "generalizability", "bwt", "hd95"):
        assert ev[key] == pytest.approx(metrics[key])

    samples = tmp_path / "samples"
    argv = ["sample", "--run", out, "--site", "BMC", "--n", "3", "--steps", "2"]
    assert run([*argv, "--out", samples]) == 0
    imgs = sorted((samples / "image").glob("*.png"))
    masks = sorted((samples / "mask").glob("*.png"))
    assert (
        [p.name for p in imgs] == [p.name for p in masks] == [f"BMC_000{i}.png" for i in range(3)]
    )
    assert read_image(imgs[0]).array.shape == (16, 16)
    assert set(np.unique(read_image(masks[0]).array)) <= {0, 255}
    assert json.loads((samples / "sample.json").read_text())["steps"] == 2
    for bad, expected in (
        (["--site", "HK"], "unknown site 'HK'"),
        (["--site", "BMC", "--n", "0"], "--n: must be >= 1"),
        (["--site", "BMC", "--sampler", "euler"], "unknown sampler 'euler'"),
    ):
        capsys.readouterr()
        assert run(["sample", "--run", out, *bad, "--out", tmp_path / "s2"]) == 2
        assert expected in capsys.readouterr().err
        assert not (tmp_path / "s2").exists()


def test_resume_after_a_kill_inside_a_stage(tmp_path, prostate_dir, monkeypatch) -> None:
    import smg_learning.continual as train_mod

    base = ["--data", prostate_dir, "--method", "smd-replay", "--sites", "RUNMC,BMC"]
    base += ["--set", "steps_per_site=4", "--set", "smd.train_steps=4", "--quiet"]
    base += ["--checkpoint-every", "2"]
    assert run(["train", "--out", tmp_path / "a", *base]) == 0

    real_make_step = train_mod.make_step

    def killed_at_bmc_step_3(strategy, cfg, **kw):
        step = real_make_step(strategy, cfg, **kw)

        def wrapped(model, batch, ctx):
            if kw["stage"] == 1 and ctx.step == 2:
                raise KeyboardInterrupt
            return step(model, batch, ctx)

        return wrapped

    monkeypatch.setattr(train_mod, "make_step", killed_at_bmc_step_3)
    assert run(["train", "--out", tmp_path / "b", *base]) == 130
    monkeypatch.setattr(train_mod, "make_step", real_make_step)
    assert not (tmp_path / "b" / "metrics.json").exists()
    assert run(["train", "--out", tmp_path / "b", *base, "--resume"]) == 0
    for name in ("model", "smd"):
        wa, wb = weights(tmp_path / "a" / name), weights(tmp_path / "b" / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["dice_matrix"] == mb["dice_matrix"]


def test_fundus_train_sample_predict(tmp_path, fundus_dir) -> None:
    out = tmp_path / "fundus-run"
    argv = ["train", "--data", fundus_dir, "--out", out, "--method", "smg"]
    assert run([*argv, "--sites", "Domain1,Domain2", "--heldout", "Domain3", *TWO_STEPS]) == 0
    assert json.loads((out / "metrics.json").read_text())["columns"] == [
        "Domain1", "Domain2", "Domain3"
    ]  # fmt: skip
    assert load_run(out).info.extra["channels"] == 3
    argv = ["sample", "--run", out, "--site", "Domain1", "--n", "2", "--steps", "2"]
    assert run([*argv, "--out", tmp_path / "fs"]) == 0
    assert read_image(next((tmp_path / "fs" / "image").glob("*.png"))).array.shape == (16, 16, 3)

    # the whole layout: images found recursively, mask/ folders skipped
    assert run(["predict", "--run", out, fundus_dir / "Domain3", "--out", tmp_path / "p"]) == 0
    images = sorted((fundus_dir / "Domain3" / "image").glob("*.png"))
    written = sorted((tmp_path / "p").iterdir())
    assert [p.name for p in written] == [f"{p.stem}_mask.png" for p in images]
    for src, dst in zip(images, written):
        m = read_image(dst).array
        assert m.shape == read_image(src).array.shape[:2] and set(np.unique(m)) <= {0, 255}


def test_benchmark_tiny(tmp_path) -> None:
    out = tmp_path / "bench"
    argv = ["benchmark", "--out", out, "--preset", "tiny", "--seeds", "0", "--quiet"]
    assert run([*argv, "--methods", "finetune,smg", "--threads", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["rows"]} == {"finetune", "smg"}
    assert res["provenance"]["threads"] == 1  # pinned by --threads and recorded
    # the command measures no costs (benchmarks/costs/ does)
    for key in ("pga_over_plain", "first_over_exact", "ddim_over_ddpm_time", "site_acc_smd"):
        assert key not in res["extra"]
    for name in ("report.md", "summary.png", "dice_smg.png", "smd_samples.png"):
        assert (out / name).is_file()
    claims = "packages/smg_learning/src/smg_learning/claims.py"
    preset = "packages/smg_learning/configs/tiny.yaml"  # the preset file (PRESETS.sources)
    assert list(res["provenance"]["sources"]) == [claims, preset]


def test_benchmark_config_and_set_reach_every_row(tmp_path) -> None:
    """``--config`` and ``--set`` change the rows' base config; the file is a source."""
    out = tmp_path / "bench"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("smd: {ddim_steps: 2}\nsteps_per_site: 3\n")
    argv = ["benchmark", "--out", out, "--preset", "tiny", "--seeds", "0", "--quiet"]
    argv += ["--methods", "finetune,smd-replay", "--config", overlay, "--set", "steps_per_site=2"]
    argv += ["--threads", "1"]
    assert run(argv) == 0
    res = json.loads((out / "results.json").read_text())
    cfg = res["extra"]["config"]
    assert (cfg["smd"]["ddim_steps"], cfg["steps_per_site"]) == (2, 2)
    assert res["extra"]["overrides"] == ["steps_per_site=2"]
    assert str(overlay) in res["provenance"]["sources"]
