"""Provenance of results: commit, dirty tree, threads, torch, the claims files' commits;
post-hoc claims listed but not counted; the combined report marks what it should."""

from __future__ import annotations

import torch

from medcommon.provenance import changed_since, git_state, module_source, provenance
from medcommon.report import Claim, combine_reports, make_results, write_results

ROWS = [
    {"method": m, "seed": s, "metrics": {"auc": v + 0.01 * s}}
    for s in range(3)
    for m, v in (("pbbl", 0.8), ("erm", 0.6))
]


def test_module_source_is_the_repository_path():
    assert module_source("pbbl_cxr.claims") == "packages/pbbl_cxr/src/pbbl_cxr/claims.py"


def test_provenance_names_commit_threads_torch_and_sources(monkeypatch):
    monkeypatch.setenv("MEDAI_GIT_COMMIT", "a" * 40)
    monkeypatch.setenv("MEDAI_GIT_DIRTY", "1")
    prov = provenance([module_source("medcommon.run")])
    assert prov["git_commit"] == "a" * 40 and prov["git_dirty"] is True
    assert prov["threads"] == torch.get_num_threads()
    assert prov["torch"] == torch.__version__
    assert list(prov["sources"]) == ["packages/medcommon/src/medcommon/run.py"]


def test_git_state_of_this_checkout(monkeypatch):
    monkeypatch.delenv("MEDAI_GIT_COMMIT", raising=False)
    commit, dirty = git_state()
    if commit is None:  # installed outside a checkout: nothing to compare
        return
    assert len(commit) == 40 and isinstance(dirty, bool)
    path = module_source("medcommon.run")
    assert changed_since(path, commit) is False  # nothing after HEAD


def test_results_carry_provenance_and_post_hoc_claims_are_not_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAI_GIT_COMMIT", "b" * 40)
    monkeypatch.setenv("MEDAI_GIT_DIRTY", "1")
    claims = [
        Claim("PBBL beats ERM", "pbbl", "erm", "auc", margin=0.1),
        Claim("ERM beats PBBL", "erm", "pbbl", "auc"),
        Claim("seen first, then written", "pbbl", "erm", "auc", post_hoc=True),
    ]
    res = make_results("pkg", "0.1", "tiny", [0], ROWS, claims=claims, sources=["x/claims.py"])
    assert res["provenance"]["git_dirty"] is True
    assert [c["post_hoc"] for c in res["claims"]] == [False, False, True]
    write_results(tmp_path, res)
    text = combine_reports([tmp_path])
    assert "## Headline: 1 of 2 claims hold" in text
    assert "(post hoc), not counted" in text
    assert "run from a dirty tree at bbbbbbbbbb" in text


def test_report_without_provenance_says_so(tmp_path):
    res = make_results("pkg", "0.1", "tiny", [0], ROWS)
    del res["provenance"]
    write_results(tmp_path, res)
    assert "no provenance recorded" in combine_reports([tmp_path])


def test_load_beside_imports_the_file_next_to_a_script_once(tmp_path):
    import sys

    from medcommon.provenance import load_beside

    (tmp_path / "protocol.py").write_text("SEEDS = (0, 1)\nLOADS = []\nLOADS.append(1)\n")
    script = tmp_path / "run.py"
    name = f"_medcommon_test_protocol_{tmp_path.name}"
    try:
        first = load_beside(script, "protocol.py", name)
        again = load_beside(str(script), "protocol.py", name)
        assert first is again and first.SEEDS == (0, 1) and first.LOADS == [1]
    finally:
        sys.modules.pop(name, None)
