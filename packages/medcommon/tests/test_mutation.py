"""medai_testkit.mutation: mutants are made on code lines only, run on a copy, and scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from medai_testkit.mutation import generated, listed, regex_mutants, run_mutants

TOY = '''\
"""A toy module."""


def scale(x, w=2.0):
    """Docstring with a + b that must not be mutated."""
    return x * w + 1  # a comment


def is_pos(x):
    return x > 0
'''


def _toy(tmp_path: Path, strong: bool) -> tuple[Path, Path]:
    src = tmp_path / "src"
    (src / "toy").mkdir(parents=True)
    (src / "toy" / "__init__.py").write_text("")
    (src / "toy" / "core.py").write_text(TOY)
    tests = tmp_path / "tests"
    tests.mkdir()
    body = "assert scale(3) == 7\n    assert is_pos(1) and not is_pos(0)" if strong else "scale(3)"
    (tests / "test_toy.py").write_text(
        f"from toy.core import is_pos, scale\n\n\ndef test_toy():\n    {body}\n"
    )
    return src, tests


def test_generated_mutants_skip_docstrings_and_comments(tmp_path):
    src, _ = _toy(tmp_path, strong=True)
    ms = generated(src, ["toy/core.py"])
    assert {m.line for m in ms} == {6, 10}  # the two code lines, not the docstrings
    assert all("#" not in m.new.split("#")[0] for m in ms)
    with pytest.raises(ValueError, match="occurs 0 times"):
        listed(src, "toy/core.py", "x - 1", "x", "absent")


@pytest.mark.parametrize("strong", [True, False])
def test_strong_tests_kill_and_weak_tests_let_survive_without_touching_the_tree(tmp_path, strong):
    src, tests = _toy(tmp_path, strong)
    ms = [
        listed(src, "toy/core.py", "x > 0", "x >= 0", "named: boundary"),
        *generated(src, ["toy/core.py"]),
    ]
    report = run_mutants(ms, [str(tests)], roots={"src": src}, cwd=tmp_path, timeout=120)
    killed = [r["killed"] for r in report["results"]]
    assert all(killed) if strong else not any(killed)
    assert report["summary"]["listed"] == 1
    assert (src / "toy" / "core.py").read_text() == TOY  # the working tree is never edited


def test_regex_mutants_edit_the_first_match_of_the_code_only(tmp_path):
    src, _ = _toy(tmp_path, strong=True)
    lines = list(enumerate(TOY.splitlines()))
    ms = regex_mutants(src, "toy/core.py", [lines[5]], [(r" \* ", " / "), (r"comment", "x")])
    assert [m.new for m in ms] == ["    return x / w + 1  # a comment\n"]  # not in the comment
    assert ms[0].old == TOY.splitlines(keepends=True)[5] and ms[0].line == 6
