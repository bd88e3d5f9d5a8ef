"""One console-script scaffold: a parser with ``--version``, commands by decorator, dispatch.

Every package's ``cli.py`` reads as a table of its commands::

    app = App("pbbl-cxr", "Pseudo bias-balanced learning ...", __version__)

    @app.command("train", "train one method on a dataset folder",
                 args=lambda p: add_train_args(p, METHODS, "pbbl"))
    def cmd_train(args):
        return train_run(app.spec(args))  # one RunSpec, passed whole

    main, entry, build_parser = app.main, app.entry, app.build_parser

Usage errors and :class:`~medcommon.errors.InputError` become one ``error:`` line
and exit code 2 (:func:`~medcommon.cli.runner.run_main`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medcommon.cli.args import make_parser, subparsers
from medcommon.run import RunSpec

# The flags every run command shares (medcommon.cli.args.add_run_args): RunSpec fields.
_SPEC_FLAGS = frozenset(
    {"command", "data", "out", "method", "seed", "preset", "config", "overrides", "device",
     "resume", "overwrite", "quiet", "checkpoint_every", "_default_method", "_default_preset"}
)  # fmt: skip

Handler = Callable[[argparse.Namespace], "int | None"]
AddArgs = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, argument builder and handler."""

    name: str
    help: str
    handler: Handler
    add_args: AddArgs | None = None


class App:
    """A console script: register commands with :meth:`command`, run with :meth:`entry`."""

    def __init__(self, prog: str, description: str, version: str) -> None:
        self.prog = prog
        self.description = description
        self.version = version
        self.commands: dict[str, Command] = {}

    def command(
        self, name: str, help: str, *, args: AddArgs | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler`` as subcommand ``name`` (duplicates refused)."""

        def register(handler: Handler) -> Handler:
            if name in self.commands:
                raise KeyError(f"{self.prog}: command {name!r} is already registered")
            self.commands[name] = Command(name, help, handler, args)
            return handler

        return register

    def spec(
        self, args: argparse.Namespace, shorthands: Mapping[str, str | None] | None = None
    ) -> RunSpec:
        """The :class:`~medcommon.run.RunSpec` of a parsed run command.

        A new run gets the command's default method, seed 0 and its default preset
        where none was given; ``--resume`` leaves them None (the run's own are used).
        The spec resolves the device (``auto`` -> ``cuda`` or ``cpu``).

        ``shorthands`` maps flags that set a config field to that field
        (``{"fold": "fold", "dtype": "scale.dtype"}``): a given flag becomes the
        override ``field=value``, before the ``--set`` ones (which win); a
        ``store_true`` flag becomes ``field=true`` when given. ``--checkpoint-every``
        is always the shorthand of ``checkpoint_every``. Every other flag goes to
        ``options``.
        """
        given = vars(args)
        resume = bool(given.get("resume"))
        short = {"checkpoint_every": "checkpoint_every", **(shorthands or {})}
        overrides = []
        for flag, field_name in short.items():
            value = given.get(flag)
            if value is None or value is False or field_name is None:
                continue
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            overrides.append(f"{field_name}={'true' if value is True else text}")
        overrides += list(given.get("overrides") or ())

        def default(name: str, fallback):
            value = given.get(name)
            return value if value is not None or resume else fallback

        return RunSpec(
            package=self.prog,
            version=self.version,
            command=str(given.get("command")),
            out=Path(given["out"]),
            data=None if given.get("data") is None else Path(given["data"]),
            method=default("method", given.get("_default_method")),
            seed=default("seed", 0),
            preset=default("preset", given.get("_default_preset")),
            config_file=given.get("config"),
            overrides=tuple(overrides),
            device=str(given.get("device") or "auto"),
            resume=resume,
            overwrite=bool(given.get("overwrite")),
            quiet=bool(given.get("quiet")),
            options={k: v for k, v in given.items() if k not in _SPEC_FLAGS and k not in short},
        )

    def build_parser(self) -> argparse.ArgumentParser:
        """The full parser: ``--version`` and one sub-parser per registered command."""
        parser = make_parser(self.prog, self.description, self.version)
        sub = subparsers(parser)
        for cmd in self.commands.values():
            p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
            if cmd.add_args is not None:
                cmd.add_args(p)
            p.set_defaults(_handler=cmd.handler)
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv`` and run the chosen command; returns its exit code."""
        args = self.build_parser().parse_args(None if argv is None else [str(a) for a in argv])
        handler = args._handler
        del args._handler
        return int(handler(args) or 0)

    def entry(self) -> None:
        """Console-script entry point: exit with :func:`run_main`'s code."""
        from medcommon.cli.runner import run_main

        raise SystemExit(run_main(self.main))
