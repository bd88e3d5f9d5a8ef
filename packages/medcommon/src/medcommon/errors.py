"""The one exception type that means "the user's input is wrong".

Console scripts turn an :class:`InputError` into a single line
``error: <where>: <problem>`` on stderr and exit code 2 (see :mod:`medcommon.cli`).
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: a file, a manifest row, a config field or a command-line value.

    Args:
        where: what is wrong, named so the user can find it (a path, ``file:row``,
            a config field such as ``--set lr``).
        problem: what is wrong with it, in a few words.
    """

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
