"""One console-script scaffold: a parser with ``--version``, commands by decorator, dispatch.

Every package's ``cli.py`` reads as a table of its commands::

    app = App("pbbl-cxr", "Pseudo bias-balanced learning ...", __version__)

    @app.command("train", "train one method on a dataset folder",
                 args=lambda p: add_train_args(p, METHODS, "pbbl"))
    def cmd_train(args):
        ...  # a thin call into the library

    main, entry, build_parser = app.main, app.entry, app.build_parser

Usage errors and :class:`~medcommon.errors.InputError` become one ``error:`` line
and exit code 2 (:func:`~medcommon.cli.runner.run_main`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medcommon.cli.args import make_parser, subparsers

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
