"""Resume bookkeeping of ``unlearn`` (issue #20): mid-run checkpoints, a kill then ``--resume``
ends with the weights, metrics and log of an uninterrupted run, and no step is logged twice.

The interrupted runs stop at a chosen step (a KeyboardInterrupt raised from the method's
loss, which leaves the folder as a kill does) or are killed for real (SIGKILL of a
subprocess); each is compared with one uninterrupted run of the same settings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from unlearn_bench.cli import main
from unlearn_bench.methods import METHODS

# NPO: a reference model and retain partners; 48 forget questions at batch 8 = 6 steps an
# epoch, 2 epochs = 12 steps; every step logged; a constant learning rate
SETTINGS = ["--method", "npo", "--quiet", "--device", "cpu", "--set", "batch_size=8",
            "--set", "epochs=2", "--set", "log_every=1"]  # fmt: skip
STEPS = 12


def _argv(model, data, out, *extra) -> list[str]:
    return [str(a) for a in ("unlearn", "--model", model, "--data", data, "--out", out,
                             *SETTINGS, *extra)]  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_data, tiny_run) -> Path:
    """The uninterrupted run (no mid-run checkpoint)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(_argv(tiny_run, tiny_data, out, "--set", "checkpoint_every=0")) == 0
    return out


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _assert_same_as_straight(run: Path, straight: Path) -> None:
    a, b = (
        load_file(run / "model" / "model.safetensors"),
        load_file(straight / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    differ = [k for k in a if not (a[k] == b[k]).all()]
    assert not differ, f"weights differ after the resume: {differ[:5]}"
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (run, straight))
    ma.pop("train_seconds"), mb.pop("train_seconds")
    assert ma == mb
    steps = [rec["step"] for rec in _log(run)]
    assert steps == list(range(1, STEPS + 1)), f"log steps after the resume: {steps}"

    def values(rec):
        return {k: v for k, v in rec.items() if k != "elapsed"}

    assert [values(r) for r in _log(run)] == [values(r) for r in _log(straight)]


def _interrupt_at(monkeypatch, step: int) -> None:
    """Make NPO's loss raise KeyboardInterrupt at (0-based) ``step``, as a kill would stop it."""
    cls = METHODS.get("npo")
    loss = cls.loss

    def stopping(self, model, batch, ctx):
        if ctx.step == step:
            raise KeyboardInterrupt
        return loss(self, model, batch, ctx)

    monkeypatch.setattr(cls, "loss", stopping)


def test_tiny_unlearn_checkpoints_mid_run(tiny_data, tiny_run, tmp_path):
    """The tiny preset checkpoints unlearn every 2 steps (UnlearnConfig.checkpoint_every)."""
    from medcommon.run import load_run

    out = tmp_path / "run"
    assert main(_argv(tiny_run, tiny_data, out)) == 0
    assert load_run(out).config["checkpoint_every"] == 2


@pytest.mark.parametrize("every", [4, 0], ids=["checkpoint at step 8", "no checkpoint yet"])
def test_interrupted_unlearn_resumes_to_the_uninterrupted_run(
    every, tiny_data, tiny_run, straight, tmp_path, monkeypatch
):
    """Stopped during step 10 (log lines 1-9 written), resumed: the same weights, metrics and
    log as the straight run; without a checkpoint the run starts again and drops its lines."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 9)
        with pytest.raises(KeyboardInterrupt):
            main(_argv(tiny_run, tiny_data, out, "--set", f"checkpoint_every={every}"))
    assert [rec["step"] for rec in _log(out)] == list(range(1, 10))
    state = out / "checkpoint" / "trainer_state.json"
    assert (json.loads(state.read_text())["step"] if state.is_file() else None) == (
        8 if every else None
    )
    assert not (out / "metrics.json").exists()
    assert main(_argv(tiny_run, tiny_data, out, "--resume")) == 0
    _assert_same_as_straight(out, straight)


def test_killed_unlearn_resumes_to_the_uninterrupted_run(tiny_data, tiny_run, straight, tmp_path):
    """kill -9 once a mid-run checkpoint exists, then --resume."""
    out = tmp_path / "run"
    argv = _argv(tiny_run, tiny_data, out, "--set", "checkpoint_every=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unlearn_bench.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state = out / "checkpoint" / "trainer_state.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(state.read_text())["step"] >= 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists(), "killed after the run finished"
    assert main(_argv(tiny_run, tiny_data, out, "--resume")) == 0
    _assert_same_as_straight(out, straight)
