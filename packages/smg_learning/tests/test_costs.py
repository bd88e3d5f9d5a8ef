"""Cost measurements (the experiment ``benchmarks/costs/``): on the fundus layout (disc +
cup: a 3-class segmenter), and beside a tiny benchmark."""

from __future__ import annotations

import json

import pytest
import torch

from medcommon.cli import run_main
from smg_learning.config import run_preset
from smg_learning.data import load_continual
from smg_learning.synth import write_dofe_release


@pytest.fixture(scope="module")
def costs(experiment):
    """``benchmarks/costs/costs.py``."""
    return experiment("costs", "costs")


def test_costs_build_a_segmenter_with_every_structure(costs, tmp_path) -> None:
    cfg = run_preset("tiny")
    root = write_dofe_release(tmp_path / "dofe", size=32)  # the DoFE layout: disc + cup
    data = load_continual(root, cfg, ("Domain1", "Domain2"), ())
    assert len(data.structures) == 2 and int(data.parts["train"]["Domain1"].masks.max()) == 2
    out = costs.time_pga(data, cfg, repeats=1)  # a 2-class segmenter fails on label 2 in the loss
    assert out["pga_step_s"] > 0 and out["step_samples"] > 0
    part = data.parts["train"]["Domain1"]
    model = costs._train_on(part.images, part.masks, cfg, data, steps=1, seed=0)
    assert model.predict(part.images[:2]).shape == part.masks[:2, 0].shape
    assert model(part.images[:1]).shape[1] == 3


def test_structure_dice_averages_the_nested_structures(costs) -> None:
    mask = torch.tensor([[0, 1, 1, 2]])
    pred = torch.tensor([[0, 1, 2, 2]])
    # label > 0: identical (1.0); label > 1: {3} vs {2, 3} -> 2/3
    assert abs(costs._structure_dice(pred, mask, 2) - (1.0 + 2 / 3) / 2) < 1e-9


def test_costs_run_measures_beside_a_tiny_benchmark(experiment, tmp_path, capsys) -> None:
    run = experiment("costs", "run")
    out = tmp_path / "bench"
    argv = [
        "--out",
        out,
        "--preset",
        "tiny",
        "--seeds",
        "0",
        "--quiet",
        "--methods",
        "finetune,smg",
        "--threads",
        "1",
    ]
    assert run_main(run.main, [str(a) for a in argv]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["rows"]} == {"finetune", "smg"}
    for key in ("pga_over_plain", "first_over_exact", "ddim_over_ddpm_time", "site_acc_smd"):
        assert key in res["extra"]
    assert "## Costs and SMD quality" in (out / "report.md").read_text()
    # the demo preset has no cost sizes: bad input, nothing written
    capsys.readouterr()
    argv = ["--out", str(tmp_path / "demo"), "--preset", "demo"]
    assert run_main(run.main, argv) == 2
    assert "error: --preset: no cost sizes for 'demo'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
