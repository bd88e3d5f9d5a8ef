"""Turning exceptions into the exit-code contract: 0 ok, 2 bad input, 1 internal error."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from medcommon.errors import InputError


def fail(where: str, problem: str) -> NoReturn:
    """Raise the :class:`InputError` that :func:`run_main` reports as ``error: where: problem``."""
    raise InputError(where, problem)


def run_main(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Call ``main(argv)`` and map its outcome to an exit code (see module docstring)."""
    try:
        code = main(argv)
    except InputError as exc:
        sys.stderr.write(f"error: {exc.where}: {_one_line(exc.problem)}\n")
        return 2
    except FileNotFoundError as exc:
        sys.stderr.write(f"error: {exc.filename or '?'}: file not found\n")
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not our error, and nothing left to say.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return 141
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except Exception:
        traceback.print_exc()
        sys.stderr.write(
            "internal error: this is a bug, please report it with the traceback above\n"
        )
        return 1
    return int(code or 0)


def _one_line(text: str) -> str:
    return " ".join(text.split())
