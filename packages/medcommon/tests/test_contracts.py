"""The shared suites of medcommon.testing, run on a toy console script built on medcommon.

The toy is a package in miniature: an :class:`App`, a method registry, a config
dataclass, the :class:`Trainer`, and a run folder written by :mod:`medcommon.run`.
Passing here shows the suites work; the ``Broken*`` variants show they can fail.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from medcommon.cli import App, add_train_args, require_fresh_out
from medcommon.config import resolve_config
from medcommon.errors import InputError
from medcommon.registry import Registry
from medcommon.run import load_run, make_run_info, write_metrics, write_run_config
from medcommon.testing import CLIContract, MethodProbe, MethodStepContract
from medcommon.train import TrainConfig, Trainer, seed_everything

VERSION = "9.9.9"
METHODS: Registry = Registry("method")


@METHODS.register("sgd")
def _sgd(params, lr):
    """Plain SGD."""
    return torch.optim.SGD(params, lr=lr)


@METHODS.register("adam")
def _adam(params, lr):
    """Adam (Kingma & Ba 2015)."""
    return torch.optim.Adam(params, lr=lr)


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    steps: int = 4
    lr: float = 0.05
    batch_size: int = 16
    width: int = 8


BROKEN: set[str] = set()  # switched on by the Broken* tests below


def _net(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)
    )


def _load_data(folder: Path) -> TensorDataset:
    path = Path(folder) / "data.json"
    if not path.is_file():
        raise InputError(folder, "dataset folder not found (no data.json)")
    rows = json.loads(path.read_text())
    return TensorDataset(torch.tensor(rows["x"]), torch.tensor(rows["y"]))


app = App("toy", "A toy regression CLI.", VERSION)


@app.command("train", "train one method", args=lambda p: add_train_args(p, METHODS, "sgd"))
def cmd_train(args) -> int:
    cfg = resolve_config(ToyConfig, file=args.config, overrides=args.overrides)
    if "writes-before-checking" in BROKEN:
        args.out.mkdir(parents=True, exist_ok=True)
    data = _load_data(args.data)
    if not args.resume:
        require_fresh_out(args.out)
    info = make_run_info(
        "toy", VERSION, method=args.method, seed=args.seed, preset=args.preset, data=args.data
    )
    if "flat-config" in BROKEN:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    else:
        write_run_config(args.out, info, cfg)
    seed_everything(args.seed)
    model = _net(cfg.width)
    trainer = Trainer(
        model,
        METHODS.get(args.method)(model.parameters(), cfg.lr),
        data,
        lambda m, b, ctx: torch.nn.functional.mse_loss(m(b[0]), b[1]),
        config=TrainConfig(max_steps=cfg.steps, batch_size=cfg.batch_size, checkpoint_every=1),
        run_dir=args.out,
        seed=args.seed,
        model_config={"width": cfg.width},
        device="cpu",
        quiet=True,
    )
    if args.resume and "resume-restarts" in BROKEN:
        # the classic bug: continue from the saved weights but restart the optimizer and count
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(args.out / "model" / "model.safetensors")))
        result = trainer.fit(resume=False)
    else:
        result = trainer.fit(resume=args.resume)
    write_metrics(args.out, {"steps": result.steps})
    return 0


def _write_data(root: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = x[:, :1] * 2 - x[:, 1:2]
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.json").write_text(json.dumps({"x": x.tolist(), "y": y.tolist()}))
    return root


class ToyContract(CLIContract):
    main = staticmethod(app.main)
    prog, version, package = "toy", VERSION, "toy"
    methods = METHODS.names()
    config_class = ToyConfig

    def make_data(self, root):
        return _write_data(root / "data")

    def train_argv(self, data, out, method, steps):
        return [
            "train",
            "--data",
            data,
            "--out",
            out,
            "--method",
            method,
            "--set",
            f"steps={steps}",
        ]

    def bad_input_cases(self, data, tmp):
        return {
            "bad preset": (
                ["train", "--data", data, "--out", tmp / "p", "--preset", "huge"],
                "--preset",
            ),
            "bad lr": (["train", "--data", data, "--out", tmp / "l", "--set", "lr=fast"], "lr"),
        }


class TestToyContract(ToyContract):
    """The suite passes on a correct console script."""


def _run_broken(flag: str, test, *args) -> None:
    BROKEN.add(flag)
    try:
        with pytest.raises(AssertionError):
            test(*args)
    finally:
        BROKEN.discard(flag)


def test_suite_catches_a_run_folder_in_another_schema(tmp_path, capsys):
    data = _write_data(tmp_path / "data")
    _run_broken(
        "flat-config", ToyContract().test_run_folder_round_trips, "sgd", data, tmp_path, capsys
    )


def test_suite_catches_output_written_before_input_is_checked(tmp_path, capsys):
    _run_broken(
        "writes-before-checking",
        ToyContract().test_missing_data_is_exit_2_and_writes_nothing,
        tmp_path,
        capsys,
    )


def test_suite_catches_a_resume_that_restarts(tmp_path, capsys):
    data = _write_data(tmp_path / "data")
    _run_broken(
        "resume-restarts",
        ToyContract().test_resume_equals_an_uninterrupted_run,
        "adam",
        data,
        tmp_path,
        capsys,
    )


# -- the method-step suite ---------------------------------------------------------------


class ToySteps(MethodStepContract):
    methods = METHODS.names()
    lr_sign = 1.0

    def make_probe(self, method, seed):
        torch.manual_seed(seed)
        model = _net(8)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(16, 4, generator=gen)
        y = x[:, :1] * 2 - x[:, 1:2]
        opt = METHODS.get(method)(model.parameters(), 0.05)

        def loss() -> float:
            with torch.no_grad():
                return torch.nn.functional.mse_loss(model(x), y).item()

        def step() -> None:
            opt.zero_grad()
            (self.lr_sign * torch.nn.functional.mse_loss(model(x), y)).backward()
            opt.step()

        return MethodProbe(loss=loss, step=step, state=model.state_dict)


class TestToySteps(ToySteps):
    """The suite passes on correct steps."""


class _AscendingSteps(ToySteps):
    lr_sign = -1.0  # gradient ascent: a sign flip the suite must catch


def test_step_suite_catches_a_sign_flip():
    with pytest.raises(AssertionError, match="did not go down"):
        _AscendingSteps().test_step_lowers_the_loss("sgd")


def test_step_suite_catches_an_unseeded_step():
    class Unseeded(ToySteps):
        def make_probe(self, method, seed):
            return super().make_probe(method, int(torch.randint(0, 10**6, (1,))))

    with pytest.raises(AssertionError, match="differs between two seeded runs"):
        Unseeded().test_step_is_deterministic_under_a_seed("sgd")


# -- medcommon.run: the one schema and the earlier ones ---------------------------------


def test_load_run_reads_the_schema_written(tmp_path):
    info = make_run_info(
        "toy", VERSION, method="adam", seed=3, preset="tiny", data=tmp_path, fold=2
    )
    write_run_config(tmp_path / "r", info, ToyConfig(lr=0.1))
    run = load_run(tmp_path / "r", package="toy", config_class=ToyConfig)
    assert run.info == info
    assert run.info.extra == {"fold": 2}
    assert run.config_as(ToyConfig) == ToyConfig(lr=0.1)
    assert run.metrics() is None
    with pytest.raises(InputError, match="a run of toy, not of other"):
        load_run(tmp_path / "r", package="other")


@pytest.mark.parametrize(
    ("package", "files"),
    [
        (  # pbbl-cxr: method, seed, preset, data and data_options flattened into the config
            "pbbl-cxr",
            {"config.json": {"method": "pbbl", "seed": 1, "preset": "tiny", "data": "/d",
                             "data_options": {"image_root": None}, "steps": 2, "lr": 0.1}},
        ),
        (  # brats-grading: method, seed, preset flattened
            "brats-grading",
            {"config.json": {"method": "pbbl", "seed": 1, "preset": "tiny", "steps": 2, "lr": 0.1}},
        ),
        (  # smg-learning: a pure config plus run.json
            "smg-learning",
            {"config.json": {"steps": 2, "lr": 0.1},
             "run.json": {"package": "smg-learning", "version": "0.1.0", "method": "pbbl",
                          "seed": 1, "preset": "tiny", "task": "prostate"}},
        ),
        (  # unlearn-bench: facts with the config nested under "config"
            "unlearn-bench",
            {"config.json": {"package": "unlearn-bench", "version": "0.1.0", "command": "unlearn",
                             "method": "pbbl", "seed": 1, "data": "/d", "vanilla_model": "/v",
                             "config": {"steps": 2, "lr": 0.1}}},
        ),
    ],
)  # fmt: skip
def test_load_run_reads_the_four_earlier_schemas(tmp_path, package, files):
    for name, payload in files.items():
        (tmp_path / name).write_text(json.dumps(payload))
    run = load_run(tmp_path, package=package, config_class=ToyConfig)
    assert run.schema.startswith("legacy-")
    assert run.info.package == package
    assert (run.info.method, run.info.seed) == ("pbbl", 1)
    assert run.config_as(ToyConfig) == ToyConfig(steps=2, lr=0.1)


def test_load_run_errors_name_the_folder(tmp_path):
    with pytest.raises(InputError, match="run folder not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(InputError, match="no config.json"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        load_run(tmp_path)
