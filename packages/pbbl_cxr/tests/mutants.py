"""Mutation testing of PBBL's wiring, for the one runner :mod:`medai_testkit.mutation`.

One-line operator edits on the code lines of ``TARGETS`` (PBBL's own operators first,
then the generic :data:`~medai_testkit.mutation.OPERATORS`), applied one at a time to
a copy of ``src/``, each followed by the fast PBBL tests with ``-x``. Run from the
repository root::

    python -m medai_testkit.mutation pbbl_cxr --list
    python -m medai_testkit.mutation pbbl_cxr --out mutants.json [--per-line N]
    # round 2: the survivors against the whole of test_methods.py (every method end to end)
    python -m medai_testkit.mutation pbbl_cxr --rerun mutants.json --full --out r2.json

Results so far: ``benchmarks/mutation/*.json``.
"""

from __future__ import annotations

from pathlib import Path

from medai_testkit.mutation import OPERATORS, Mutant, generated

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
# test_pbbl_wiring.py's); --full adds them.
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
PBBL_OPS = [  # PBBL's own slips, tried before the generic OPERATORS on each line
    ('"bias_hat"', '"bias"'),  # true bias labels fed where the pseudo labels belong
    (".labels", ".bias"),
    ("range(1, ", "range(2, "),
    ("(1, ", "(0, "),
    ("- 1", "- 2"),
]


def make_mutants(src: Path, per_line: int = 1) -> list[Mutant]:
    """Generated mutants of ``TARGETS`` (``src`` = ``packages/pbbl_cxr/src``)."""
    files = [f"pbbl_cxr/{t}" for t in TARGETS]
    return generated(src, files, [*PBBL_OPS, *OPERATORS], per_line)


def tests_for(mutant: Mutant, full: bool) -> list[str]:
    """The same tests for every mutant; ``full`` adds the whole of ``test_methods.py``."""
    return [*TESTS, *(["tests/test_methods.py"] if full else [])]
