"""``replay-real``: replay of stored real slices of earlier sites (a privacy-violating oracle)."""

from __future__ import annotations

from smg_learning.replay import ReplayMemory, real_memory
from smg_learning.strategies.base import STRATEGIES, Strategy


class RealReplay(Strategy):
    """Stage ``t`` replays ``cfg.replay_per_site`` stored real slices of each site ``< t``."""

    replay = "real"

    def replay_memory(self, t: int) -> ReplayMemory | None:
        if t == 0:
            return None
        run = self.run
        return real_memory(
            run.data, run.data.sites[:t], self.cfg.replay_per_site, run.seed + 17 * t
        )


@STRATEGIES.register("replay-real")
class ReplayReal(RealReplay):
    name = "replay-real"
    description = "replay of stored real slices (privacy-violating oracle)"
