"""A torchrun worker for ``test_ddp.py``: the unlearn CLI with NPO's loss made NaN on the
second process only (at its second step), so the test can check that every process
stops with exit 2. Not collected by pytest (no ``test_`` prefix)."""

from __future__ import annotations

import os
import sys

from medcommon.cli.runner import run_main
from unlearn_bench.cli import main
from unlearn_bench.methods.npo import NPO

_loss = NPO.loss


def _nan_on_rank_1(self, model, batch, ctx):
    out = _loss(self, model, batch, ctx)
    if os.environ.get("RANK") == "1" and ctx.step == 1:
        out["loss"] = out["loss"] * float("nan")
    return out


NPO.loss = _nan_on_rank_1

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
