"""Mutation testing of PBBL's wiring with :mod:`medcommon.mutation` (mutmut-style,
no dependencies): one-line operator edits on the code lines of ``TARGETS``, applied
one at a time to a copy of ``src/``, each followed by the fast PBBL tests with ``-x``.

A mutant is *killed* if the tests fail (or time out), *survives* if they pass. The
operators are medcommon's generic ones plus PBBL's own (bias labels swapped for
pseudo labels, the wrong column, ...). Run from the repository root::

    python packages/pbbl_cxr/tests/scripts/mutants.py --out mutants.json [--per-line N]
    # round 2: the survivors against the whole of test_methods.py (every method end to end)
    python packages/pbbl_cxr/tests/scripts/mutants.py --rerun mutants.json --full --out r2.json

Prints the kill rate and the surviving mutants (file:line, before -> after).
"""

from __future__ import annotations

import sys
from pathlib import Path

from medcommon.mutation import OPERATORS, generated, main

PKG = Path(__file__).resolve().parents[2]  # packages/pbbl_cxr
REPO = PKG.parents[1]
# PBBL's own code first, then the other methods (a partial run still covers the core)
TARGETS = [
    "methods/pbbl.py",
    "pseudo.py",
    "losses.py",
    "methods/gce.py",
    "methods/bbs_oracle.py",
    "methods/erm.py",
    "methods/base.py",
    "methods/lff.py",
    "methods/groupdro.py",
]
# fastest first: with -x a killed mutant stops at its first failing test. Of
# test_methods.py only the step unit tests run: its end-to-end runs of every method are
# left out for speed on a shared 2-core machine (their PBBL checks are a subset of
# test_pbbl_wiring.py's).
TESTS = [
    "tests/test_pseudo.py",
    "tests/test_losses.py",
    "tests/test_methods.py::test_erm_and_gce_steps",
    "tests/test_methods.py::test_bbs_step_adds_log_prior_of_the_chosen_bias",
    "tests/test_methods.py::test_groupdro_step_upweights_the_worst_group",
    "tests/test_methods.py::test_lff_step_weights_debiased_ce_by_relative_difficulty",
    "tests/test_pbbl_wiring.py",
]
# (before, after): the first occurrence on a line is replaced.
PBBL_OPS = [  # PBBL's own slips, tried before medcommon's generic OPERATORS on each line
    ('"bias_hat"', '"bias"'),  # true bias labels fed where the pseudo labels belong
    (".labels", ".bias"),
    ("range(1, ", "range(2, "),
    ("(1, ", "(0, "),
    ("- 1", "- 2"),
]


def make_mutants(per_line: int = 1):
    ops = [*PBBL_OPS, *OPERATORS]
    files = [f"pbbl_cxr/{t}" for t in TARGETS]
    return generated(PKG / "src", files, ops, per_line)


if __name__ == "__main__":
    per_line = 1
    if "--per-line" in sys.argv:
        i = sys.argv.index("--per-line")
        per_line = int(sys.argv[i + 1])
        del sys.argv[i : i + 2]
    full = "--full" in sys.argv
    if full:
        sys.argv.remove("--full")
    roots = {"medcommon": REPO / "packages/medcommon/src", "pbbl": PKG / "src"}
    tests = [str(PKG / t) for t in (*TESTS, *(["tests/test_methods.py"] if full else []))]
    sys.exit(main(lambda: make_mutants(per_line), tests, roots=roots, cwd=REPO))
