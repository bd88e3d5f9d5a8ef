"""The shared suites of medai_testkit, run on a toy console script built on medcommon.

The toy is a package in miniature: an :class:`App`, a method registry, a config
dataclass, the :class:`Trainer`, and a run folder opened by :func:`medcommon.run.open_run`.
Passing here shows the suites work; the ``Broken*`` variants show they can fail.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from medai_testkit import CLIContract, MethodProbe, MethodStepContract
from medcommon.cli import App, add_train_args
from medcommon.errors import Diverged, InputError
from medcommon.registry import Registry
from medcommon.run import RunSpec, load_run, make_run_info, open_run, write_run_config
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
    return train(app.spec(args))


def train(spec: RunSpec) -> int:
    """A package's train command in miniature: open the run, check inputs, header, fit."""
    if spec.preset not in (None, "tiny", "small"):
        raise InputError("--preset", f"unknown preset {spec.preset!r}; choose from tiny, small")
    run = open_run(spec, ToyConfig, base=lambda s: ToyConfig(), resumable=("steps",))
    METHODS.get(run.method)
    if "writes-before-checking" in BROKEN:
        spec.out.mkdir(parents=True, exist_ok=True)
    data = _load_data(spec.data)
    cfg = run.cfg
    if "flat-config" in BROKEN:
        spec.out.mkdir(parents=True, exist_ok=True)
        (spec.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        return _fit(run, cfg, data)
    if "keeps-failed-runs" in BROKEN:  # writes its header, never cleans up
        run.start()
        return _fit(run, cfg, data)
    with run.writing():
        return _fit(run, cfg, data)


def _fit(run, cfg: ToyConfig, data: TensorDataset) -> int:
    seed_everything(run.seed)
    model = _net(cfg.width)
    trainer = Trainer(
        model,
        METHODS.get(run.method)(model.parameters(), cfg.lr),
        data,
        lambda m, b, ctx: torch.nn.functional.mse_loss(m(b[0]), b[1]),
        config=TrainConfig(max_steps=cfg.steps, batch_size=cfg.batch_size, checkpoint_every=1),
        run_dir=run.path,
        seed=run.seed,
        model_config={"width": cfg.width},
        device="cpu",
        quiet=True,
    )
    if run.resumed and "resume-restarts" in BROKEN:
        # the classic bug: continue from the saved weights but restart the optimizer and count
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(run.path / "model" / "model.safetensors")))
        result = trainer.fit(resume=False)
    else:
        result = trainer.fit(resume=run.resumed)
    run.finish({"steps": result.steps})
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


def test_suite_catches_a_failed_run_left_behind(tmp_path, capsys):
    data = _write_data(tmp_path / "data")
    _run_broken(
        "keeps-failed-runs",
        ToyContract().test_bad_inputs_exit_2_leave_nothing_and_a_retry_works,
        data,
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


# -- medcommon.run: the one schema, and opening a run --------------------------------


def test_load_run_reads_the_schema_written(tmp_path):
    info = make_run_info(
        "toy", VERSION, method="adam", seed=3, preset="tiny", data=tmp_path, fold=2
    )
    write_run_config(tmp_path / "r", info, ToyConfig(lr=0.1))
    run = load_run(tmp_path / "r", package="toy")
    assert run.info == info
    assert run.info.extra == {"fold": 2}
    assert run.config_as(ToyConfig) == ToyConfig(lr=0.1)
    assert run.metrics() is None
    with pytest.raises(InputError, match="a run of toy, not of other"):
        load_run(tmp_path / "r", package="other")


def test_load_run_refuses_other_schemas(tmp_path):
    # an unreleased earlier layout (config fields and run facts mixed): not read, named
    (tmp_path / "config.json").write_text(json.dumps({"method": "sgd", "steps": 2}))
    with pytest.raises(InputError, match="not a run header"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"schema": 2, "run": {}, "config": {}}))
    with pytest.raises(InputError, match="schema 2"):
        load_run(tmp_path)


def _spec(tmp_path, **kw) -> RunSpec:
    return RunSpec("toy", VERSION, "train", out=tmp_path / "run", data=tmp_path, **kw)


def test_open_run_resolves_preset_file_and_overrides_then_writes_once(tmp_path):
    run = open_run(
        _spec(tmp_path, method="adam", overrides=("lr=0.2",)),
        ToyConfig,
        base=lambda s: ToyConfig(steps=9),
    )
    assert run.cfg == ToyConfig(steps=9, lr=0.2) and run.seed == 0 and not run.resumed
    assert not (tmp_path / "run").exists()  # nothing written before start()
    run.start(fold=1)
    saved = load_run(tmp_path / "run", package="toy")
    assert (saved.info.method, saved.info.seed, saved.info.extra) == ("adam", 0, {"fold": 1})
    assert saved.config_as(ToyConfig) == ToyConfig(steps=9, lr=0.2)


def test_open_run_resume_takes_the_run_and_allows_only_resumable_changes(tmp_path):
    first = open_run(_spec(tmp_path, method="adam", seed=4), ToyConfig, base=lambda s: ToyConfig())
    first.start()
    header = (tmp_path / "run" / "config.json").read_text()
    never = lambda s: pytest.fail("a resumed run must not read its preset again")  # noqa: E731
    again = open_run(_spec(tmp_path, resume=True), ToyConfig, base=never, resumable=("steps",))
    assert (again.method, again.seed, again.resumed) == ("adam", 4, True)
    again.start()
    assert (tmp_path / "run" / "config.json").read_text() == header  # unchanged: not rewritten
    longer = open_run(
        _spec(tmp_path, resume=True, overrides=("steps=8",)), ToyConfig, base=never,
        resumable=("steps",),
    )  # fmt: skip
    longer.start()
    assert load_run(tmp_path / "run").config_as(ToyConfig).steps == 8
    for kw, where in (
        ({"overrides": ("lr=0.5",)}, "--set lr"),
        ({"method": "sgd"}, "--method"),
        ({"seed": 5}, "--seed"),
    ):
        with pytest.raises(InputError, match=where):
            open_run(_spec(tmp_path, resume=True, **kw), ToyConfig, base=never,
                     resumable=("steps",))  # fmt: skip
    with pytest.raises(InputError, match="a train run"):
        open_run(
            RunSpec("toy", VERSION, "unlearn", out=tmp_path / "run", resume=True),
            ToyConfig,
            base=never,
        )


def test_open_run_refuses_a_used_out_and_a_missing_resume(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("keep me")
    with pytest.raises(InputError, match="already exists and is not empty"):
        open_run(_spec(tmp_path, method="sgd"), ToyConfig, base=lambda s: ToyConfig())
    with pytest.raises(InputError, match="nothing to --resume"):
        open_run(
            RunSpec("toy", VERSION, "train", out=tmp_path / "nope", resume=True),
            ToyConfig,
            base=lambda s: ToyConfig(),
        )
    assert not (tmp_path / "nope").exists()


def test_load_run_errors_name_the_folder(tmp_path):
    with pytest.raises(InputError, match="run folder not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(InputError, match="no config.json"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        load_run(tmp_path)


def _failing_run(tmp_path, **kw):
    """A run whose body fails with bad input after writing its header and a file."""
    run = open_run(_spec(tmp_path, method="sgd", **kw), ToyConfig, base=lambda s: ToyConfig())
    with pytest.raises(InputError, match="diverged"), run.writing():
        (run.path / "checkpoint").mkdir()
        (run.path / "checkpoint" / "model.safetensors").write_bytes(b"x")
        raise Diverged("loss is nan at step 3")
    return run


def test_a_failed_new_run_leaves_nothing_and_can_be_retried(tmp_path):
    _failing_run(tmp_path)
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # an empty folder given as --out stays, empty
    _failing_run(tmp_path)
    assert (tmp_path / "run").is_dir() and not any((tmp_path / "run").iterdir())
    run = open_run(_spec(tmp_path, method="sgd"), ToyConfig, base=lambda s: ToyConfig())
    with run.writing():  # the retry into the same --out works
        run.finish({"ok": 1})
    assert load_run(tmp_path / "run").metrics() == {"ok": 1}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_replaces_a_run_only_once_the_new_one_has_finished(tmp_path):
    first = open_run(_spec(tmp_path, method="sgd", seed=1), ToyConfig, base=lambda s: ToyConfig())
    with first.writing():
        first.finish({"run": "first"})
    before = _snapshot(tmp_path / "run")
    with pytest.raises(InputError, match=r"--overwrite to replace it"):
        open_run(_spec(tmp_path, method="sgd"), ToyConfig, base=lambda s: ToyConfig())
    _failing_run(tmp_path, overwrite=True)  # diverges: the old run is bit-identical
    assert _snapshot(tmp_path / "run") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging left
    second = open_run(
        _spec(tmp_path, method="adam", overwrite=True), ToyConfig, base=lambda s: ToyConfig()
    )
    with second.writing():
        assert second.path != tmp_path / "run"  # written beside it meanwhile
        assert _snapshot(tmp_path / "run") == before
        second.finish({"run": "second"})
    assert load_run(tmp_path / "run").info.method == "adam"
    assert load_run(tmp_path / "run").metrics() == {"run": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with pytest.raises(InputError, match="not both"):
        open_run(
            _spec(tmp_path, resume=True, overwrite=True), ToyConfig, base=lambda s: ToyConfig()
        )


def test_a_resumed_run_that_fails_keeps_its_folder(tmp_path):
    run = open_run(_spec(tmp_path, method="sgd"), ToyConfig, base=lambda s: ToyConfig())
    with run.writing():
        pass
    again = open_run(_spec(tmp_path, resume=True), ToyConfig, base=lambda s: ToyConfig())
    with pytest.raises(InputError), again.writing():
        raise Diverged("loss is inf at step 9")
    assert (tmp_path / "run" / "config.json").is_file()
