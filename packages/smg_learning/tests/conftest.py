from __future__ import annotations

import pytest

from smg_learning.synth import generate


@pytest.fixture(scope="session")
def prostate_dir(tmp_path_factory):
    """A tiny synthetic prostate set: RUNMC, BMC, I2CVB with 4 cases of 4 slices each."""
    return generate(tmp_path_factory.mktemp("syn") / "prostate", "prostate", "tiny", seed=0)


@pytest.fixture(scope="session")
def fundus_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "fundus", "fundus", "tiny", seed=0)
