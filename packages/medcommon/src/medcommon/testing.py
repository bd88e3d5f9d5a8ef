"""Shared conformance checks for models, adopted by subclassing in a package's tests.

Example::

    class TestMyNet(ModelConformance):
        def make_model(self):
            return MyNet(MyNetConfig(width=4))

        def make_input(self):
            return torch.randn(2, 1, 32, 32)

The base class checks: forward gives a finite tensor (or dict/tuple of them),
every trainable parameter receives a finite gradient, the same seed gives the
same output, and ``save_pretrained``/``from_pretrained`` round-trips the
outputs exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

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


def pydicom_test_file(name: str):
    """Path of a DICOM file shipped inside the pydicom wheel (never the downloadable extras).

    ``pydicom.data.get_testdata_file`` tries to download files that are not
    shipped; tests must not touch the network, so we look on disk only and skip
    the test when the file is absent.
    """
    from pathlib import Path

    import pydicom.data
    import pytest

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.is_file():  # pragma: no cover - depends on the pydicom build
        pytest.skip(f"pydicom does not ship {name}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for torchrun's ``--master_port``)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_torchrun(script_and_args, nproc: int = 2, timeout: float = 600, env=None):
    """Run ``python -m torch.distributed.run --nproc_per_node N script args...`` on CPU (gloo).

    Returns the ``subprocess.CompletedProcess`` (stdout/stderr captured as text).
    One OpenMP thread per process, so two processes fit two cores.
    """
    import os
    import subprocess
    import sys

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
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_same_safetensors(a, b, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Every tensor in safetensors file ``a`` equals the one of the same name in ``b``."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert set(ta) == set(tb), f"different tensor names: {sorted(set(ta) ^ set(tb))[:10]}"
    for name in ta:
        torch.testing.assert_close(
            ta[name], tb[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


def pydicom_data_file(name: str):
    """Path of ``name`` from the installed ``pydicom-data`` package (the ``test`` extra).

    Offline by construction: the file must already be in the package folder on
    disk (else the test is skipped), and ``get_testdata_file`` is asked by exact
    name with ``download=False``, because a miss or a pattern would otherwise
    make pydicom try to download it.
    """
    from importlib import metadata
    from pathlib import Path

    import pytest
    from pydicom.data import get_testdata_file

    if any(c in name for c in "*?[]/\\"):
        raise ValueError(f"exact file name expected, got {name!r}")
    try:
        folder = Path(metadata.distribution("pydicom-data").locate_file("data_store/data"))
    except metadata.PackageNotFoundError:
        pytest.skip("pydicom-data is not installed (pip install medcommon[test])")
    if not (folder / name).is_file():
        pytest.skip(f"pydicom-data does not hold {name}")
    path = get_testdata_file(name, download=False)
    if path is None:  # pragma: no cover - e.g. the file fails pydicom's hash check
        pytest.skip(f"pydicom does not accept pydicom-data's {name}")
    return Path(path)
