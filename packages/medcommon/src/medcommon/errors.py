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


def divergence_advice(lr_field: str = "lr") -> str:
    """What to try after a divergence, naming the learning-rate field that drove it."""
    return (
        f"lower the learning rate (--set {lr_field}=...), clip gradients, or train in bf16 "
        "rather than fp16"
    )


class Diverged(InputError):
    """Training diverged: a non-finite loss, or one grown past its bound.

    A bad setting (learning rate, precision) rather than a bug, so it is reported as bad
    input, exit code 2, with advice. :meth:`medcommon.run.RunFolder.writing` removes the
    new run that diverged and says so in the message (a resumed run keeps its folder).
    """

    def __init__(self, what: str, advice: str | None = None, lr_field: str = "lr") -> None:
        super().__init__("training", f"diverged: {what}; {advice or divergence_advice(lr_field)}")
