"""Mutation testing of a method's wiring: one-line source edits, each run against the fast tests.

A *mutant* is one edit of one source file (old text -> new text). Each is applied to
a fresh copy of the package's source folder, never to the working tree, and the
given fast tests run on that copy in a new process with ``-x``: the mutant is
*killed* when they fail (or time out) and *survives* when they pass. Two kinds:

- *listed* mutants, the wiring breaks an issue names (a sign flip, a term dropped, a
  teacher not frozen), written out by hand: :func:`listed`;
- *generated* mutants, one-token operator edits (:data:`OPERATORS`) on every code
  line of the target files, docstrings, comments, imports, decorators, messages and
  dataclass defaults skipped: :func:`generated`.

One runner for every package, from the repository root::

    python -m medai_testkit.mutation PACKAGE [--only S] [--list] [--out F] [--rerun F]
                                             [--per-line N] [--full] [--timeout SECONDS]

``PACKAGE`` is a folder under ``packages/``; its ``tests/mutants.py`` says what to
mutate and which tests judge it, in two functions::

    def make_mutants(src: Path, per_line: int = 1) -> list[Mutant]:
        ...  # src is packages/<pkg>/src; listed mutants first, then generated ones
    def tests_for(mutant: Mutant, full: bool) -> list[str]:
        ...  # test paths relative to packages/<pkg>/, cheapest first

``--list`` shows the mutants, ``--only`` filters them by file or name, ``--rerun FILE``
runs only the survivors of an earlier run, ``--full`` asks the package for its wider
test set, and ``--out`` receives the results (JSON, written atomically after every
mutant).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

OPERATORS: tuple[tuple[str, str], ...] = (
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
    ("= -", "= "),
    (".detach()", ""),
    (".mean()", ".sum()"),
    ("argmax", "argmin"),
    ("max(", "min("),
    ("min(", "max("),
    ("[:, 1]", "[:, 0]"),
    ("[:, :-1]", "[:, 1:]"),
    ("[:, 1:]", "[:, :-1]"),
    ("dim=-1", "dim=0"),
    ("dim=1", "dim=0"),
    (".eval()", ".train()"),
    ("1.0", "2.0"),
    ("0.0", "1.0"),
    ("log(", "exp("),
    ("return ", "return None  # "),
)
"""Generic one-token edits: signs, reductions, comparisons, shifts, modes, returns."""

_SKIP_PREFIXES = ("#", "import ", "from ", "@", "print(", "raise ", '"', "'", 'f"')


@dataclass(frozen=True)
class Mutant:
    """One edit: ``old`` -> ``new`` in ``file`` (relative to its source root ``root``).

    ``kind="listed"``: ``old`` is a snippet occurring once in the file; any other kind
    (``generated``, or a package's own such as ``named``): ``old`` is the whole line
    ``line`` (with its newline), replaced by ``new``.
    """

    root: str
    file: str
    line: int
    old: str
    new: str
    name: str = ""
    kind: str = "generated"

    @property
    def label(self) -> str:
        return self.name or f"{self.file}:{self.line}: {self.new.strip()}"


def code_lines(src: str) -> set[int]:
    """1-based numbers of the lines worth mutating: code, not docs, imports or defaults."""
    tree = ast.parse(src)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):  # dataclass field defaults: config, not wiring
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    skip.update(range(item.lineno, item.end_lineno + 1))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            val = body[0].value
            if isinstance(val, ast.Constant) and isinstance(val.value, str):
                skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    return {
        i
        for i, line in enumerate(src.splitlines(), 1)
        if i not in skip
        and line.strip()
        and not line.strip().startswith(_SKIP_PREFIXES)
        and "file=sys.stderr" not in line
    }


def generated(
    root: str | Path,
    files: Iterable[str],
    operators: Sequence[tuple[str, str]] = OPERATORS,
    per_line: int = 1,
) -> list[Mutant]:
    """Operator mutants of ``files`` (relative to ``root``), at most ``per_line`` per line.

    An operator applies to the first match on a line, outside a trailing comment; a
    mutant that does not parse is skipped.
    """
    out = []
    for rel in files:
        src = (Path(root) / rel).read_text(encoding="utf-8")
        lines = src.splitlines(keepends=True)
        for i in sorted(code_lines(src)):
            line, made = lines[i - 1], 0
            for old, new in operators:
                if made >= per_line or old not in line.split("#")[0]:
                    continue
                mutated = line.replace(old, new, 1)
                try:
                    ast.parse("".join([*lines[: i - 1], mutated, *lines[i:]]))
                except SyntaxError:
                    continue
                made += 1
                out.append(Mutant(str(root), rel, i, line, mutated))
    return out


def regex_mutants(
    root: str | Path,
    file: str,
    lines: Iterable[tuple[int, str]],
    rules: Sequence[tuple[str, str]],
) -> list[Mutant]:
    """One mutant per (line, rule) whose regex matches the line's code: the first match
    (before a trailing ``  #`` comment) replaced. ``lines``: ``(0-based index, text)``
    without newlines, as a package's own line filter yields them."""
    out = []
    for i, ln in lines:
        code = ln.split("  #")[0]
        for pat, rep in rules:
            m = re.search(pat, code)
            if m:
                new = ln[: m.start()] + re.sub(pat, rep, ln[m.start() :], count=1)
                out.append(Mutant(str(root), file, i + 1, ln + "\n", new + "\n"))
    return out


def listed(root: str | Path, file: str, old: str, new: str, name: str) -> Mutant:
    """A hand-written mutant; ``old`` must occur exactly once in ``root/file``."""
    src = (Path(root) / file).read_text(encoding="utf-8")
    if src.count(old) != 1:
        raise ValueError(f"{name}: {old!r} occurs {src.count(old)} times in {file}, need once")
    line = src[: src.index(old)].count("\n") + 1
    return Mutant(str(root), file, line, old, new, name, "listed")


def _apply(m: Mutant, copy: Path) -> None:
    path = copy / m.file
    src = path.read_text(encoding="utf-8")
    if m.kind == "listed":
        path.write_text(src.replace(m.old, m.new, 1), encoding="utf-8")
        return
    lines = src.splitlines(keepends=True)
    if lines[m.line - 1] != m.old:
        raise ValueError(f"{m.file}:{m.line} changed since the mutants were made")
    lines[m.line - 1] = m.new
    path.write_text("".join(lines), encoding="utf-8")


def run_tests(
    tests: Sequence[str], pythonpath: Sequence[Path], cwd: Path, timeout: float
) -> tuple[bool, str]:
    """Run ``pytest -x`` on ``tests`` with ``pythonpath`` first; (passed, first failure line)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(map(str, pythonpath)),
        "PYTHONDONTWRITEBYTECODE": "1",  # a stale .pyc must never stand in for a mutant
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    cmd += ["-m", "not slow and not gpu", *tests]
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout"
    first = [ln for ln in p.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return p.returncode == 0, (first[0] if first else "")


def run_mutants(
    mutants: Sequence[Mutant],
    tests: Sequence[str] | Callable[[Mutant], Sequence[str]],
    *,
    roots: dict[str, Path],
    cwd: Path,
    timeout: float = 600,
    out: Path | None = None,
) -> dict:
    """Run every mutant on copies of the source ``roots`` (``{import root: src folder}``).

    ``roots`` lists every source folder the tests import (e.g. medcommon's and the
    package's ``src/``); each is copied once (with the ``configs/`` folder beside it), a mutant edits its copy and is undone after its
    run. ``tests`` is one list for all mutants, or a function giving each mutant its
    own (e.g. the tests of the file it edits). The unmutated tests must pass first
    (else every mutant would count as killed).
    Returns ``{"summary": {...}, "results": [...]}``, also written to ``out``.
    """
    from medcommon.fs import atomic_path

    if not mutants:
        return {"summary": _summary([], 0.0), "results": []}
    work = Path(tempfile.mkdtemp(prefix="mutants-"))
    try:
        copies = {}
        for key, src in roots.items():
            # packages/<pkg>/{src,configs} -> work/<key>/{src,configs}: the package finds
            # its preset files beside src/ as in a checkout (medcommon.presets)
            copies[str(src)] = work / key / "src"
            shutil.copytree(src, copies[str(src)], ignore=shutil.ignore_patterns("__pycache__"))
            if (Path(src).parent / "configs").is_dir():
                shutil.copytree(Path(src).parent / "configs", work / key / "configs")
        path = list(copies.values())
        tests_of = tests if callable(tests) else (lambda m: tests)
        every = list(dict.fromkeys(t for m in mutants for t in tests_of(m)))
        ok, why = run_tests(every, path, cwd, timeout)
        if not ok:
            raise RuntimeError(f"the unmutated tests fail: {why}")
        results, t0 = [], time.time()
        for k, m in enumerate(mutants):
            copy = copies[m.root]
            original = (copy / m.file).read_text(encoding="utf-8")
            _apply(m, copy)
            t1 = time.time()
            try:
                passed, why = run_tests(tests_of(m), path, cwd, timeout)
            finally:
                (copy / m.file).write_text(original, encoding="utf-8")
            res = {**asdict(m), "killed": not passed, "by": why, "seconds": round(time.time() - t1)}
            res["root"] = Path(m.root).name
            results.append(res)
            tag = "killed  " if not passed else "SURVIVED"
            print(f"[{k + 1}/{len(mutants)}] {tag} {m.label}", flush=True)
            report = {"summary": _summary(results, time.time() - t0), "results": results}
            if out is not None:
                with atomic_path(out) as tmp:
                    tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
        return {"summary": _summary(results, time.time() - t0), "results": results}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _summary(results: list[dict], seconds: float) -> dict:
    killed = sum(r["killed"] for r in results)
    listed_ = [r for r in results if r["kind"] != "generated"]  # hand-written ones
    return {
        "mutants": len(results),
        "killed": killed,
        "kill_rate": killed / max(len(results), 1),
        "listed": len(listed_),
        "listed_killed": sum(r["killed"] for r in listed_),
        "seconds": round(seconds),
    }


def load_spec(package_dir: Path):
    """The module ``packages/<pkg>/tests/mutants.py`` (loaded by path: tests are no package)."""
    import importlib.util

    path = package_dir / "tests" / "mutants.py"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no mutant spec (make_mutants, tests_for)")
    spec = importlib.util.spec_from_file_location(f"_mutants_{package_dir.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("make_mutants", "tests_for"):
        if not callable(getattr(module, name, None)):
            raise SystemExit(f"error: {path}: defines no {name}()")
    return module


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring)."""
    ap = argparse.ArgumentParser(
        prog="python -m medai_testkit.mutation", description="mutation testing of a method's wiring"
    )
    ap.add_argument("package", help="a folder under packages/, e.g. pbbl_cxr")
    ap.add_argument("--root", default=".", help="the repository root (default: here)")
    ap.add_argument("--only", default="", help="only mutants whose file or name contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--out", default="mutants.json", help="results file (JSON)")
    ap.add_argument("--rerun", help="an earlier --out: run only the mutants that survived there")
    ap.add_argument("--per-line", type=int, default=1, help="generated mutants per line")
    ap.add_argument("--full", action="store_true", help="the package's wider test set")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mutant")
    args = ap.parse_args(argv)
    repo = Path(args.root).resolve()
    pkg = repo / "packages" / args.package
    if not (pkg / "src").is_dir():
        raise SystemExit(f"error: {pkg}: not a package folder (no src/)")
    spec = load_spec(pkg)
    mutants = [
        m
        for m in spec.make_mutants(pkg / "src", per_line=args.per_line)
        if args.only in m.file or args.only in m.name
    ]
    if args.rerun:
        old = json.loads(Path(args.rerun).read_text())["results"]
        alive = {(r["file"], r["line"], r["new"]) for r in old if not r["killed"]}
        mutants = [m for m in mutants if (m.file, m.line, m.new) in alive]
    if args.list:
        for m in mutants:
            print(f"{m.kind:9s} {m.label}")
        print(f"{len(mutants)} mutants")
        return 0
    roots = {"medcommon": repo / "packages/medcommon/src", args.package: pkg / "src"}
    report = run_mutants(
        mutants,
        lambda m: [str(pkg / t) for t in spec.tests_for(m, args.full)],
        roots=roots,
        cwd=repo,
        timeout=args.timeout,
        out=Path(args.out),
    )
    s = report["summary"]
    print(
        f"killed {s['killed']}/{s['mutants']} = {s['kill_rate']:.1%}; "
        f"listed {s['listed_killed']}/{s['listed']}"
    )
    for r in report["results"]:
        if not r["killed"]:
            print(f"SURVIVED {r['file']}:{r['line']}: {r['old'].strip()}  ->  {r['new'].strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
