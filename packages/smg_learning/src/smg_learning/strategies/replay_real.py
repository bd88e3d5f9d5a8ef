"""``replay-real``: replay of stored real slices of earlier sites (a privacy-violating oracle).

The buffer is fixed: when site ``t`` ends, ``replay_per_site`` of its training slices
are chosen (seeded, :func:`smg_learning.replay.buffer_indices`) and kept for every
later stage, as a rehearsal memory would be; nothing is redrawn from earlier sites'
data. With ``replay_capacity > 0`` the sites share that many slices equally, each
keeping a prefix of its own buffer (slices are dropped, never swapped in).
"""

from __future__ import annotations

import torch
from torch import nn

from smg_learning.replay import ReplayMemory, buffer_indices, memory_from_buffers, site_quota
from smg_learning.strategies.base import STRATEGIES, RunContext, Strategy


class RealReplay(Strategy):
    """Stage ``t`` replays the fixed buffers of the sites ``< t``."""

    replay = "real"

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        #: site -> indices into its training slices, chosen when the site ended
        self.buffers: dict[str, torch.Tensor] = {}

    def end_stage(self, t: int, model: nn.Module) -> None:
        """Choose site ``t``'s buffer (once; a resumed run chooses the same)."""
        super().end_stage(t, model)
        site = self.run.data.sites[t]
        n = len(self.run.data.parts["train"][site])
        self.buffers[site] = buffer_indices(n, self.cfg.replay_per_site, self.run.seed, t)

    def kept(self) -> dict[str, torch.Tensor]:
        """The buffers in use: each site's buffer, cut to its share of ``replay_capacity``."""
        q = site_quota(self.cfg.replay_capacity, self.cfg.replay_per_site, len(self.buffers))
        return {s: idx[:q] for s, idx in self.buffers.items()}

    def replay_memory(self, t: int) -> ReplayMemory | None:
        if t == 0 or not self.buffers:
            return None
        return memory_from_buffers(self.run.data, self.kept())


@STRATEGIES.register("replay-real")
class ReplayReal(RealReplay):
    name = "replay-real"
    description = "replay of a fixed buffer of stored real slices (privacy-violating oracle)"
