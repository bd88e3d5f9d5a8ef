"""``joint``: each stage trains on every site seen so far (the upper bound, no privacy)."""

from __future__ import annotations

from smg_learning.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("joint")
class Joint(Strategy):
    name = "joint"
    description = "each stage trains on all sites seen so far (upper bound)"
    cumulative = True
