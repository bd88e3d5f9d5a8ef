from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from smg_learning.synth import generate

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture(autouse=True)
def _keep_threads():
    """A benchmark run in this process pins its threads (``medcommon.train.fix_threads``:
    torch, BLAS, the ``*_NUM_THREADS`` variables, deterministic algorithms); put them back
    after each test so that the next one runs as the test command set it up."""
    from threadpoolctl import threadpool_limits

    blas = threadpool_limits(limits=None)  # remembers the current limits
    env = {k: os.environ.get(k) for k in THREAD_VARS}
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    blas.restore_original_limits()
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det, warn_only=warn_only)


@pytest.fixture(scope="session")
def prostate_dir(tmp_path_factory):
    """A tiny synthetic prostate set: RUNMC, BMC, I2CVB with 4 cases of 4 slices each."""
    return generate(tmp_path_factory.mktemp("syn") / "prostate", "prostate", "tiny", seed=0)


@pytest.fixture(scope="session")
def fundus_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "fundus", "fundus", "tiny", seed=0)


def _experiment(folder: str, module: str):
    """The module ``benchmarks/<folder>/<module>.py`` of an experiment (not part of the
    package), imported as its script imports its siblings: with its folder on
    ``sys.path``. Each folder's ``run.py`` gets a name of its own (``<folder>.run``)."""
    path = BENCHMARKS / folder
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if module != "run":
        return importlib.import_module(module)
    name = f"{folder}.run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path / "run.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="session")
def experiment():
    """``experiment(folder, module)``: an experiment's module (``benchmarks/<folder>/``)."""
    return _experiment
