"""The issue-#11 grid: the protocol's settings, the out-of-fold pooling and the verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brats_grading import protocol as P
from brats_grading.grid import analyse, run_grid
from brats_grading.synth import CUES
from medcommon import metrics as M


def test_protocol_is_the_full_factorial_and_holds_the_generator_default():
    assert len(P.SETTINGS) == 12 and len({s.name for s in P.SETTINGS}) == 12
    assert {s.correlation for s in P.SETTINGS} == {0.0, 0.3, 0.6}
    assert P.DEFAULT_SETTING in P.SETTINGS
    assert P.DEFAULT_SETTING.cues == CUES  # the generator's default is a grid cell
    assert (P.verdict(0.01, 0.05), P.verdict(-0.05, -0.01), P.verdict(-0.01, 0.02)) == (
        "wins",
        "loses",
        "ties",
    )


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    settings = (P.SETTINGS[0], P.SETTINGS[-1])
    res = run_grid(
        out, preset="tiny", settings=settings, methods=["cmg", "cmg-no-guidance"],
        seeds=(0, 1), bootstrap=200, quiet=True,
    )  # fmt: skip
    return out, res


def test_every_case_is_predicted_once_per_seed_by_the_fold_that_held_it_out(tiny_grid):
    out, res = tiny_grid
    for s in res["settings"]:
        for m, v in s["oof"].items():
            v = np.asarray(v)
            assert v.shape == (2, len(s["labels"])) and np.isfinite(v).all(), (m, s["setting"])
        folds = {(r["method"], r["seed"]) for r in s["runs"]}
        assert len(s["runs"]) == 2 * len(folds)  # 2 folds per (method, seed)
    # the two settings were written with different cue parameters
    assert res["settings"][0]["params"] != res["settings"][1]["params"]
    assert (out / "report.md").read_text().count("| rho") >= 4
    assert (out / "guidance.png").stat().st_size > 0


def test_analysis_is_recomputed_from_the_stored_predictions(tiny_grid):
    out, res = tiny_grid
    stored = json.loads((out / "results.json").read_text())
    again = analyse(stored, bootstrap=200)
    assert again == json.loads(json.dumps(res["analysis"]))
    s = stored["settings"][0]
    y, oof = np.asarray(s["labels"]), np.asarray(s["oof"]["cmg"])
    point = np.mean([M.auc(y, row) for row in oof])  # mean over seeds of the pooled AUC
    est, lo, hi = again[s["setting"]]["auc"]["cmg"]
    assert est == pytest.approx(point) and lo <= est <= hi
    d = again[s["setting"]]["diff"]["cmg-no-guidance"]
    assert d[3] == P.verdict(d[1], d[2])


@pytest.mark.parametrize(
    "bad, expected",
    [
        (["--settings", "rho9-t2none-noisebaseline"], "--settings: unknown"),
        (["--workers", "0"], "--workers: must be >= 1"),
        (["--preset", "tiny", "--methods", "single-t1ce"], "--methods: the grid compares"),
    ],
)
def test_grid_command_refuses_bad_input_without_writing(tmp_path, capsys, bad, expected):
    from brats_grading.cli import main
    from medcommon.cli.runner import run_main

    out = tmp_path / "grid"
    assert run_main(main, ["grid", "--out", str(out), *bad]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()
