"""PGA selection on inner validation (the experiment ``benchmarks/pga-select/``): reads
no test data, is deterministic, picks the best; its benchmark row uses the choice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medcommon.errors import InputError
from smg_learning.benchmark import BenchSpec, paired_differences
from smg_learning.config import run_preset
from smg_learning.data import load_continual


@pytest.fixture(scope="module")
def sel(experiment):
    """``benchmarks/pga-select/pga_select.py``."""
    return experiment("pga-select", "pga_select")


@pytest.fixture(scope="module")
def grid(sel):
    return (
        sel.PGAChoice(0.0),
        sel.PGAChoice(0.1, "symmetric", "adam"),
        sel.PGAChoice(0.1, "first_order", "normalized"),
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


def test_validation_split_is_carved_from_training_cases(sel, data) -> None:
    inner = sel.validation_data(data, 0.25, seed=0)
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


def test_selection_never_reads_test_sites_and_is_deterministic(sel, grid, data) -> None:
    cfg = run_preset("tiny")
    a = sel.select_pga(data, cfg, method="pga-real", grid=grid, seed=0)
    b = sel.select_pga(_poisoned(data), cfg, method="pga-real", grid=grid, seed=0)
    assert a == b  # same scores to the last bit, with every test slice NaN
    scores = [s["val_memorizability"] for s in a["scores"]]
    assert all(np.isfinite(scores)) and len(scores) == len(grid)
    best = int(np.argmax(scores))  # first of the maxima
    assert a["choice"] == dataclasses.asdict(grid[best])
    assert sel.apply_choice(cfg, a["choice"]).pga.inner_lr == grid[best].inner_lr
    with pytest.raises(InputError):
        sel.select_pga(data, cfg, method="replay-real", grid=grid)
    # the default is the grid committed before any test result (17f72cd, 13 points); the
    # later one (15 points) is kept, by name, as post hoc
    assert sel.PGA_GRID is sel.PGA_GRID_PREREGISTERED and len(sel.PGA_GRID) == 13
    assert {c.inner_lr for c in sel.PGA_GRID} == {0.0, 0.01, 0.1}
    assert len(sel.GRIDS["post_hoc"]) == 15


def test_selected_row_and_paired_differences(sel, experiment, tmp_path) -> None:
    """smg-select uses the choice made on inner validation; the report pairs rows with α = 0."""
    run = experiment("pga-select", "run")
    grid = (sel.PGAChoice(0.0), sel.PGAChoice(0.1, "symmetric", "normalized"))
    methods = ("smg-alpha0", "smg-select", "smg-sym")
    spec = BenchSpec(tmp_path / "b", preset="tiny", seeds=(0, 1), methods=methods, threads=1)
    res = run.run_select_benchmark(spec, grid=grid)
    chosen = res["extra"]["pga_selection"]
    assert [s["inner_lr"] for s in chosen["scores"]] == [0.0, 0.1]
    best = max(range(2), key=lambda i: (chosen["scores"][i]["val_memorizability"], -i))
    assert chosen["choice"]["inner_lr"] == grid[best].inner_lr
    rows = {(r["method"], r["seed"]): r for r in res["rows"]}
    # the selected row trains with the chosen config: at α = 0 it is smg-alpha0 itself
    same = rows[("smg-select", 0)]["dice_matrix"] == rows[("smg-alpha0", 0)]["dice_matrix"]
    assert same == (chosen["choice"]["inner_lr"] == 0.0)
    assert rows[("smg-sym", 0)]["align_share"] > 0
    assert rows[("smg-alpha0", 0)]["align_share"] == pytest.approx(0.0, abs=1e-5)
    d = paired_differences(res, "smg-sym", "smg-alpha0", "memorizability")
    want = [
        rows[("smg-sym", s)]["metrics"]["memorizability"]
        - rows[("smg-alpha0", s)]["metrics"]["memorizability"]
        for s in (0, 1)
    ]
    assert d == pytest.approx(want)
    report = (tmp_path / "b" / "report.md").read_text()
    for title in ("PGA alignment share", "Paired differences vs alpha = 0", "PGA selection"):
        assert title in report
    # the experiment's two claims are checked beside the package's
    claims = {(c["method"], c["baseline"], c["metric"]) for c in res["claims"]}
    assert ("smg-select", "smg-alpha0", "generalizability") in claims
    assert "packages/smg_learning/benchmarks/pga-select/run.py" in res["provenance"]["sources"]


def test_the_benchmark_command_has_no_selected_row(tmp_path, capsys) -> None:
    from medcommon.cli import run_main
    from smg_learning.cli import main

    argv = ["benchmark", "--out", str(tmp_path / "b"), "--methods", "smg,smg-select"]
    assert run_main(main, argv) == 2
    assert "error: --methods: unknown method 'smg-select'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
