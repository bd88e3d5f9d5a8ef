"""``style-replay``: replay without a generative model, the cheap baseline for site modulation.

At stage ``t`` the replay of each earlier site ``s`` is made of *current* real slices
(site ``t``'s training slices, with their own masks) whose intensities are mapped onto
site ``s``'s intensity distribution by quantile (histogram) matching. Of a finished
site only :data:`QUANTILES` intensity quantiles per channel are kept, no slice. The map
is monotone: it moves brightness, contrast and gamma towards the earlier site but can
never flip the gland's polarity against its surroundings, which is what a site prompt
of the SMD can learn (issue #22 compares the two).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from smg_learning.replay import ReplayMemory, buffer_indices
from smg_learning.strategies.base import STRATEGIES, RunContext, Strategy

QUANTILES = 101


def intensity_quantiles(images: torch.Tensor) -> np.ndarray:
    """``(C, QUANTILES)``: the quantiles of every channel's pixel values of ``images`` (N, C, H, W)."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double().numpy()
    return np.quantile(x, np.linspace(0.0, 1.0, QUANTILES), axis=1).T


def match_quantiles(images: torch.Tensor, source: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """``images`` (N, C, H, W) mapped channel-wise so that the ``source`` quantiles land
    on the ``target`` quantiles (piecewise linear between them; flat stretches of
    ``source`` keep the first of their target values)."""
    out = images.double().numpy().copy()
    for c in range(out.shape[1]):
        xp, keep = np.unique(source[c], return_index=True)
        out[:, c] = np.interp(out[:, c], xp, target[c][keep])
    return torch.from_numpy(out).to(images.dtype).clamp(0, 1)


@STRATEGIES.register("style-replay")
class StyleReplay(Strategy):
    name = "style-replay"
    description = "replay of current slices histogram-matched to each earlier site (no slice kept)"
    replay = "style"

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        #: site -> (C, QUANTILES) intensity quantiles, kept when the site ended
        self.quantiles: dict[str, np.ndarray] = {}

    def end_stage(self, t: int, model: nn.Module) -> None:
        super().end_stage(t, model)
        site = self.run.data.sites[t]
        self.quantiles[site] = intensity_quantiles(self.run.data.parts["train"][site].images)

    def replay_memory(self, t: int) -> ReplayMemory | None:
        """``smd.replay_per_site`` restyled current slices for each site ``< t`` (the
        same pool size as SMD replay)."""
        if t == 0:
            return None
        data, n = self.run.data, self.cfg.smd.replay_per_site
        part = data.parts["train"][data.sites[t]]
        own = intensity_quantiles(part.images)
        images, masks, sites = [], [], []
        for s, site in enumerate(data.sites[:t]):
            idx = buffer_indices(len(part), n, self.run.seed, 1_000 + 31 * t + s)
            images.append(match_quantiles(part.images[idx], own, self.quantiles[site]))
            masks.append(part.masks[idx])
            sites.append(torch.full((len(idx),), s, dtype=torch.long))
        return ReplayMemory(torch.cat(images), torch.cat(masks), torch.cat(sites))
