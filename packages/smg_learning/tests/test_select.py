"""PGA selection on inner validation: reads no test data, is deterministic, picks the best."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medcommon.errors import InputError
from smg_learning.config import run_preset
from smg_learning.data import load_continual
from smg_learning.select import PGA_GRID, PGAChoice, apply_choice, select_pga, validation_data

GRID = (
    PGAChoice(0.0),
    PGAChoice(0.1, "symmetric", "adam"),
    PGAChoice(0.1, "first_order", "normalized"),
)


@pytest.fixture(scope="module")
def data(prostate_dir):
    return load_continual(prostate_dir, run_preset("tiny"), ("RUNMC", "BMC"), ("I2CVB",))


def _poisoned(data):
    """The same data with every test slice and held-out site replaced by NaNs."""
    parts = {"train": data.parts["train"], "test": {}}
    for site, part in data.parts["test"].items():
        parts["test"][site] = dataclasses.replace(
            part, images=torch.full_like(part.images, float("nan"))
        )
    return dataclasses.replace(data, parts=parts)


def test_validation_split_is_carved_from_training_cases(data) -> None:
    inner = validation_data(data, 0.25, seed=0)
    assert inner.sites == data.sites and inner.heldout == []
    for site in data.sites:
        train, val = inner.parts["train"][site], inner.parts["test"][site]
        assert len(train.cases) >= 1 and len(val.cases) >= 1
        assert set(train.cases) | set(val.cases) == set(data.parts["train"][site].cases)
        assert not set(train.cases) & set(val.cases)
        assert not set(val.cases) & set(data.parts["test"][site].cases)  # no test case
        assert len(train) + len(val) == len(data.parts["train"][site])
        # slices travel with their case: every validation slice is one of the site's training slices
        whole = data.parts["train"][site].images.flatten(1)
        for img in val.images.flatten(1):
            assert (whole == img).all(1).any()


def test_selection_never_reads_test_sites_and_is_deterministic(data) -> None:
    cfg = run_preset("tiny")
    a = select_pga(data, cfg, method="pga-real", grid=GRID, seed=0)
    b = select_pga(_poisoned(data), cfg, method="pga-real", grid=GRID, seed=0)
    assert a == b  # same scores to the last bit, with every test slice NaN
    scores = [s["val_memorizability"] for s in a["scores"]]
    assert all(np.isfinite(scores)) and len(scores) == len(GRID)
    best = int(np.argmax(scores))  # first of the maxima
    assert a["choice"] == dataclasses.asdict(GRID[best])
    assert apply_choice(cfg, a["choice"]).pga.inner_lr == GRID[best].inner_lr
    with pytest.raises(InputError):
        select_pga(data, cfg, method="replay-real", grid=GRID)


def test_train_select_pga_writes_the_choice_into_the_run(prostate_dir, tmp_path) -> None:
    import json

    from medcommon.cli import run_main
    from smg_learning.cli import main

    def args(out, method):
        return ["train", "--data", str(prostate_dir), "--out", str(out), "--method", method,
                "--sites", "RUNMC,BMC", "--heldout", "I2CVB", "--preset", "tiny", "--quiet",
                "--select-pga"]  # fmt: skip

    assert run_main(main, args(tmp_path / "run", "pga-real")) == 0
    sel = json.loads((tmp_path / "run" / "pga_selection.json").read_text())
    pga = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["pga"]
    assert len(sel["scores"]) == len(PGA_GRID) == 15
    for k, v in sel["choice"].items():
        assert pga[k] == v
    # a method without PGA: an input error, and no run folder
    assert run_main(main, args(tmp_path / "r2", "finetune")) == 2
    assert not (tmp_path / "r2").exists()
