"""Shared argparse flags for ``synth``, ``train``, ``evaluate`` and ``benchmark``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


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


def add_train_args(p: argparse.ArgumentParser, methods: list[str], default_method: str) -> None:
    """``--data --out --method --config --set --seed --device --resume --checkpoint-every --preset --quiet``."""
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--method", default=default_method, help=f"one of: {', '.join(methods)}")
    p.add_argument("--preset", default="tiny", help="tiny, small or full (default tiny)")
    add_config_args(p)
    add_common_args(p)
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="steps between checkpoints (default: config)",
    )


def add_synth_args(p: argparse.ArgumentParser) -> None:
    """``OUT_DIR --preset --seed --quiet``."""
    p.add_argument("out", type=Path, help="folder to write the synthetic dataset to")
    p.add_argument("--preset", default="tiny", help="tiny, small or full (default tiny)")
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
    """``--out --preset --seeds --data --device --quiet``."""
    p.add_argument(
        "--out", type=Path, required=True, help="folder for results.json, report.md, plots"
    )
    p.add_argument("--preset", default="small", help="tiny, small or full (default small)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument(
        "--data", type=Path, default=None, help="a real dataset instead of synthetic data"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
