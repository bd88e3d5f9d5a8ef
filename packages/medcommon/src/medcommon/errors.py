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


DIVERGENCE_ADVICE = (
    "lower the learning rate (--set lr=...), clip gradients, or train in bf16 rather "
    "than fp16; nothing of this run was kept"
)


class Diverged(InputError):
    """Training diverged: a non-finite loss, or one grown past its bound.

    A bad setting (learning rate, precision) rather than a bug, so it is reported as bad
    input, exit code 2, with advice; the run that diverged is removed
    (:meth:`medcommon.run.RunFolder.writing`).
    """

    def __init__(self, what: str, advice: str = DIVERGENCE_ADVICE) -> None:
        super().__init__("training", f"diverged: {what}; {advice}")
