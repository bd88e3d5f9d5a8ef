"""Shared fixtures: tiny synthetic datasets written once per session, and the published CSVs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbbl_cxr.config import synth_preset
from pbbl_cxr.synth import generate


@pytest.fixture(scope="session")
def gbp_tiny(tmp_path_factory) -> Path:
    """A tiny synthetic GbP-layout dataset (96/32/32 images of 24 px)."""
    return generate(
        tmp_path_factory.mktemp("gbp") / "data", synth_preset("tiny", kind="gbp"), seed=0
    )


@pytest.fixture(scope="session")
def sbp_tiny(tmp_path_factory) -> Path:
    """A tiny synthetic SbP-layout dataset (train_NIH.csv + train_MIMIC.csv)."""
    return generate(
        tmp_path_factory.mktemp("sbp") / "data", synth_preset("tiny", kind="sbp"), seed=1
    )
