"""``smd-replay``: replay of Site-Modulated Diffusion samples with the plain loss.

The SMD learns the sites one after another, like the segmenter: after stage ``t`` it
trains on site ``t``'s real slices plus its own replay of sites ``< t``, and before
stage ``t + 1`` it samples the replay of sites ``<= t``. No real slice of an earlier
site is kept.
"""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from smg_learning.replay import (
    ReplayMemory,
    load_smd_stage,
    resize_pairs,
    smd_memory,
    smd_model_config,
    train_smd_stage,
)
from smg_learning.smd import SiteModulatedDiffusion
from smg_learning.strategies.base import STRATEGIES, RunContext, Strategy


class SMDReplay(Strategy):
    """Replay from the SMD model trained through the previous site (or reused: ``smd_from``)."""

    replay = "smd"

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        if run.smd_from is None:
            k = len(run.data.structures)  # one mask channel per structure
            self.smd = SiteModulatedDiffusion(smd_model_config(run.cfg, run.data.channels, [], k))
        self.smd_replay: ReplayMemory | None = None  # at the SMD's resolution

    def replay_memory(self, t: int) -> ReplayMemory | None:
        self.smd_replay = None
        if t == 0:
            return None
        t0 = time.perf_counter()
        self.smd_replay = smd_memory(self.smd, t, self.cfg, self.run.seed)
        memory = ReplayMemory(
            *resize_pairs(self.smd_replay.images, self.smd_replay.masks, self.cfg.image_size),
            self.smd_replay.sites,
        )
        self.run.seconds["sample"] += time.perf_counter() - t0
        return memory

    def end_stage(self, t: int, model: nn.Module) -> None:
        """The SMD's stage on site ``t`` (the last site only with ``train_last_smd``)."""
        run, sites = self.run, self.run.data.sites
        if not (run.train_last_smd or t < len(sites) - 1):
            return
        if run.smd_from is not None:
            self.smd = load_smd_stage(Path(run.smd_from), sites[t], sites[: t + 1])
            return
        t0 = time.perf_counter()
        self.smd = train_smd_stage(
            self.smd,
            run.data,
            t,
            self.smd_replay if t > 0 else None,
            self.cfg,
            run.out,
            seed=run.seed,
            device=run.device,
            quiet=run.quiet,
            fit=run.fit_stage,
            checkpoint_every=run.checkpoint_every,
        )
        run.seconds["smd"] += time.perf_counter() - t0


@STRATEGIES.register("smd-replay")
class SMDReplayPlain(SMDReplay):
    name = "smd-replay"
    description = "replay of SMD-generated slices, plain loss"
