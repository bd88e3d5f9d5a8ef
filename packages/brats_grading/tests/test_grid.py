"""The issue-#11 grid (``benchmarks/grid/``): the protocol's settings, the out-of-fold
pooling and the verdicts, on a tiny smoke run of the script."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from benchmark_scripts import load

from brats_grading.synth import CUES
from medcommon import metrics as M
from medcommon.cli import run_main
from medcommon.report import load_results, markdown_table

grid = load("grid/run.py", "brats_grid_run")
P = grid.P


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
    res = grid.run_grid(
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
        runs = [r for r in res["rows"] if r["setting"] == s["setting"]]
        folds = {(r["method"], r["seed"]) for r in runs}
        assert len(runs) == 2 * len(folds) == 2 * 2 * 2  # 2 folds per (method, seed)
    # the two settings were written with different cue parameters
    assert res["settings"][0]["params"] != res["settings"][1]["params"]
    assert (out / "report.md").read_text().count("| rho") >= 4
    assert (out / "guidance.png").stat().st_size > 0


def test_analysis_is_recomputed_from_the_stored_predictions(tiny_grid):
    out, res = tiny_grid
    stored = grid.load_grid(out)
    again = grid.analyse(stored, bootstrap=200)
    assert again == json.loads(json.dumps(res["analysis"]))
    s = stored["settings"][0]
    y, oof = np.asarray(s["labels"]), np.asarray(s["oof"]["cmg"])
    point = np.mean([M.auc(y, row) for row in oof])  # mean over seeds of the pooled AUC
    est, lo, hi = again[s["setting"]]["auc"]["cmg"]
    assert est == pytest.approx(point) and lo <= est <= hi
    d = again[s["setting"]]["diff"]["cmg-no-guidance"]
    assert d[3] == P.verdict(d[1], d[2])


def test_results_json_is_a_results_file_and_the_predictions_are_gzipped(tiny_grid):
    """results.json holds the shared keys (``medcommon report`` reads it) and no per-case
    field; those are in predictions.json.gz, and merged back they are what the run made."""
    out, res = tiny_grid
    light = load_results(out)
    assert light["predictions"] == "predictions.json.gz"
    assert all(set(s) == {"setting", "params", "seconds"} for s in light["settings"])
    assert list(light["provenance"]["sources"]) == [grid.PROTOCOL]
    assert {(s["setting"], s["method"]) for s in light["summary"]} == {
        (s.name, m) for s in (P.SETTINGS[0], P.SETTINGS[-1]) for m in ("cmg", "cmg-no-guidance")
    }
    assert "| cmg |" in markdown_table(light)
    per_case = json.loads(gzip.decompress((out / "predictions.json.gz").read_bytes()))
    assert [s["setting"] for s in per_case["settings"]] == [s["setting"] for s in res["settings"]]
    assert json.loads(json.dumps(res["settings"])) == grid.load_grid(out)["settings"]


@pytest.mark.parametrize(
    "bad, expected",
    [
        (["--settings", "rho9-t2none-noisebaseline"], "--settings: unknown"),
        (["--workers", "0"], "--workers: must be >= 1"),
        (["--threads", "0"], "--threads: must be at least 1"),
        (["--preset", "tiny", "--methods", "single-t1ce"], "--methods: the grid compares"),
    ],
)
def test_grid_script_refuses_bad_input_without_writing(tmp_path, capsys, bad, expected):
    out = tmp_path / "grid"
    assert run_main(grid.main, ["--out", str(out), *bad]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()
