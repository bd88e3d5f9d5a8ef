"""A small mutation tester (mutmut-style, no dependencies): one-line source edits applied
one at a time to a copy of ``src/``, each followed by the fast PBBL tests with ``-x``.

A mutant is *killed* if the tests fail (or time out), *survives* if they pass. Mutants
are made on code lines only (docstrings, comments, imports, decorators and message
strings are skipped), at most ``--per-line`` per line, from the operators in ``OPS``.

Run from the repository root::

    python packages/pbbl_cxr/tests/scripts/mutants.py --out mutants.json

Prints the kill rate and the surviving mutants (file:line, before -> after).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

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
OPS = [
    (" + ", " - "),
    (" - ", " + "),
    (" * ", " / "),
    (" / ", " * "),
    ("**", "*"),
    (" == ", " != "),
    (" != ", " == "),
    (" > ", " >= "),
    (" >= ", " > "),
    (" < ", " <= "),
    (" <= ", " < "),
    (" and ", " or "),
    (" or ", " and "),
    ("not ", ""),
    ("True", "False"),
    ("False", "True"),
    ('"bias_hat"', '"bias"'),
    (".labels", ".bias"),
    ("argmax", "argmin"),
    (".mean()", ".sum()"),
    ("max(", "min("),
    ("min(", "max("),
    ("[:, 1]", "[:, 0]"),
    ("range(1, ", "range(2, "),
    ("(1, ", "(0, "),
    ("- 1", "- 2"),
    ("1.0", "2.0"),
    ("0.0", "1.0"),
    ("log(", "exp("),
    ("return ", "return None  # "),
]
SKIP_PREFIXES = ("#", "import ", "from ", "@", "print(", "raise ", '"', "'", 'f"')


def code_lines(src: str) -> set[int]:
    """1-based line numbers that are code (not docstrings)."""
    tree = ast.parse(src)
    doc: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):  # dataclass field defaults: not behaviour
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    doc.update(range(item.lineno, item.end_lineno + 1))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            val = body[0].value
            if isinstance(val, ast.Constant) and isinstance(val.value, str):
                doc.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = src.splitlines()
    return {
        i
        for i, line in enumerate(lines, 1)
        if i not in doc
        and line.strip()
        and not line.strip().startswith(SKIP_PREFIXES)
        and "log_record" not in line
        and "file=sys.stderr" not in line
    }


def mutants(path: Path, per_line: int):
    src = path.read_text()
    lines = src.splitlines(keepends=True)
    for i in sorted(code_lines(src)):
        line, made = lines[i - 1], 0
        for before, after in OPS:
            if made >= per_line or before not in line.split("#")[0]:
                continue
            new = line.replace(before, after, 1)
            mutated = "".join([*lines[: i - 1], new, *lines[i:]])
            try:
                ast.parse(mutated)
            except SyntaxError:
                continue
            made += 1
            yield i, line.strip(), new.strip(), mutated


def run_tests(src_copy: Path, args_list: list[str], timeout: int) -> int:
    """Run pytest on the mutated copy in a forked child (torch etc. already imported in
    the parent, the package not: the child imports the mutated files). Returns the code."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(REPO)
            sys.path[:0] = [str(REPO / "packages/medcommon/src"), str(src_copy)]
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            code = int(pytest.main(args_list))
        except BaseException:
            code = 99
        os._exit(code)
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="mutants.json")
    ap.add_argument("--per-line", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument(
        "--only-survivors",
        metavar="PREV_JSON",
        help="rerun only the mutants that survived in an earlier --out (matched by file and edit)",
    )
    ap.add_argument("--all-tests", action="store_true", help="run all of test_methods.py too")
    args = ap.parse_args()
    tests = [t.split("::")[0] if args.all_tests else t for t in TESTS]
    tests = list(dict.fromkeys(tests))
    keep = None
    if args.only_survivors:
        prev = json.loads(Path(args.only_survivors).read_text())["results"]
        keep = {(r["file"], r["before"], r["after"]) for r in prev if r["status"] == "survived"}
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy  # noqa: F401  (imported once, before forking)
    import sklearn.metrics  # noqa: F401
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="pbbl-mut-"))
    src_copy = work / "src"
    shutil.copytree(PKG / "src", src_copy, ignore=shutil.ignore_patterns("__pycache__"))
    sys.dont_write_bytecode = True  # a stale .pyc must never stand in for a mutant
    pytest_args = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow and not gpu"]
    pytest_args += [str(PKG / t) for t in tests]
    if run_tests(src_copy, pytest_args, 600) != 0:  # every mutant would count as killed
        sys.exit("the unmutated tests fail")
    files = [f for pat in TARGETS for f in sorted((src_copy / "pbbl_cxr").glob(pat))]
    files = [f for f in files if f.name != "__init__.py"]
    results = []
    t0 = time.time()
    for f in files:
        original = f.read_text()
        rel = f.relative_to(src_copy)
        for line_no, before, after, mutated in mutants(f, args.per_line):
            if keep is not None and (str(rel), before, after) not in keep:
                continue
            f.write_text(mutated)
            try:
                rc = run_tests(src_copy, pytest_args, args.timeout)
            finally:
                f.write_text(original)
            status = "survived" if rc == 0 else ("killed (timeout)" if rc == -9 else "killed")
            results.append(
                {
                    "file": str(rel),
                    "line": line_no,
                    "before": before,
                    "after": after,
                    "status": status,
                }
            )
            print(f"{status:9s} {rel}:{line_no}: {after}", flush=True)
            Path(args.out).write_text(json.dumps({"results": results}, indent=1))
    killed = sum(r["status"] != "survived" for r in results)
    summary = {
        "mutants": len(results),
        "killed": killed,
        "kill_rate": killed / max(len(results), 1),
        "seconds": time.time() - t0,
    }
    Path(args.out).write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    print(json.dumps(summary))
    for r in results:
        if r["status"] == "survived":
            print(f"SURVIVED {r['file']}:{r['line']}: {r['before']}  ->  {r['after']}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
