"""Shared argparse flags for ``synth``, ``train``, ``evaluate`` and ``benchmark``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from medcommon.config import PRESETS
from medcommon.registry import Registry

BENCHMARK_THREADS = 1
"""CPU threads per benchmark process unless ``--threads`` says otherwise
(:func:`medcommon.train.fix_threads` pins them). One: a benchmark parallelises over
worker processes where it has them, and two threads on a loaded 2-core machine spin
in OpenMP waits (measured: a tiny benchmark 13 s at 1 thread, 87 s at 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``error:`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(2)


def make_parser(prog: str, description: str, version: str) -> argparse.ArgumentParser:
    """A top-level parser with ``--version``; add subcommands with ``add_subparsers``."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    return parser


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """Subcommand registry whose sub-parsers share the one-line error behaviour."""
    return parser.add_subparsers(dest="command", required=True, parser_class=_Parser)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """``--seed``, ``--device``, ``--quiet``."""
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config F.yaml`` and repeated ``--set key=value``."""
    p.add_argument("--config", type=Path, default=None, help="YAML file of config fields")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field (repeatable; dotted keys for nested fields)",
    )


def _method_names(methods: Registry | Sequence[str]) -> list[str]:
    return methods.names() if isinstance(methods, Registry) else list(methods)


def _method_help(methods: Registry | Sequence[str], what: str) -> str:
    if isinstance(methods, Registry):
        return f"{what}; {methods.help()}"
    return f"{what}; one of {', '.join(methods)}"


def _checked(check: Callable[[str], object]) -> type[argparse.Action]:
    """An argparse action that validates each value with ``check`` (which raises InputError).

    Unlike ``choices``, the error is the registry's own one line
    (``error: --method: unknown method 'x'; choose from ...``), the same as in the library.
    """

    class _Checked(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            for value in values if isinstance(values, list) else [values]:
                check(value)
            setattr(namespace, self.dest, values)

    return _Checked


def add_method_arg(
    p: argparse.ArgumentParser,
    methods: Registry | Sequence[str],
    default: str | None,
    flag: str = "--method",
) -> None:
    """``--method NAME``: validated against, and documented from, the registry."""
    names = _method_names(methods)
    check = methods.get if isinstance(methods, Registry) else Registry.of(names, "method").get
    p.add_argument(
        flag,
        default=default,
        action=_checked(check),
        metavar="{" + ",".join(names) + "}",
        help=_method_help(methods, f"default {default}" if default else "the method"),
    )


def add_methods_arg(
    p: argparse.ArgumentParser, methods: Registry | Sequence[str], flag: str = "--methods"
) -> None:
    """``--methods A B ...``: a subset of the registry (default: all of it)."""
    names = _method_names(methods)
    check = methods.get if isinstance(methods, Registry) else Registry.of(names, "method").get
    p.add_argument(
        flag,
        nargs="+",
        default=None,
        action=_checked(check),
        metavar="METHOD",
        help=f"subset of: {' '.join(names)} (default: all)",
    )


def add_preset_arg(p: argparse.ArgumentParser, default: str | None = "tiny") -> None:
    """``--preset NAME``: a preset file of the package (:mod:`medcommon.presets`), checked
    when it is read: :data:`medcommon.config.PRESETS` or one of the package's own."""
    p.add_argument(
        "--preset",
        default=default,
        metavar="NAME",
        help=f"{', '.join(PRESETS)} or another file in the package's configs/"
        + (f" (default {default})" if default else ""),
    )


def add_train_args(
    p: argparse.ArgumentParser,
    methods: Registry | Sequence[str],
    default_method: str | None,
    default_preset: str = "tiny",
) -> None:
    """``--data --out --method --config --set --seed --device --resume --checkpoint-every --preset --quiet``.

    ``--method``, ``--seed`` and ``--preset`` parse to None when not given, so that
    ``--resume`` takes the run's own; :meth:`medcommon.cli.App.spec` fills in the
    defaults (``default_method``, 0, ``default_preset``) for a new run.
    """
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    add_run_args(p, methods, default_method, default_preset)
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="steps between checkpoints (default: config)",
    )


def add_run_args(
    p: argparse.ArgumentParser,
    methods: Registry | Sequence[str] | None,
    default_method: str | None,
    default_preset: str | None,
) -> None:
    """What every run command shares: ``--method --preset --config --set --seed --device
    --quiet --resume`` (``--method`` only with ``methods``); see :func:`add_train_args`."""
    if methods is not None:
        add_method_arg(p, methods, default_method)
        p.set_defaults(method=None)
    add_preset_arg(p, default_preset)
    p.set_defaults(preset=None)
    add_config_args(p)
    add_common_args(p)
    p.set_defaults(seed=None, _default_method=default_method, _default_preset=default_preset)
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run in --out, once the new run has finished (until then, "
        "and if it fails, the old run stays as it was)",
    )


def add_predict_args(p: argparse.ArgumentParser, inputs_help: str) -> None:
    """``--run RUN PATH... [--out FILE] --device --quiet`` for inference on new inputs."""
    p.add_argument("--run", type=Path, required=True, help="a run folder written by train")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help=inputs_help)
    p.add_argument(
        "--out", type=Path, default=None, help="write the predictions here (default: stdout)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_synth_args(p: argparse.ArgumentParser) -> None:
    """``OUT_DIR --preset --seed --quiet``."""
    p.add_argument("out", type=Path, help="folder to write the synthetic dataset to")
    add_preset_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_evaluate_args(
    p: argparse.ArgumentParser, default_split: str = "test", split_help: str | None = None
) -> None:
    """``--run --data --split --device --quiet``."""
    p.add_argument("--run", type=Path, required=True, help="a run folder written by train")
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument(
        "--split",
        default=default_split,
        help=split_help or f"split to evaluate (default {default_split})",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
    """``--out --preset --seeds --data --device --threads --quiet``."""
    p.add_argument(
        "--out", type=Path, required=True, help="folder for results.json, report.md, plots"
    )
    add_preset_arg(p, "small")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument(
        "--data", type=Path, default=None, help="a real dataset instead of synthetic data"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument(
        "--threads",
        type=int,
        default=BENCHMARK_THREADS,
        help="CPU threads per process, pinned whatever OMP_NUM_THREADS says, so that the "
        f"numbers do not depend on the machine (default {BENCHMARK_THREADS}; recorded)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
