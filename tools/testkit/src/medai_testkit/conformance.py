"""Shared test suites, adopted by subclassing in a package's tests (never imported by a
runtime package: ``import medcommon`` does not need pytest).

- :class:`ModelConformance`: forward gives finite tensors, every trainable
  parameter receives a finite gradient, seeded construction is deterministic,
  ``save_pretrained``/``from_pretrained`` round-trips the outputs exactly::

      class TestMyNet(ModelConformance):
          def make_model(self):
              return MyNet(MyNetConfig(width=4))

          def make_input(self):
              return torch.randn(2, 1, 32, 32)

- :class:`CLIContract`: the console-script contract (``--version``, bad input is
  exit 2 with one line and nothing written, the run folder round-trips through
  :mod:`medcommon.run`, resume equals an uninterrupted run), parametrised over
  the package's method registry.
- :class:`MethodStepContract`: every registered method's step lowers its loss on
  a fixed batch and is deterministic under a seed.
Helpers live beside them: :mod:`medai_testkit.distributed` (two-process checks),
:mod:`medai_testkit.gpu` (the ``gpu`` steps), :mod:`medai_testkit.files` (real DICOMs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from medai_testkit.distributed import assert_same_safetensors
from medcommon.models import from_pretrained, save_pretrained


def _tensors(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    if hasattr(out, "to_tuple"):
        return _tensors(out.to_tuple())
    return []


class ModelConformance:
    """Mix into a pytest class and implement :meth:`make_model` and :meth:`make_input`."""

    seed = 0

    def make_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def make_input(self) -> Any:
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, inputs: Any) -> Any:
        """How to call the model; override for keyword inputs."""
        return model(*inputs) if isinstance(inputs, tuple) else model(inputs)

    def model_config(self, model: torch.nn.Module) -> Any:
        """The config to save; by default ``model.config``."""
        return model.config

    def _build(self) -> torch.nn.Module:
        torch.manual_seed(self.seed)
        return self.make_model()

    def test_forward_is_finite(self) -> None:
        model = self._build().eval()
        torch.manual_seed(self.seed)
        out = _tensors(self.forward(model, self.make_input()))
        assert out, "forward returned no tensors"
        for t in out:
            assert torch.isfinite(t).all(), "forward produced NaN or inf"

    def test_every_parameter_gets_a_gradient(self) -> None:
        model = self._build().train()
        torch.manual_seed(self.seed)
        out = _tensors(self.forward(model, self.make_input()))
        sum(t.float().square().mean() for t in out if t.is_floating_point()).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without gradient: {missing[:10]}"
        bad = [
            n
            for n, p in model.named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        assert not bad, f"non-finite gradients: {bad[:10]}"

    def test_seeded_construction_is_deterministic(self) -> None:
        a, b = self._build(), self._build()
        for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(pa, pb), f"{na} differs between two builds with the same seed"

    def test_save_load_round_trip(self, tmp_path) -> None:
        model = self._build().eval()
        save_pretrained(model, tmp_path / "m", self.model_config(model))
        loaded = from_pretrained(type(model), tmp_path / "m").eval()
        torch.manual_seed(self.seed)
        inputs = self.make_input()
        with torch.no_grad():
            for x, y in zip(
                _tensors(self.forward(model, inputs)), _tensors(self.forward(loaded, inputs))
            ):
                assert torch.equal(x, y), "outputs differ after save/load"
        cfg = self.model_config(model)
        if dataclasses.is_dataclass(cfg):
            assert self.model_config(loaded) == cfg, "config changed through save/load"


@dataclasses.dataclass
class MethodProbe:
    """One method's training step on a fixed batch, for :class:`MethodStepContract`.

    ``loss()`` evaluates the method's objective on the fixed batch without updating;
    ``step()`` applies one update on it; ``state()`` returns the weights (name -> tensor).
    """

    loss: Callable[[], float]
    step: Callable[[], object]
    state: Callable[[], dict[str, torch.Tensor]]


class MethodStepContract:
    """Shared checks of every registered method's step, parametrised over the registry.

    Adopt it in a few lines::

        class TestMethodSteps(MethodStepContract):
            methods = METHODS.names()

            def make_probe(self, method, seed):
                ...  # a tiny model, a fixed batch, the method's step function
                return MethodProbe(loss=..., step=..., state=...)

    Checks: a step lowers the method's own objective on its fixed batch (after
    ``steps_to_lower`` steps, default 1), and two probes built with the same seed
    end with identical weights. A method added to the registry is tested the day
    it is added.
    """

    methods: Sequence[str] = ()
    steps_to_lower: int | Mapping[str, int] = 1

    def make_probe(self, method: str, seed: int) -> MethodProbe:
        raise NotImplementedError

    def pytest_generate_tests(self, metafunc) -> None:
        if "method" in metafunc.fixturenames:
            if not self.methods:
                raise ValueError(f"{type(self).__name__}.methods is empty")
            metafunc.parametrize("method", list(self.methods))

    def _steps(self, method: str) -> int:
        n = self.steps_to_lower
        return int(n.get(method, 1)) if isinstance(n, Mapping) else int(n)

    def test_step_lowers_the_loss(self, method: str) -> None:
        probe = self.make_probe(method, 0)
        before = float(probe.loss())
        for _ in range(self._steps(method)):
            probe.step()
        after = float(probe.loss())
        assert math.isfinite(after), f"{method}: loss is {after} after the step"
        assert after < before, f"{method}: loss {before:.6g} -> {after:.6g} did not go down"

    def test_step_is_deterministic_under_a_seed(self, method: str) -> None:
        states = []
        for _ in range(2):
            probe = self.make_probe(method, 0)
            probe.step()
            states.append({k: v.detach().cpu().clone() for k, v in probe.state().items()})
        assert states[0].keys() == states[1].keys()
        for name in states[0]:
            assert torch.equal(states[0][name], states[1][name]), (
                f"{method}: {name} differs between two seeded runs"
            )


def _report_case(package: str, case: str, code: int, err: str, untouched: bool) -> None:
    """With ``MEDAI_BAD_INPUT_REPORT=FILE`` set, append one JSON line per bad-input case
    (package, case, exit code, the error line, --out untouched): the suite's table."""
    target = os.environ.get("MEDAI_BAD_INPUT_REPORT")
    if not target:
        return
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    row = {"package": package, "case": case, "exit": code, "untouched": untouched,
           "lines": len([x for x in err.splitlines() if x.strip()]),
           "error": errors[0] if errors else err.strip()[-200:]}  # fmt: skip
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


_TIMING = ("seconds", "per_second", "elapsed", "time", "peak", "resumed")


def _measured(metrics: Any, prefix: str = "") -> dict[str, Any]:
    """Every value of a ``metrics.json`` (nested keys dotted) except timings and resume
    bookkeeping, which differ between a resumed and a straight run by nature."""
    out: dict[str, Any] = {}
    if isinstance(metrics, dict):
        for k, v in metrics.items():
            if not any(t in str(k) for t in _TIMING):
                out.update(_measured(v, f"{prefix}{k}."))
    elif isinstance(metrics, list):
        for i, v in enumerate(metrics):
            out.update(_measured(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = metrics
    return out


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` (relative path -> bytes), or None if it does not exist."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class CLIContract:
    """Shared checks of a console script's contract (README "Shared contract").

    A package adopts it by subclassing in its ``tests/test_cli.py``::

        class TestContract(CLIContract):
            main = staticmethod(pbbl_cxr.cli.main)
            prog, version, package = "pbbl-cxr", __version__, "pbbl-cxr"
            methods = METHODS.names()
            config_class = RunConfig

            def make_data(self, root):
                ...  # write a tiny synthetic dataset under root; return its folder

            def train_argv(self, data, out, method, steps):
                return ["train", "--data", data, "--out", out, "--method", method,
                        "--set", f"steps={steps}"]

    Checks, parametrised over ``methods`` where it matters:

    - ``--version`` prints ``prog version``;
    - a missing data folder, an unknown method and a bad ``--set`` each exit 2 with
      one ``error:`` line on stderr, no traceback, and no run folder;
    - every method trains; its run folder reads back with :func:`medcommon.run.load_run`
      (package, method, seed, config round-trips through ``config_class``), with
      ``model/`` and ``metrics.json``;
    - a run trained for ``short_steps`` and resumed to ``long_steps`` ends with
      the same weights and the same ``metrics.json`` (timings aside) as one trained for
      ``long_steps`` straight (``resume_methods``);
    - ``--resume`` of a missing run and ``--overwrite`` of a finished one;
    - :meth:`standard_bad_cases` and ``bad_input_cases`` (package-specific) each exit 2
      with one line naming the culprit, leave their ``--out`` as it was, and the command
      that diverged works when run again sanely into the same ``--out``.
    """

    main: Callable[[Sequence[str] | None], int | None]
    prog: str = ""
    version: str = ""
    package: str = ""
    methods: Sequence[str] = ()
    resume_methods: Sequence[str] | None = None  # default: every method
    config_class: type | None = None
    weights_file: str = "model/model.safetensors"
    short_steps: int = 2
    long_steps: int = 4
    # --set items that make a short run diverge (a non-finite or exploding loss); the
    # divergence case runs ``diverging_steps`` steps. None: the package has no such case.
    diverging_overrides: Sequence[str] | None = ("lr=1e30",)
    diverging_steps: int = 4

    # -- hooks -------------------------------------------------------------------------
    def make_data(self, root: Path) -> Path:
        raise NotImplementedError

    def train_argv(self, data: Path, out: Path, method: str, steps: int) -> list[str]:
        raise NotImplementedError

    def resume_argv(self, data: Path, out: Path, method: str, steps: int) -> list[str]:
        """The argv continuing ``out`` to ``steps`` steps; by default train_argv + ``--resume``."""
        return [*self.train_argv(data, out, method, steps), "--resume"]

    def bad_input_cases(self, data: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
        """``{case: (argv, text the error line must contain)}``; the argv's ``--out`` (if
        any) must be as it was before the case ran (absent, or unchanged)."""
        return {}

    # -- plumbing ----------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc) -> None:
        if "method" in metafunc.fixturenames:
            names = list(self.methods)
            if metafunc.function.__name__ == "test_resume_equals_an_uninterrupted_run":
                names = list(self.methods if self.resume_methods is None else self.resume_methods)
            if not names:
                raise ValueError(f"{type(self).__name__}.methods is empty")
            metafunc.parametrize("method", names)

    @pytest.fixture(scope="class")
    def contract_data(self, tmp_path_factory) -> Path:
        return Path(self.make_data(tmp_path_factory.mktemp("contract-data")))

    def run(self, argv: Sequence[object], capsys) -> tuple[int, str, str]:
        """Run the console script in-process: (exit code, stdout, stderr)."""
        from medcommon.cli.runner import run_main

        capsys.readouterr()
        code = run_main(type(self).main, [str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    def assert_one_line_error(self, code: int, err: str, contains: str = "") -> None:
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, f"exit code {code}, stderr: {err[-2000:]}"
        assert "Traceback" not in err, err[-2000:]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1, f"expected one error line, got: {lines}"
        assert contains in errors[0], f"{contains!r} not in {errors[0]!r}"

    # -- the checks --------------------------------------------------------------------
    def test_version(self, capsys) -> None:
        code, out, _ = self.run(["--version"], capsys)
        assert code == 0
        assert out.strip() == f"{self.prog} {self.version}"

    def test_missing_data_is_exit_2_and_writes_nothing(self, tmp_path, capsys) -> None:
        out = tmp_path / "run"
        argv = self.train_argv(tmp_path / "no-such-data", out, self.methods[0], self.short_steps)
        code, _, err = self.run(argv, capsys)
        self.assert_one_line_error(code, err, "no-such-data")
        assert not out.exists(), "a run folder was written for bad input"

    def test_unknown_method_is_exit_2_and_writes_nothing(
        self, contract_data, tmp_path, capsys
    ) -> None:
        out = tmp_path / "run"
        argv = self.train_argv(contract_data, out, "no-such-method", self.short_steps)
        code, _, err = self.run(argv, capsys)
        self.assert_one_line_error(code, err, "no-such-method")
        assert not out.exists()

    def test_bad_override_is_exit_2_and_writes_nothing(
        self, contract_data, tmp_path, capsys
    ) -> None:
        out = tmp_path / "run"
        argv = [
            *self.train_argv(contract_data, out, self.methods[0], self.short_steps),
            "--set",
            "no_such_field=1",
        ]
        code, _, err = self.run(argv, capsys)
        self.assert_one_line_error(code, err, "no_such_field")
        assert not out.exists()

    def standard_bad_cases(self, data: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
        """Bad input every run command must refuse the same way (issue #20): non-finite and
        absurd learning rates (the last one diverges: exit 2, nothing kept), an ``--out``
        that is a file or holds a run, ``--resume`` with ``--overwrite``, an unknown
        preset, a missing or malformed ``--config``."""
        m, n = self.methods[0], self.short_steps
        used = tmp / "used"
        used.mkdir(parents=True)
        (used / "notes.txt").write_text("someone else's file\n")
        as_file = tmp / "a-file"
        as_file.write_text("not a folder\n")
        bad_yaml = tmp / "bad.yaml"
        bad_yaml.write_text("steps: [1, 2\n")
        listed = tmp / "list.yaml"
        listed.write_text("- a\n- b\n")
        cases = {
            "lr nan": ([*self.train_argv(data, tmp / "nan", m, n), "--set", "lr=nan"], "lr"),
            "lr inf": ([*self.train_argv(data, tmp / "inf", m, n), "--set", "lr=inf"], "lr"),
            "out is a file": (self.train_argv(data, as_file, m, n), "a-file"),
            "out holds files": (self.train_argv(data, used, m, n), "--overwrite"),
            "resume and overwrite": (
                [*self.train_argv(data, used, m, n), "--resume", "--overwrite"],
                "--overwrite",
            ),
            "unknown preset": (
                [*self.train_argv(data, tmp / "p", m, n), "--preset", "no-such-preset"],
                "--preset",
            ),
            "missing config": (
                [*self.train_argv(data, tmp / "c", m, n), "--config", tmp / "none.yaml"],
                "none.yaml",
            ),
            "malformed config": (
                [*self.train_argv(data, tmp / "y", m, n), "--config", bad_yaml],
                "bad.yaml",
            ),
            "config not a mapping": (
                [*self.train_argv(data, tmp / "l", m, n), "--config", listed],
                "list.yaml",
            ),
        }
        if self.diverging_overrides:
            argv = [*self.train_argv(data, tmp / "diverged", m, self.diverging_steps)]
            for item in self.diverging_overrides:
                argv += ["--set", item]
            cases["diverges"] = (argv, "diverged")
        return cases

    def test_bad_inputs_exit_2_leave_nothing_and_a_retry_works(
        self, contract_data, tmp_path, capsys
    ) -> None:
        """Every standard and package case: exit 2, one ``error:`` line, its ``--out`` as it
        was before (absent, or byte for byte), and the same ``--out`` usable again."""
        cases = {
            **self.standard_bad_cases(contract_data, tmp_path / "std"),
            **self.bad_input_cases(contract_data, tmp_path),
        }
        for case, (argv, contains) in cases.items():
            argv_s = [str(a) for a in argv]
            out = Path(argv_s[argv_s.index("--out") + 1]) if "--out" in argv_s else None
            before = _snapshot(out) if out is not None else None
            code, _, err = self.run(argv, capsys)
            _report_case(self.package, case, code, err, out is None or _snapshot(out) == before)
            try:
                self.assert_one_line_error(code, err, contains)
            except AssertionError as exc:
                raise AssertionError(f"case {case!r}: {exc}") from None
            if out is not None:
                assert _snapshot(out) == before, f"case {case!r} changed {out}"
        if self.diverging_overrides:  # the command that diverged, run again sanely, works
            out = tmp_path / "std" / "diverged"
            code, _, err = self.run(
                self.train_argv(contract_data, out, self.methods[0], self.short_steps), capsys
            )
            assert code == 0, f"retry after a divergence failed: {err[-2000:]}"

    def test_overwrite_replaces_a_finished_run(self, contract_data, tmp_path, capsys) -> None:
        from medcommon.run import load_run

        out, m = tmp_path / "run", self.methods[0]
        code, _, err = self.run(self.train_argv(contract_data, out, m, self.short_steps), capsys)
        assert code == 0, err[-3000:]
        first = load_run(out, package=self.package).info.created
        argv = [*self.train_argv(contract_data, out, m, self.short_steps), "--overwrite"]
        code, _, err = self.run([*argv, "--seed", "5"], capsys)
        assert code == 0, err[-3000:]
        info = load_run(out, package=self.package).info
        assert info.seed == 5 and (out / self.weights_file).is_file()
        assert first is not None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "staging left behind"

    def test_run_folder_round_trips(self, method, contract_data, tmp_path, capsys) -> None:
        from medcommon.config import config_to_dict
        from medcommon.run import CONFIG_FILE, SCHEMA, load_run

        out = tmp_path / "run"
        code, _, err = self.run(
            self.train_argv(contract_data, out, method, self.short_steps), capsys
        )
        assert code == 0, err[-3000:]
        assert json.loads((out / CONFIG_FILE).read_text()).get("schema") == SCHEMA
        run = load_run(out, package=self.package)
        assert (run.info.package, run.info.version) == (self.package, self.version)
        assert run.info.method == method
        assert run.info.seed is not None
        assert run.info.created is not None
        if self.config_class is not None:
            assert config_to_dict(run.config_as(self.config_class)) == run.config
        assert (out / self.weights_file).is_file(), f"no {self.weights_file}"
        assert run.metrics() is not None, "no metrics.json"

    def test_resume_of_a_missing_run_is_exit_2_and_writes_nothing(
        self, contract_data, tmp_path, capsys
    ) -> None:
        out = tmp_path / "never-trained"
        argv = self.resume_argv(contract_data, out, self.methods[0], self.long_steps)
        code, _, err = self.run(argv, capsys)
        self.assert_one_line_error(code, err, "never-trained")
        assert not out.exists(), "--resume of a missing run wrote a folder"

    def test_resume_equals_an_uninterrupted_run(
        self, method, contract_data, tmp_path, capsys
    ) -> None:
        a, b = tmp_path / "resumed", tmp_path / "straight"
        code, _, err = self.run(self.train_argv(contract_data, a, method, self.short_steps), capsys)
        assert code == 0, err[-3000:]
        code, _, err = self.run(self.resume_argv(contract_data, a, method, self.long_steps), capsys)
        assert code == 0, err[-3000:]
        code, _, err = self.run(self.train_argv(contract_data, b, method, self.long_steps), capsys)
        assert code == 0, err[-3000:]
        assert_same_safetensors(a / self.weights_file, b / self.weights_file, rtol=0, atol=0)
        resumed, straight = (
            _measured(json.loads((d / "metrics.json").read_text())) for d in (a, b)
        )
        assert resumed == straight, "metrics.json differs between a resumed and a straight run: " + (
            ", ".join(sorted(k for k in resumed.keys() | straight.keys()
                             if resumed.get(k) != straight.get(k)))[:500]
        )  # fmt: skip
