"""Seeding, thread pinning and RNG state capture for reproducible and resumable runs.

A CPU run's numbers depend on its seed *and* on how many threads split its reductions
(a sum over 2 threads adds in another order than over 1): :func:`fix_threads` pins
the count, whatever ``OMP_NUM_THREADS`` says, so a benchmark gives the same numbers
on any machine, under any load, and records the count it used.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def fix_threads(threads: int) -> int:
    """Pin this process to ``threads`` CPU threads and deterministic kernels; returns it.

    torch's intra-op pool, the BLAS/OpenMP pools of NumPy and SciPy (threadpoolctl),
    and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for processes started from here;
    ``torch.use_deterministic_algorithms`` (warn-only: an op without a deterministic
    kernel warns instead of failing) and ``CUBLAS_WORKSPACE_CONFIG`` for CUDA. Call it
    first in every benchmark process and worker (a worker pool's ``initializer``).
    """
    from medcommon.errors import InputError

    if threads < 1:
        raise InputError("--threads", f"must be at least 1, got {threads}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # idle OpenMP threads of child processes sleep instead of spinning (read at start-up)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
        pass
    return threads


def rng_state() -> dict[str, Any]:
    """The RNG states of this process, as plain lists and tensors (no pickled objects)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(obj: Any) -> Any:
    if isinstance(obj, (tuple, list)):
        return [_to_lists(x) for x in obj]
    return obj


def _to_tuples(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_to_tuples(x) for x in obj)
    return obj
