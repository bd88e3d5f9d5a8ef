"""Benchmark results: summary statistics, schema, tables and plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medcommon.errors import InputError
from medcommon.report import (
    load_results,
    make_results,
    markdown_table,
    plot_bars,
    plot_differences,
    plot_heatmap,
    plot_image_grid,
    write_report,
    write_results,
)

ROWS = [
    {"method": "erm", "seed": 0, "metrics": {"auc": 0.70, "acc": 0.8}, "train_seconds": 2.0},
    {"method": "erm", "seed": 1, "metrics": {"auc": 0.74, "acc": 0.9}, "train_seconds": 4.0},
    {
        "method": "pbbl",
        "seed": 0,
        "metrics": {"auc": 0.80, "acc": float("nan")},
        "train_seconds": 5.0,
    },
]


@pytest.fixture(autouse=True)
def _clean_checkout(monkeypatch):
    """Results written as from a clean checkout, whatever state this tree is in."""
    monkeypatch.setenv("MEDAI_GIT_COMMIT", "c" * 40)
    monkeypatch.setenv("MEDAI_GIT_DIRTY", "0")


def test_summary_is_mean_and_sample_std():
    res = make_results("pkg", "0.1.0", "tiny", [0, 1], ROWS)
    erm = res["summary"][0]
    assert erm["method"] == "erm"
    assert erm["metrics"]["auc"]["mean"] == pytest.approx(0.72)
    assert erm["metrics"]["auc"]["std"] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert erm["train_seconds"] == pytest.approx(3.0)
    pbbl = res["summary"][1]
    assert pbbl["metrics"]["auc"] == {"mean": 0.80, "std": 0.0, "n": 1}
    assert math.isnan(pbbl["metrics"]["acc"]["mean"])


def test_results_file_is_strict_json_and_reloads(tmp_path):
    res = make_results("pkg", "0.1.0", "tiny", [0, 1], ROWS, extra={"loop_vs_bare": 1.01})
    path = write_results(tmp_path, res)
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert set(data) >= {"package", "version", "preset", "seeds", "rows", "summary"}
    assert load_results(tmp_path)["extra"]["loop_vs_bare"] == 1.01
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"rows": []}')
    with pytest.raises(InputError, match="missing package"):
        load_results(tmp_path / "bad")


def test_markdown_table_and_report(tmp_path):
    res = make_results("pkg", "0.1.0", "tiny", [0, 1], ROWS)
    table = markdown_table(res, ["auc", "acc"])
    assert table.splitlines()[0] == "| method | auc | acc |"
    assert "| erm | 0.720 ± 0.028 | 0.850 ± 0.071 |" in table
    assert "| pbbl | 0.800 | – |" in table
    path = write_report(tmp_path, res, "Title", sections=[("Notes", "text here")])
    body = path.read_text()
    assert body.startswith("# Title") and "## Notes" in body and "seeds 0, 1" in body


def test_settings_group_the_summary():
    rows = [dict(r, setting="bias=0.9") for r in ROWS] + [dict(ROWS[0], setting="bias=0.99")]
    res = make_results("pkg", "0.1.0", "tiny", [0, 1], rows)
    assert [(s["setting"], s["method"]) for s in res["summary"]] == [
        ("bias=0.9", "erm"),
        ("bias=0.9", "pbbl"),
        ("bias=0.99", "erm"),
    ]
    assert markdown_table(res).splitlines()[0].startswith("| setting | method |")


def test_plots_are_png_files(tmp_path):
    paths = [
        plot_bars(
            {"0.9": {"erm": (0.7, 0.01), "pbbl": (0.8, 0.02)}}, tmp_path / "b.png", "t", "AUC"
        ),
        plot_heatmap(np.eye(3), ["s1", "s2", "s3"], ["A", "B", "C"], tmp_path / "h.png", "dice"),
        plot_image_grid([[np.zeros((8, 8)), np.ones((8, 8))]], tmp_path / "g.png", ["row"]),
        plot_differences(
            {"a": [0.1, -0.02, 0.05], "b": [float("nan")], "c": [0.3]}, tmp_path / "d.png", "t", "x"
        ),
    ]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(x.name for x in tmp_path.iterdir()) == [
        "b.png",
        "d.png",
        "g.png",
        "h.png",
    ]  # no temp files left


def _claim_rows():
    rows = []
    for seed, (m, b) in enumerate([(0.90, 0.70), (0.80, 0.72), (0.85, 0.74)]):
        rows.append({"method": "new", "seed": seed, "setting": "s1", "metrics": {"auc": m}})
        rows.append({"method": "old", "seed": seed, "setting": "s1", "metrics": {"auc": b}})
    return rows


def test_claims_are_checked_and_kept_when_they_fail():
    from medcommon.report import Claim, make_results

    claims = [
        Claim("new beats old", "new", "old", "auc", setting="s1", margin=0.1),  # 0.85 - 0.72
        Claim("new beats old by a lot", "new", "old", "auc", setting="s1", margin=0.2),
        Claim("no harm", "new", "old", "auc", setting="s1", test="within", margin=0.02),
        Claim("lower is better", "old", "new", "auc", setting="s1", test="less", margin=0.1),
        Claim("missing method", "ghost", "old", "auc", setting="s1"),
    ]
    res = make_results("pkg", "1", "tiny", [0, 1, 2], _claim_rows(), claims=claims)
    got = {c["claim"]: c for c in res["claims"]}
    assert len(res["claims"]) == 5, "a failing claim must not be dropped"
    assert got["new beats old"]["value"] == pytest.approx(0.85)
    assert got["new beats old"]["baseline_value"] == pytest.approx(0.72)
    assert [got[k]["holds"] for k in got] == [True, False, False, True, False]
    assert got["missing method"]["value"] is None and "ghost" in got["missing method"]["note"]
    assert set(got["no harm"]) >= {
        "claim",
        "method",
        "baseline",
        "metric",
        "value",
        "baseline_value",
        "holds",
    }


def test_report_and_combined_report_lead_with_claims_and_figures(tmp_path):
    from medcommon.report import Claim, combine_reports, make_results, write_report, write_results

    folder = tmp_path / "bench" / "pkg"
    folder.mkdir(parents=True)
    (folder / "headline.png").write_bytes(b"png")
    claims = [
        Claim("new beats old", "new", "old", "auc", setting="s1"),
        Claim("tie", "new", "old", "auc", setting="s1", test="within", margin=0.01),
    ]
    res = make_results(
        "pkg", "1", "tiny", [0, 1, 2], _claim_rows(), claims=claims, figures=["headline.png"]
    )
    write_results(folder, res)
    text = write_report(folder, res, "Pkg").read_text()
    assert text.index("## Claims") < text.index("| setting | method |")
    assert "![headline.png](headline.png)" in text
    combined = combine_reports([folder], relative_to=tmp_path / "bench")
    assert combined.index("## Headline: 1 of 2 claims hold") < combined.index("## pkg 1")
    assert "| pkg | new beats old (s1) | auc | new 0.850 | old 0.720 | **yes** |" in combined
    assert "| pkg | tie (s1) | auc | new 0.850 | old 0.720 | no |" in combined
    assert "(pkg/headline.png)" in combined
