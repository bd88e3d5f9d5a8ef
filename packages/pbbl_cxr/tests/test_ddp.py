"""Two processes (torchrun, gloo, CPU) train every method like one process at the same global batch.

The driver (scripts/ddp_methods.py) runs each method with the ``tiny`` preset (global
batch 16, 8 steps per stage, so some samples are seen twice) once as a plain process
and once under ``torchrun --nproc_per_node 2``, where each process gets half of every
batch. Compared: every stage's final weights (``checkpoint/**/model.safetensors``:
both LfF networks, both PBBL stages), the returned model, and the methods' own state
(LfF's per-sample loss EMAs, Group DRO's group weights ``q``).

Tolerance: weights ``atol=5e-5``. The methods train with Adam (lr 2e-3); its first
update is ``lr * g / (|g| + 1e-8)``, so for the rare weight whose gradient is a sum of
cancelling terms near 1e-7, the float32 rounding of a differently ordered sum (half
batches, all-reduced) moves that weight by up to ~1e-5. A missing synchronisation moves
weights by 1e-3 to 1e-1 (the negative controls below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medai_testkit import assert_same_safetensors, run_torchrun
from medcommon.train.statefile import load_state

pytestmark = pytest.mark.ddp

SCRIPT = Path(__file__).parent / "scripts" / "ddp_methods.py"
METHODS = ["erm", "gce", "lff", "groupdro", "bbs-oracle", "pbbl"]
WEIGHT_TOL = {"rtol": 1e-5, "atol": 5e-5}
STATE_TOL = {"rtol": 1e-5, "atol": 1e-5}


def _driver(out: Path, data: Path, methods: list[str], *flags: str, nproc: int) -> None:
    args = [SCRIPT, "--data", data, "--out", out, "--methods", *methods, *flags]
    if nproc == 1:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    else:
        proc = run_torchrun(args, nproc=nproc, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gbp_tiny: Path) -> tuple[Path, Path]:
    """``(one process, two processes)`` run folders, one sub-folder per method."""
    base = tmp_path_factory.mktemp("ddp")
    one, two = base / "one", base / "two"
    _driver(one, gbp_tiny, METHODS, nproc=1)
    _driver(two, gbp_tiny, METHODS, nproc=2)
    return one, two


def _weight_files(run: Path) -> list[Path]:
    """Every model's weights (kept model and per-stage checkpoints), not the training state
    files, which are safetensors too (medcommon.train.statefile)."""
    names = ("kept.safetensors", "model.safetensors")  # the driver's kept model, checkpoints
    return sorted(p.relative_to(run) for p in run.rglob("*.safetensors") if p.name in names)


def _state(run: Path, name: str) -> dict[str, torch.Tensor]:
    """A method's checkpointed state (``checkpoint/state-<name>.json`` + ``.safetensors``)."""
    return load_state(run / "checkpoint" / f"state-{name}")


def _max_diff(a: Path, b: Path) -> float:
    ta, tb = load_file(str(a)), load_file(str(b))
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_give_the_weights_of_one(runs, method):
    one, two = (r / method for r in runs)
    stages = list((two / "checkpoint").rglob("trainer_state.json"))
    assert stages and all(json.loads(s.read_text())["num_processes"] == 2 for s in stages)
    files = _weight_files(one)
    # kept + one checkpoint per stage (PBBL: 3 cross-fitting fold models + stage 2)
    expected = 5 if method == "pbbl" else 2
    assert len(files) == expected and files == _weight_files(two)
    for rel in files:
        assert_same_safetensors(one / rel, two / rel, **WEIGHT_TOL)


def test_lff_loss_emas_match_one_process(runs):
    one, two = (r / "lff" for r in runs)
    for name in ("ema_b", "ema_d"):
        a, b = _state(one, name)["values"], _state(two, name)["values"]
        assert (a > 0).all(), "8 steps x 16 >= 96 samples: every sample's EMA was updated"
        torch.testing.assert_close(a, b, **STATE_TOL)


def test_groupdro_weights_match_one_process(runs):
    one, two = (r / "groupdro" for r in runs)
    a, b = _state(one, "dro")["q"], _state(two, "dro")["q"]
    assert (a - 0.25).abs().max() > 1e-3, "q moved away from uniform"
    torch.testing.assert_close(a, b, **STATE_TOL)


@pytest.fixture(scope="module")
def unsynced(tmp_path_factory, gbp_tiny: Path) -> Path:
    """Negative controls, two processes: LfF and Group DRO with per-process state updates,
    ERM with per-process BatchNorm statistics (plain DDP)."""
    out = tmp_path_factory.mktemp("ddp-unsynced")
    methods = ["lff", "groupdro", "erm"]
    _driver(out, gbp_tiny, methods, "--unsynced-state", "--local-batchnorm", "erm", nproc=2)
    return out


def test_without_state_sync_two_processes_differ(runs, unsynced):
    """Negative control: per-process EMA / group-loss updates break the equality."""
    one = runs[0]
    for name in ("ema_b", "ema_d"):
        a, b = _state(one / "lff", name)["values"], _state(unsynced / "lff", name)["values"]
        assert (a - b).abs().max() > 0.1  # each process updated only its half of the batch
    a, b = _state(one / "groupdro", "dro")["q"], _state(unsynced / "groupdro", "dro")["q"]
    assert (a - b).abs().max() > 1e-4
    for method in ("lff", "groupdro"):
        rel = Path("checkpoint/model.safetensors")
        assert _max_diff(one / method / rel, unsynced / method / rel) > 1e-3


def test_without_global_batchnorm_two_processes_differ(runs, unsynced):
    """Negative control: per-process BatchNorm statistics (plain DDP) break the equality."""
    rel = Path("erm/checkpoint/model.safetensors")
    assert _max_diff(runs[0] / rel, unsynced / rel) > 1e-3
