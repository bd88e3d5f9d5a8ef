"""The benchmark: in-memory data equal to the PNG round trip, claims checked and kept,
the PBBL selection rows, the preset's settings and methods, workers not changing rows.

(The CLI smoke runs are in ``test_cli.py``: ``test_benchmark_smoke``.)
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from medcommon.report import CLAIM_KEYS, make_results
from pbbl_cxr.benchmark import (
    NO_SHORTCUT,
    preset_methods,
    preset_settings,
    row_config,
    run_benchmark,
    shortcut_setting,
    synth_datasets,
    write_outputs,
)
from pbbl_cxr.claims import BEATS, NEAR, NO_HARM, declared_claims
from pbbl_cxr.config import run_preset, synth_preset
from pbbl_cxr.data import DataOptions, load_split
from pbbl_cxr.synth import generate

SPLITS = ("train", "valid", "test")


@pytest.mark.parametrize(("kind", "size"), [("gbp", 24), ("sbp", 24), ("gbp", 20)])
def test_in_memory_data_equals_writing_and_loading(tmp_path: Path, kind: str, size: int):
    """Same seed -> the very tensors ``generate`` + ``load_split`` give (order, labels, bias,
    pixels), also with a resize (24 px rendered, 20 px model) and SbP's two train files."""
    cfg = synth_preset("tiny", kind=kind, bias_ratio=0.9, n_train=40, n_valid=16, n_test=16)
    generate(tmp_path / "d", cfg, seed=3)
    mem = synth_datasets(cfg, seed=3, image_size=size)
    for split in SPLITS:
        disk = load_split(tmp_path / "d", split, DataOptions(image_size=size))
        assert torch.equal(mem[split].labels, disk.labels), split
        assert torch.equal(mem[split].bias, disk.bias), split
        assert mem[split].images.dtype == disk.images.dtype == torch.float16
        assert torch.equal(mem[split].images, disk.images), split


def test_no_shortcut_setting_only_strengthens_the_lesion():
    base, easy = (
        synth_preset("small", kind="gbp", bias_ratio=0.9),
        NO_SHORTCUT.synth_config("small"),
    )
    assert easy.lesion_contrast > base.lesion_contrast and easy.lesion_sigma > base.lesion_sigma
    assert (
        replace(easy, lesion_contrast=base.lesion_contrast, lesion_sigma=base.lesion_sigma) == base
    )
    assert not NO_SHORTCUT.shortcut and NO_SHORTCUT in preset_settings("small")


def test_pbbl_rows_select_with_and_without_bias_labels():
    cfg = run_preset("small")
    assert cfg.select_metric == "auc_balanced" or row_config("pbbl", cfg) is cfg
    # A config selecting on true-bias metrics: the pbbl row falls back to valid AUC.
    oracle_cfg = replace(cfg, select_metric="acc_worst_group")
    assert row_config("pbbl", oracle_cfg).select_metric == "auc"
    assert row_config("pbbl-oracle-select", oracle_cfg).select_metric == "auc_balanced"
    # A label-free config is kept as it is for pbbl; other methods never change.
    free = replace(cfg, select_metric="auc")
    assert row_config("pbbl", free) is free
    assert row_config("pbbl-oracle-select", free).select_metric == "auc_balanced"
    assert row_config("erm", oracle_cfg) is oracle_cfg


def test_demo_declares_only_what_its_three_methods_answer():
    names = [s.name for s in preset_settings("demo")]
    claims = declared_claims(["gbp-0.95"], ["no-shortcut"], preset_methods("demo"))
    assert names == ["gbp-0.95", "no-shortcut"]
    assert [(c.baseline, c.setting, c.test) for c in claims] == [
        ("erm", "gbp-0.95", "greater"),
        ("bbs-oracle", "gbp-0.95", "within"),
        ("erm", "no-shortcut", "within"),
    ]


def _row(method: str, setting: str, seed: int, conflicting: float, balanced: float) -> dict:
    return {
        "method": method,
        "seed": seed,
        "setting": setting,
        "metrics": {"auc_conflicting": conflicting, "auc_balanced": balanced},
    }


def test_claims_on_fabricated_rows_hold_or_fail_by_their_thresholds_and_are_all_kept(
    tmp_path: Path,
):
    """Hand-made means around each threshold; every claim is in results.json and report.md."""
    s, ns = "gbp-0.95", "no-shortcut"
    means = {  # (setting, method): (conflicting AUC, balanced AUC), seeds 0 and 1 at mean ± 0.01
        (s, "erm"): (0.50, 0.70),
        (s, "pbbl"): (0.50 + BEATS + 0.01, 0.80),  # beats ERM: holds
        (s, "bbs-oracle"): (0.50 + BEATS + 0.01 + NEAR + 0.02, 0.90),  # not near: fails
        (s, "lff"): (0.60, 0.80 - BEATS + 0.01),  # PBBL +0.04 balanced: fails
        (s, "gce"): (0.0, 0.50),  # holds
        (s, "pbbl-oracle-select"): (0.50 + BEATS + 0.01 - NEAR + 0.01, 0.80),  # within: holds
        (ns, "erm"): (1.0, 1.0),
        (ns, "pbbl"): (1.0 - NO_HARM - 0.01, 0.9),  # harm above 0.02: fails
    }
    rows = [
        _row(m, st, seed, c + d, b + d)
        for (st, m), (c, b) in means.items()
        for seed, d in ((0, -0.01), (1, 0.01))
    ]
    methods = sorted({m for _, m in means})
    claims = declared_claims([s], [ns], methods)
    results = make_results("pbbl-cxr", "0", "tiny", [0, 1], rows, claims=claims)
    results["settings"] = []
    write_outputs(tmp_path, results)
    saved = json.loads((tmp_path / "results.json").read_text())["claims"]
    assert len(saved) == len(claims) == 6
    assert all(set(c) >= CLAIM_KEYS for c in saved)
    holds = {(c["baseline"], c["setting"]): c["holds"] for c in saved}
    assert holds == {
        ("erm", s): True,
        ("bbs-oracle", s): False,
        ("lff", s): False,
        ("gce", s): True,
        ("pbbl-oracle-select", s): True,
        ("erm", ns): False,
    }
    first = next(c for c in saved if c["baseline"] == "erm" and c["setting"] == s)
    assert first["value"] == pytest.approx(0.56) and first["baseline_value"] == pytest.approx(0.5)
    report = (tmp_path / "report.md").read_text()
    assert report.count("| no |") == 3 and "PBBL does no harm" in report


def test_run_benchmark_writes_a_claim_per_declared_claim(tmp_path: Path):
    """A tiny run over one shortcut and the no-shortcut setting, every row."""
    cfg = replace(run_preset("tiny"), steps=2, bias_steps=2, eval_every=1)
    settings = [shortcut_setting("gbp", 0.9), NO_SHORTCUT]
    results = run_benchmark(tmp_path, preset="tiny", seeds=[0], cfg=cfg, settings=settings)
    methods = preset_methods("tiny")
    assert [r["method"] for r in results["rows"]] == methods * 2
    saved = json.loads((tmp_path / "results.json").read_text())
    declared = declared_claims(["gbp-0.9"], ["no-shortcut"], methods)
    assert len(saved["claims"]) == len(declared) == 6
    assert [c["claim"] for c in saved["claims"]] == [c.claim for c in declared]
    for c in saved["claims"]:
        assert set(c) >= CLAIM_KEYS and isinstance(c["holds"], bool)
        assert c["value"] is not None and c["baseline_value"] is not None
    assert saved["figures"][0] == "headline.png"
    assert all((tmp_path / f).is_file() for f in saved["figures"])
    assert [s["name"] for s in saved["settings"]] == ["gbp-0.9", "no-shortcut"]


@pytest.mark.slow  # two spawned processes import torch: ~10-30 s
def test_workers_do_not_change_the_rows(tmp_path: Path):
    cfg = replace(run_preset("tiny"), steps=2, bias_steps=2, eval_every=1)
    kw = dict(preset="tiny", seeds=[0, 1], cfg=cfg, methods=["erm"], kinds=["sbp"], ratios=[0.9])
    one = run_benchmark(tmp_path / "one", workers=1, **kw)
    two = run_benchmark(tmp_path / "two", workers=2, **kw)
    assert [r["metrics"] for r in one["rows"]] == [r["metrics"] for r in two["rows"]]
