"""Sessions for the monorepo: tests per package, lint, benchmarks, the demo, DDP.

`nox -l` lists them. The package list is read from packages/*/pyproject.toml, so
a new package is tested the day it is added. PyTorch is installed first in every
environment from MEDAI_TORCH (default: the CPU build torch==2.13.0); GPU users
set e.g. MEDAI_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126".
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

import nox

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).parent
CORE = "medcommon"
TORCH = os.environ.get("MEDAI_TORCH", "torch==2.13.0")
nox.options.sessions = ["lint", "tests", "runtime"]
nox.options.reuse_existing_virtualenvs = False


def _packages() -> dict[str, dict]:
    """``{folder name: [project] table}`` for every package; medcommon first."""
    found: dict[str, dict] = {}
    for folder in sorted((ROOT / "packages").iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        pyproject = folder / "pyproject.toml"
        if not pyproject.is_file():
            raise SystemExit(f"error: {folder}: a package folder without pyproject.toml")
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        if not (folder / "tests").is_dir():
            raise SystemExit(f"error: {folder}: a package without a tests/ folder")
        found[folder.name] = project
    if CORE not in found:
        raise SystemExit("error: packages/medcommon is missing")
    return {CORE: found.pop(CORE), **found}


PACKAGES = _packages()
METHOD_PACKAGES = [name for name in PACKAGES if name != CORE]


def _console_script(name: str) -> str:
    scripts = PACKAGES[name].get("scripts", {})
    if not scripts:
        raise SystemExit(f"error: packages/{name}: no [project.scripts] console script")
    return next(iter(scripts))


TESTKIT = ROOT / "tools" / "testkit"  # the shared suites and the mutation runner (tests only)


def _install(session: nox.Session, *names: str, extra: str = "") -> None:
    """Torch first (CPU wheel by default), then medcommon and the named packages, not editable;
    with ``extra="[test]"`` also the test kit (never a dependency of a runtime package)."""
    session.install(*shlex.split(TORCH))
    targets = [CORE, *[n for n in names if n != CORE]]
    specs = [f"{ROOT / 'packages' / n}{extra}" for n in targets]
    if extra == "[test]":
        specs.append(str(TESTKIT))
    session.install(*specs)


def _git(*args: str) -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


# Provenance (medcommon.provenance): the installed packages are copies of the tree as it
# was when nox started, so results name that commit and whether that tree was dirty
# (edits made while a long session runs do not reach the installed code, nor its record).
_COMMIT = _git("rev-parse", "HEAD")
SOURCE_ENV = {"MEDAI_SOURCE_ROOT": str(ROOT)}
if len(_COMMIT) == 40:
    SOURCE_ENV["MEDAI_GIT_COMMIT"] = _COMMIT
    SOURCE_ENV["MEDAI_GIT_DIRTY"] = (
        "1" if _git("status", "--porcelain", "--untracked-files=no") else "0"
    )


# Wheels that some tests read data files from, installed without their dependencies
# (torchxrayvision's would replace the pinned torch): pbbl-cxr's build-splits test reads
# the real NIH Data_Entry_2017 CSV shipped inside torchxrayvision's wheel.
TEST_DATA_WHEELS = {"pbbl_cxr": ["torchxrayvision>=1.2"]}


def _install_test_data(session: nox.Session, package: str) -> None:
    wheels = TEST_DATA_WHEELS.get(package, [])
    if wheels:
        session.install("--no-deps", *wheels)


def _pytest(
    session: nox.Session, package: str, marker: str, success_codes: tuple[int, ...] = (0,)
) -> None:
    """pytest over one package's tests; ``success_codes`` may admit 5 (nothing selected)."""
    session.run(
        "pytest",
        str(ROOT / "packages" / package / "tests"),
        "--rootdir",
        str(ROOT),
        "-m",
        marker,
        *session.posargs,
        env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **SOURCE_ENV},
        success_codes=list(success_codes),
    )


@nox.session
@nox.parametrize("package", list(PACKAGES), ids=list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """Unit tests of one package in its own virtualenv (only it and medcommon installed)."""
    _install(session, package, extra="[test]")
    _install_test_data(session, package)
    _pytest(session, package, "not slow and not gpu")


@nox.session(default=False)
@nox.parametrize("package", list(PACKAGES), ids=list(PACKAGES))
def tests_slow(session: nox.Session, package: str) -> None:
    """The slow tests: each method's effect on small synthetic data (minutes)."""
    _install(session, package, extra="[test]")
    _pytest(session, package, "slow and not gpu", success_codes=(0, 5))


# A GPU run must really use a GPU: the CPU wheel would only skip every `gpu` test.
_CPU_TORCH = "torch==2.13.0"  # TORCH's default above
_CUDA_TORCH_EXAMPLE = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
_CUDA_CHECK = """
import sys, torch
if not torch.cuda.is_available():
    sys.exit(
        f"error: tests_gpu: CUDA is not available in this session (torch {torch.__version__}, "
        f"built for CUDA {torch.version.cuda}); a GPU runner without a working GPU must not pass"
    )
print(f"CUDA {torch.version.cuda}, torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
"""


@nox.session(default=False)
@nox.parametrize("package", list(PACKAGES), ids=list(PACKAGES))
def tests_gpu(session: nox.Session, package: str) -> None:
    """Tests marked `gpu` (bf16/fp16 training steps, peak memory) with a CUDA build of torch.

    Fails, never skips, where CUDA is missing: MEDAI_TORCH must name a CUDA build, and
    ``torch.cuda.is_available()`` is checked in the session before pytest runs.
    """
    requested = os.environ.get("MEDAI_TORCH", "").strip()
    if not requested or shlex.split(requested) == [_CPU_TORCH] or "/whl/cpu" in requested:
        session.error(
            f"tests_gpu needs MEDAI_TORCH set to a CUDA build of torch (got {requested or 'nothing'!r}), "
            f'e.g. MEDAI_TORCH="{_CUDA_TORCH_EXAMPLE}"'
        )
    _install(session, package, extra="[test]")
    session.run("python", "-c", _CUDA_CHECK)
    _pytest(session, package, "gpu")


_RUNTIME_CHECK = """
import importlib.util, sys
assert importlib.util.find_spec("pytest") is None, "pytest is installed: not a runtime check"
import medcommon, medcommon.cli, medcommon.run, medcommon.presets
for name in sys.argv[1:]:
    __import__(name + ".cli")
print("imported without pytest:", ", ".join(["medcommon", *(n + ".cli" for n in sys.argv[1:])]))
"""


@nox.session
def runtime(session: nox.Session) -> None:
    """Every package as a user installs it (no test extras, no pytest): imports and
    ``--version`` of every console script, and each package's presets load."""
    _install(session, *PACKAGES)
    session.run("python", "-c", _RUNTIME_CHECK, *METHOD_PACKAGES)
    for name in PACKAGES:
        session.run(_console_script(name), "--version")
    for name in METHOD_PACKAGES:
        session.run(
            "python",
            "-c",
            f"from medcommon.presets import Presets; print('{name} presets:', Presets('{name}').names())",
        )


@nox.session(reuse_venv=True)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(default=False)
@nox.parametrize("package", list(PACKAGES), ids=list(PACKAGES))
def ddp(session: nox.Session, package: str) -> None:
    """Tests marked `ddp`: torchrun --nproc_per_node 2 (gloo on CPU) equals one process."""
    _install(session, package, extra="[test]")
    _pytest(session, package, "ddp", success_codes=(0, 5))  # 5: a package without such methods


def _run_benchmarks(
    session: nox.Session, out: Path, preset: str, seeds: list[str] | None
) -> tuple[list[Path], dict[str, float]]:
    """Each method package's ``benchmark`` into ``out/<package>``; returns folders and wall seconds."""
    done, seconds = [], {}
    for name in METHOD_PACKAGES:
        target = out / name
        if target.exists():  # a benchmark refuses to mix with an earlier run's files
            shutil.rmtree(target)
        start = time.monotonic()
        session.run(
            _console_script(name),
            "benchmark",
            "--preset",
            preset,
            *(["--seeds", *seeds] if seeds else []),
            "--out",
            str(target),
            "--quiet",
            env=SOURCE_ENV,
        )
        seconds[name] = round(time.monotonic() - start, 1)
        done.append(target)
    return done, seconds


def _timing_table(seconds: dict[str, float]) -> str:
    lines = ["## Wall time of this run\n", "| package | seconds |", "|---|---|"]
    lines += [f"| {name} | {secs:.0f} |" for name, secs in seconds.items()]
    lines.append(f"| **all** | **{sum(seconds.values()):.0f}** |")
    return "\n".join(lines) + "\n"


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks at preset `small`: medcommon's loop and readers, then every method package."""
    _install(session, *PACKAGES)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    session.run(
        "python",
        str(ROOT / "packages" / CORE / "benchmarks" / "bench_core.py"),
        "--out",
        str(out / CORE),
    )
    dirs, seconds = _run_benchmarks(session, out, "small", ["0", "1", "2"])
    session.run(
        "medcommon", "report", str(out / CORE), *map(str, dirs), "--out", str(out / "report.md")
    )
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + _timing_table(seconds))
    session.log(f"combined report: {out / 'report.md'}")


@nox.session(default=False)
def reproduce(session: nox.Session) -> None:
    """Rerun the demo and compare every metric with the committed
    ``packages/<pkg>/benchmarks/demo/results.json`` (``medcommon compare``, tolerance 0):
    the largest difference per package, and a failure when any value or claim differs.
    ``-- --tolerance X`` relaxes the check."""
    tolerance = (
        session.posargs[session.posargs.index("--tolerance") + 1]
        if ("--tolerance" in session.posargs)
        else "0"
    )
    _install(session, *PACKAGES)
    out = ROOT / "reproduce-results"
    out.mkdir(exist_ok=True)
    dirs, seconds = _run_benchmarks(session, out, "demo", None)
    failed = []
    for name, folder in zip(METHOD_PACKAGES, dirs):
        committed = ROOT / "packages" / name / "benchmarks" / "demo"
        session.log(f"{name}: committed {committed} vs rerun {folder} ({seconds[name]:.0f} s)")
        try:
            session.run(
                "medcommon", "compare", str(committed), str(folder), "--tolerance", tolerance
            )
        except nox.command.CommandFailed:
            failed.append(name)
    session.log(f"demo wall time: {sum(seconds.values()):.0f} s ({seconds})")
    if failed:
        session.error(f"the demo does not reproduce its committed results: {', '.join(failed)}")


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """Each method package's benchmark at preset `demo` (its central claim, minutes on a laptop
    CPU), then the combined report: the headline table of claims first, one figure per package."""
    _install(session, *PACKAGES)
    out = ROOT / "demo-results"
    out.mkdir(exist_ok=True)
    if not METHOD_PACKAGES:
        session.log(
            "no method package has a benchmark yet: nothing to demo beyond medcommon's tests"
        )
        return
    dirs, seconds = _run_benchmarks(session, out, "demo", None)
    session.run("medcommon", "report", *map(str, dirs), "--out", str(out / "report.md"))
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + _timing_table(seconds))
    print((out / "report.md").read_text(encoding="utf-8"))
