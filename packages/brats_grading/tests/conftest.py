"""Tiny synthetic BraTS folders shared by the tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from brats_grading.config import SynthConfig
from brats_grading.synth import write_synthetic

TINY = SynthConfig(hgg=6, lgg=4, shape=(12, 24, 24))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    for layout in ("2018", "2019", "2020"):
        write_synthetic(root / layout, TINY, layout=layout, seed=7, quiet=True)
    return root


@pytest.fixture(scope="session")
def data19(data_root) -> Path:
    return data_root / "2019"


@pytest.fixture(scope="session")
def data20(data_root) -> Path:
    return data_root / "2020"
