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
    plot_tradeoff,
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
        plot_tradeoff(
            {"npo": ([0.9, 0.5, 0.1], [0.8, 0.7, 0.4])},
            {"vanilla": (0.9, 0.8)},
            tmp_path / "t.png",
            "t",
            "forget",
            "retain",
            marked={"npo": (0.1, 0.4)},
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
        "t.png",
    ]  # no temp files left


def _claim_rows():
    # paired differences new - old per seed: 0.20, 0.21, 0.19, 0.20 (mean 0.2, sd 0.00816)
    rows = []
    for seed, (m, b) in enumerate([(0.90, 0.70), (0.81, 0.60), (0.85, 0.66), (0.82, 0.62)]):
        rows.append({"method": "new", "seed": seed, "setting": "s1", "metrics": {"auc": m}})
        rows.append({"method": "old", "seed": seed, "setting": "s1", "metrics": {"auc": b}})
    return rows


def test_paired_interval_against_a_hand_computation():
    from medcommon.report.claims import interval

    # mean 0.2, sd 0.1, n 3: 0.2 ± t(0.975, 2) * 0.1 / sqrt(3), t = 4.302652729911275
    lo, hi = interval([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / 3**0.5
    assert (lo, hi) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))


def test_claims_are_decided_on_paired_intervals_and_kept_when_they_fail():
    from medcommon.report import Claim, make_results

    # interval of the differences: 0.2 ± 3.1824 * 0.00816 / 2 = [0.187, 0.213]
    claims = [
        Claim("new beats old", "new", "old", "auc", setting="s1", margin=0.1),
        Claim("new beats old by a lot", "new", "old", "auc", setting="s1", margin=0.25),
        Claim("new beats old by exactly the mean", "new", "old", "auc", setting="s1", margin=0.2),
        Claim("no harm", "new", "old", "auc", setting="s1", test="within", margin=0.02),
        Claim(
            "a tie at a wide margin", "new", "old", "auc", setting="s1", test="within", margin=0.3
        ),
        Claim("lower is better", "old", "new", "auc", setting="s1", test="less", margin=0.1),
        Claim("missing method", "ghost", "old", "auc", setting="s1"),
    ]
    res = make_results("pkg", "1", "tiny", [0, 1, 2, 3], _claim_rows(), claims=claims)
    got = {c["claim"]: c for c in res["claims"]}
    assert len(res["claims"]) == 7, "a failing claim must not be dropped"
    assert got["new beats old"]["value"] == pytest.approx(0.845)
    assert got["new beats old"]["baseline_value"] == pytest.approx(0.645)
    assert got["new beats old"]["difference"] == pytest.approx(0.2)
    assert got["new beats old"]["pairs"] == 4
    lo, hi = got["new beats old"]["interval"]
    assert (lo, hi) == (pytest.approx(0.18701, abs=1e-4), pytest.approx(0.21299, abs=1e-4))
    assert [got[k]["decision"] for k in got] == [
        "holds", "fails", "undecided", "fails", "holds", "holds", "undecided"
    ]  # fmt: skip
    assert [got[k]["holds"] for k in got] == [True, False, False, False, True, True, False]
    assert got["missing method"]["value"] is None and "too few" in got["missing method"]["note"]


def test_one_seed_is_undecided_never_a_verdict():
    from medcommon.report import Claim, make_results

    rows = [r for r in _claim_rows() if r["seed"] == 0]
    res = make_results(
        "pkg", "1", "tiny", [0], rows, claims=[Claim("c", "new", "old", "auc", "s1")]
    )
    assert res["claims"][0]["decision"] == "undecided" and res["claims"][0]["pairs"] == 1


def test_report_and_combined_report_lead_with_claims_and_figures(tmp_path):
    from medcommon.report import Claim, combine_reports, make_results, write_report, write_results

    folder = tmp_path / "bench" / "pkg"
    folder.mkdir(parents=True)
    (folder / "headline.png").write_bytes(b"png")
    claims = [
        Claim("new beats old", "new", "old", "auc", setting="s1"),
        Claim("tie", "new", "old", "auc", setting="s1", test="within", margin=0.01),
        Claim("a big gain", "new", "old", "auc", setting="s1", margin=0.2),
    ]
    res = make_results(
        "pkg", "1", "tiny", [0, 1, 2, 3], _claim_rows(), claims=claims, figures=["headline.png"]
    )
    write_results(folder, res)
    text = write_report(folder, res, "Pkg").read_text()
    assert text.index("## Claims") < text.index("| setting | method |")
    assert "![headline.png](headline.png)" in text
    combined = combine_reports([folder], relative_to=tmp_path / "bench")
    assert combined.index("## Headline: 1 of 3 claims hold (1 undecided)") < combined.index(
        "## pkg 1"
    )
    assert "| pkg | new beats old (s1) | auc | new 0.845 | old 0.645 | **yes** |" in combined
    assert "| pkg | tie (s1) | auc | new 0.845 | old 0.645 | no |" in combined
    assert "| pkg | a big gain (s1) | auc | new 0.845 | old 0.645 | undecided |" in combined
    assert "+0.200 [+0.187, +0.213] (n=4)" in text
    assert "(pkg/headline.png)" in combined


def test_compare_finds_every_differing_value_and_decision(tmp_path, capsys):
    from medcommon.cli import run_main
    from medcommon.cli.main import DIFFER, main
    from medcommon.report import Claim, make_results, write_results
    from medcommon.report.compare import compare

    claims = [Claim("new beats old", "new", "old", "auc", setting="s1", margin=0.1)]
    rows = _claim_rows()
    a = make_results("pkg", "1", "tiny", [0, 1, 2, 3], rows, claims=claims)
    moved = [dict(r, metrics={"auc": r["metrics"]["auc"] - 0.15 * (r["method"] == "new")})
             for r in rows]  # fmt: skip
    b = make_results("pkg", "1", "tiny", [0, 1, 2, 3], moved, claims=claims)
    for r in b["rows"]:
        r["train_seconds"] = 99.0  # timings are the machine's, never compared
    res = compare(a, b)
    assert res["max_abs"] == pytest.approx(0.15)
    assert len(res["differences"]) == 4 and res["missing"] == []
    assert res["claims"] == ["claim 'new beats olds1': A holds / B fails"]
    assert compare(a, a)["max_abs"] == 0 and not compare(a, a)["differences"]
    write_results(tmp_path / "a", a)
    write_results(tmp_path / "b", b)
    assert run_main(main, ["compare", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert run_main(main, ["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == DIFFER
    assert "largest absolute difference 0.15" in capsys.readouterr().out
    assert run_main(main, ["compare", str(tmp_path / "a"), str(tmp_path / "nope")]) == 2
