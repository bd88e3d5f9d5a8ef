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
