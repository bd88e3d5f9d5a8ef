"""The method's effect on small synthetic data (minutes): ``pytest -m slow``."""

from __future__ import annotations

import pytest

from smg_learning.config import run_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual
from smg_learning.synth import generate


@pytest.mark.slow
def test_smg_beats_finetune_in_memorizability_and_generalizability(tmp_path) -> None:
    """Two sites of opposite gland polarity: fine-tuning forgets the first, SMG replays it."""
    import dataclasses

    data_dir = generate(tmp_path / "data", "prostate", "small", seed=0, num_sites=3)
    cfg = dataclasses.replace(run_preset("small"), steps_per_site=120)
    data = load_continual(data_dir, cfg, ("RUNMC", "BMC"), ("I2CVB",))
    ft = train_continual(data, cfg, "finetune", None, seed=0)
    smg = train_continual(data, cfg, "smg", None, seed=0, train_last_smd=False)
    assert ft["bwt"] < -0.3  # the data makes fine-tuning forget
    assert smg["memorizability"] > ft["memorizability"] + 0.15
    assert smg["generalizability"] > ft["generalizability"] + 0.15  # held-out I2CVB
    assert smg["bwt"] > ft["bwt"]
