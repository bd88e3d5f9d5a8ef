"""The run folder, and the one way a run command opens it.

A run folder holds (README "Shared contract")::

    RUN/config.json     {"schema": 1, "run": {...}, "config": {...}}
    RUN/log.jsonl       one JSON object per logged step
    RUN/model/          config.json + model.safetensors (or a Hugging Face folder)
    RUN/checkpoint/     the last full training state (for --resume)
    RUN/metrics.json    what the run measured

A run command goes through three steps, the same in every package::

    spec = app.spec(args)                          # the CLI: one RunSpec, built once
    run = open_run(spec, RunConfig, base=preset)   # resolve + check; nothing written yet
    ...                                            # the package reads and checks its inputs
    run.start(task="prostate")                     # the header: config.json
    ...                                            # train
    run.finish(metrics)                            # metrics.json

:func:`open_run` holds the rules every package shares: a new run needs a fresh
``--out``; ``--resume`` needs an existing run of the same package and command, takes
its method, seed, preset and config, and lets ``--config``/``--set`` change only the
fields the package names as resumable (step counts, cadences).

``config.json``'s ``run`` block says who wrote the run and how (package, version,
command, method, seed, preset, data, the git commit and whether the tree was dirty,
the time, and package facts in ``extra``); its ``config`` block is the fully resolved
config dataclass (:func:`~medcommon.config.config_to_dict`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from medcommon.config import changed_fields, config_from_dict, config_to_dict, resolve_config
from medcommon.errors import Diverged, InputError
from medcommon.fs import read_json, write_json_atomic
from medcommon.provenance import git_state
from medcommon.train.checkpoint import refuse_pickles

T = TypeVar("T")

SCHEMA = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoint"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run command was asked to do: built once by the CLI (:meth:`App.spec
    <medcommon.cli.App.spec>`), then passed whole.

    For a new run the CLI fills in the default method, seed and preset; with
    ``--resume`` they stay None unless given, and :func:`open_run` takes the run's own.
    ``options`` holds the command's own flags (``--sites``, ``--model``, ...) by their
    argparse names. ``device`` is resolved on construction (``auto`` -> ``cuda`` or
    ``cpu``; a CUDA device on a machine without one is an :class:`InputError`).
    """

    package: str
    version: str
    command: str
    out: Path
    data: Path | None = None
    method: str | None = None
    seed: int | None = None
    preset: str | None = None
    config_file: Path | None = None
    overrides: tuple[str, ...] = ()
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from medcommon.train.accelerator import resolve_device

        # a spec always names a device this machine has: auto -> cuda or cpu
        object.__setattr__(self, "device", resolve_device(self.device))
        object.__setattr__(self, "out", Path(self.out))

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Who wrote a run and how; the ``run`` block of ``config.json``."""

    package: str
    version: str
    command: str = "train"
    method: str | None = None
    seed: int | None = None
    preset: str | None = None
    data: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    created: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Run:
    """A run folder as read back by :func:`load_run`.

    ``config`` is the resolved config as a plain dict; :meth:`config_as` turns it
    into the package's dataclass (unknown keys are an :class:`InputError`).
    """

    path: Path
    info: RunInfo
    config: dict[str, Any]

    def config_as(self, cls: type[T]) -> T:
        """The config as the dataclass ``cls``."""
        return config_from_dict(cls, self.config, prefix=f"{self.path / CONFIG_FILE}: ")

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` of a finished run, or None while it is unfinished."""
        path = self.path / METRICS_FILE
        return read_json(path, METRICS_FILE) if path.is_file() else None


def make_run_info(
    package: str,
    version: str,
    command: str = "train",
    *,
    method: str | None = None,
    seed: int | None = None,
    preset: str | None = None,
    data: str | Path | None = None,
    **extra: Any,
) -> RunInfo:
    """A :class:`RunInfo` stamped with the time and the code's git commit (and dirtiness)."""
    commit, dirty = git_state()
    return RunInfo(
        package=package,
        version=version,
        command=command,
        method=method,
        seed=seed,
        preset=preset,
        data=str(Path(data).resolve()) if data is not None else None,
        git_commit=commit,
        git_dirty=dirty,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra),
    )


def write_run_config(out: str | Path, info: RunInfo, config: Any) -> Path:
    """Write ``out/config.json`` (atomically) in the current schema; returns its path.

    ``config`` is the resolved config dataclass (or an already converted dict).
    """
    cfg = config if isinstance(config, Mapping) else config_to_dict(config)
    return _write_header(Path(out), info, cfg)


def _write_header(out: Path, info: RunInfo, config: Mapping[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    header = {"schema": SCHEMA, "run": dataclasses.asdict(info), "config": dict(config)}
    write_json_atomic(path, header)
    return path


def write_metrics(out: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``out/metrics.json`` atomically; returns its path."""
    path = Path(out) / METRICS_FILE
    write_json_atomic(path, dict(metrics))
    return path


def load_run(path: str | Path, package: str | None = None) -> Run:
    """Read a run folder's ``config.json``.

    Args:
        path: the run folder.
        package: the package expected to have written it; a run of another package
            is an :class:`InputError` (evaluating a brats run with pbbl-cxr).

    Raises:
        InputError: no folder, no ``config.json``, unreadable JSON, another schema or package.
    """
    run = Path(path)
    if not run.is_dir():
        raise InputError(run, "run folder not found")
    cfg_path = run / CONFIG_FILE
    if not cfg_path.is_file():
        raise InputError(run, f"not a run folder (no {CONFIG_FILE})")
    raw = read_json(cfg_path, CONFIG_FILE)
    if not (
        isinstance(raw, dict) and isinstance(raw.get("run"), dict) and "config" in raw
    ) or not isinstance(raw["config"], dict):
        raise InputError(cfg_path, 'not a run header (expected {"schema", "run", "config"})')
    if raw.get("schema") != SCHEMA:
        raise InputError(cfg_path, f"schema {raw.get('schema')!r}; this version reads {SCHEMA}")
    loaded = Run(run, _info_from_dict(raw["run"], cfg_path), raw["config"])
    if package is not None and loaded.info.package != package:
        raise InputError(run, f"a run of {loaded.info.package}, not of {package}")
    return loaded


def _info_from_dict(data: Mapping[str, Any], where: Path) -> RunInfo:
    names = {f.name for f in dataclasses.fields(RunInfo)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(where, f"run.{unknown[0]}: unknown run field")
    if "package" not in data or "version" not in data:
        raise InputError(where, "run block without package and version")
    return RunInfo(**dict(data))


# --------------------------------------------------------------------- opening a run
def require_fresh_out(
    out: Path, what: str = "run folder", hint: str = "pass --resume or choose another --out"
) -> None:
    """Refuse an existing non-empty ``out`` so earlier results are never mixed or overwritten."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, f"exists and is a file, not a {what} ({hint})")
    if out.exists() and any(out.iterdir()):
        raise InputError(out, f"{what} already exists and is not empty ({hint})")


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or a lone process."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclasses.dataclass
class RunFolder(Generic[T]):
    """A run opened by :func:`open_run`: its spec (method and seed filled in), its config,
    and, on ``--resume``, the run read back (``saved``).

    ``existed``: whether ``spec.out`` was there (empty) before; while an ``--overwrite``
    run is being written, :attr:`path` is a staging folder beside ``spec.out``.
    """

    spec: RunSpec
    cfg: T
    saved: Run | None = None
    existed: bool = False
    staging: Path | None = None

    @property
    def path(self) -> Path:
        """Where the run's files go now (the staging folder of an ``--overwrite`` run)."""
        return self.staging or self.spec.out

    @property
    def resumed(self) -> bool:
        return self.saved is not None

    @property
    def method(self) -> str | None:
        return self.spec.method

    @property
    def seed(self) -> int:
        return int(self.spec.seed or 0)

    @property
    def extra(self) -> dict[str, Any]:
        """The saved run's ``run.extra`` facts (empty for a new run)."""
        return dict(self.saved.info.extra) if self.saved is not None else {}

    def start(self, cfg: T | None = None, **extra: Any) -> T:
        """Write the run's header, ``config.json``; returns the config as written.

        A new run gets a new header with ``extra`` facts; a resumed run keeps its own
        header, and its ``config`` block is rewritten only when the config changed
        (``--set steps=N`` extends a finished run).
        """
        if cfg is not None:
            self.cfg = cfg
        if self.saved is not None:
            info = self.saved.info
        else:
            info = make_run_info(
                self.spec.package,
                self.spec.version,
                self.spec.command,
                method=self.spec.method,
                seed=self.seed,
                preset=self.spec.preset,
                data=self.spec.data,
                **extra,
            )
        config = config_to_dict(self.cfg)
        if self.saved is None or changed_fields(self.saved.config, config):
            _write_header(self.path, info, config)
        return self.cfg

    def finish(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``metrics.json``; returns the metrics."""
        write_metrics(self.path, metrics)
        return dict(metrics)

    @contextlib.contextmanager
    def writing(self, cfg: T | None = None, **extra: Any) -> Iterator[T]:
        """Write the header (:meth:`start`), run the body, keep nothing of a failed run.

        ::

            with run.writing(task="prostate") as cfg:
                metrics = fit(cfg, ...)
                run.finish(metrics)

        - Bad input inside, a divergence included (:class:`InputError`,
          :class:`~medcommon.errors.Diverged`): a new run removes everything it wrote
          (the folder, or its contents where ``spec.out`` was an empty folder; an
          ``--overwrite`` run its staging folder), so the same command can be run again
          into the same ``--out``, and a run that was there before is never touched. A
          resumed run keeps its folder: its last checkpoint is still valid.
        - Success of an ``--overwrite`` run: the new run takes the old one's place in
          two renames, and the old one is removed.
        - Anything else (a bug, Ctrl-C) leaves the folder as it is, to ``--resume``.
        Only the main process of a multi-process launch touches the folders.
        """
        main = is_main_process()
        if self.spec.overwrite and self.saved is None:
            self.staging = self.spec.out.with_name(f".{self.spec.out.name}.overwrite")
            if main and self.staging.exists():  # a staging folder of an interrupted attempt
                shutil.rmtree(self.staging)
        try:
            yield self.start(cfg, **extra) if main else (cfg if cfg is not None else self.cfg)
        except Diverged as exc:
            if main and self.saved is None:
                self._discard()
            kept = (
                "its folder and last checkpoint are kept for --resume"
                if self.saved is not None
                else "nothing of this run was kept"
            )
            raise InputError(exc.where, f"{exc.problem}; {kept}") from None
        except InputError:
            if main and self.saved is None:
                self._discard()
            raise
        if self.staging is not None and main:
            _swap_in(self.staging, self.spec.out)
        self.staging = None

    def _discard(self) -> None:
        """Remove what this (new) run wrote."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        elif not self.existed:
            shutil.rmtree(self.spec.out, ignore_errors=True)
        elif self.spec.out.is_dir():  # it was an empty folder: empty it again
            for child in self.spec.out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def _swap_in(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; an existing ``target`` is removed only after."""
    old = target.with_name(f".{target.name}.replaced")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def open_run(
    spec: RunSpec,
    config_class: type[T] | Callable[[RunSpec], type[T]],
    *,
    base: Callable[[RunSpec], T],
    resumable: Iterable[str] = (),
) -> RunFolder[T]:
    """Resolve and check a run command's config; nothing is written yet.

    ``config_class`` is the config dataclass, or a function of the spec giving it
    (called once the method is known: a resumed run's own), where methods have
    configs of their own.

    New run: ``base(spec)`` (the preset, adjusted for the method) <- ``--config`` <-
    ``--set``; ``spec.out`` must not exist or be empty.

    ``--resume``: ``spec.out`` must hold a run of the same package and command; its
    method, seed and preset are the run's (a different ``--method``/``--seed`` is an
    error), its saved config is the base, and ``--config``/``--set`` may change only
    the dotted fields in ``resumable``.

    Raises:
        InputError: any of the above; a bad config field or value.
    """

    if spec.resume and spec.overwrite:
        raise InputError("--overwrite", "continues nothing: pass --resume or --overwrite, not both")
    existed = spec.out.exists()
    if not spec.resume and not spec.overwrite:
        require_fresh_out(
            spec.out,
            hint="pass --resume to continue it, --overwrite to replace it once the new "
            "run has finished, or choose another --out",
        )
    elif spec.overwrite and existed and not spec.out.is_dir():
        raise InputError(spec.out, "exists and is not a folder")
    saved = _resumed_run(spec) if spec.resume else None
    if saved is None:
        spec = spec.replace(seed=0 if spec.seed is None else spec.seed)
    else:
        info = saved.info
        spec = spec.replace(method=info.method, seed=info.seed, preset=info.preset)
    cls = config_class if isinstance(config_class, type) else config_class(spec)
    cfg = resolve_config(
        cls,
        base=base(spec) if saved is None else saved.config,
        file=spec.config_file,
        overrides=spec.overrides,
        changeable=None if saved is None else tuple(resumable),
        where="" if saved is None else f"{saved.path / CONFIG_FILE}: ",
    )
    return RunFolder(spec, cfg, saved, existed=existed)


def _resumed_run(spec: RunSpec) -> Run:
    """The run ``--resume`` continues: same package and command; a ``--method``,
    ``--seed`` or ``--preset`` given must be the run's own."""
    if not spec.out.is_dir():
        raise InputError(spec.out, "run folder not found (nothing to --resume)")
    saved = load_run(spec.out, package=spec.package)
    refuse_pickles(saved.checkpoint_dir)  # before any stage reads its state
    info = saved.info
    if info.command != spec.command:
        raise InputError(spec.out, f"a {info.command} run; resume it with `{info.command}`")
    for flag, given, have in (
        ("--method", spec.method, info.method),
        ("--seed", spec.seed, info.seed),
        ("--preset", spec.preset, info.preset),
    ):
        if given is not None and have is not None and given != have:
            raise InputError(flag, f"the run was started with {have!r}, not {given!r}")
    return saved


__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "SCHEMA",
    "Run",
    "RunFolder",
    "RunInfo",
    "RunSpec",
    "is_main_process",
    "load_run",
    "make_run_info",
    "open_run",
    "require_fresh_out",
    "write_metrics",
    "write_run_config",
]
