"""Two-process checks on the CPU: ``torchrun`` with gloo, and comparing saved weights."""

from __future__ import annotations

import torch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for torchrun's ``--master_port``)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Signs in torchrun's stderr that the launch itself failed (rendezvous port
# taken between free_port() and bind, a gloo socket reset on a loaded machine),
# not the script under test. Such a run is retried once on a fresh port; a
# failure of the script itself repeats and is returned as it is.
_TRANSPORT_FAILURES = (
    "Address already in use",
    "EADDRINUSE",
    "Connection refused",
    "Connection reset by peer",
    "gloo::IoException",
    "Socket Timeout",
    "DistNetworkError",
    "(SIGABRT)",
)


def run_torchrun(
    script_and_args, nproc: int = 2, timeout: float = 600, env=None, attempts: int = 2
):
    """Run ``python -m torch.distributed.run --nproc_per_node N script args...`` on CPU (gloo).

    Returns the ``subprocess.CompletedProcess`` (stdout/stderr captured as text).
    One OpenMP thread per process, so two processes fit two cores. The master
    is 127.0.0.1 on a port free at launch; a launch that fails in the transport
    (see ``_TRANSPORT_FAILURES``) is retried up to ``attempts`` times in all.
    """
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    for attempt in range(attempts):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            *map(str, script_and_args),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
        transport = any(sign in proc.stderr for sign in _TRANSPORT_FAILURES)
        if proc.returncode == 0 or not transport or attempt == attempts - 1:
            return proc
        print(f"run_torchrun: launch failed in the transport, retrying (attempt {attempt + 2})")
    return proc  # pragma: no cover - the loop always returns


def assert_same_safetensors(a, b, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Every tensor in safetensors file ``a`` equals the one of the same name in ``b``."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert set(ta) == set(tb), f"different tensor names: {sorted(set(ta) ^ set(tb))[:10]}"
    for name in ta:
        torch.testing.assert_close(
            ta[name], tb[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )
