"""GPU: SMG-Learning's two trainings at the tiny preset, bf16 and fp16: the PGA step of the
segmenter with replay, and the site-modulated diffusion model's denoising step.

Marked ``gpu``: run by ``nox -s tests_gpu``, skipped by the root conftest where CUDA is
absent. ``MEDAI_GPU_TEST_ON_CPU=1`` rehearses the same bodies on the CPU (bf16 only, no
memory figure); the mark is then dropped so that the conftest does not skip them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medai_testkit import GPU_DEVICE, GPU_MARKS, GPU_PRECISIONS, GPU_STEPS, gpu_fit_steps
from medcommon.train import TrainConfig, seed_everything
from smg_learning.config import run_preset
from smg_learning.data import ContinualData, SiteSlices, SliceDataset
from smg_learning.replay import smd_step
from smg_learning.segmenter import Segmenter, SegmenterConfig
from smg_learning.strategies import STRATEGIES, ReplayMemory, RunContext, Strategy

pytestmark = GPU_MARKS
PRECISIONS, STEPS = GPU_PRECISIONS, GPU_STEPS
_fit_steps = gpu_fit_steps


def _slices(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Discs of random centre and radius: images (n, 1, S, S) in [0, 1], masks (n, 1, S, S) {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centre = (torch.rand(n, 2, generator=g) - 0.5) * 0.6
    radius = 0.25 + 0.3 * torch.rand(n, generator=g)
    dist = (yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2
    masks = (dist < radius[:, None, None] ** 2).long()[:, None]
    images = (0.2 + 0.6 * masks + 0.05 * torch.randn(masks.shape, generator=g)).clamp(0, 1)
    return images.float(), masks


def _site(name: str, n: int, size: int, seed: int) -> SiteSlices:
    images, masks = _slices(n, size, seed)
    return SiteSlices(name, [name], images, masks, np.zeros(n, dtype=int))


def _smg(cfg, sites: list[SiteSlices]) -> Strategy:
    """The ``smg`` strategy of a run on ``sites`` (it builds its SMD with the run's config)."""
    parts = {"train": {p.site: p for p in sites}}
    data = ContinualData("prostate", [p.site for p in sites], [], {}, parts, 1)
    return STRATEGIES.get("smg")(RunContext(data, cfg, seed=0, device=GPU_DEVICE))


def _config(precision: str, batch_size: int) -> TrainConfig:
    return TrainConfig(
        max_steps=STEPS[precision], batch_size=batch_size, mixed_precision=precision, log_every=0
    )


@pytest.mark.parametrize("precision", PRECISIONS)
def test_pga_step_with_replay(precision, tmp_path):
    """Site 2 of an ``smg`` run: PGA over current, replayed and shifted domains (virtual steps)."""
    cfg = run_preset("tiny")
    size = cfg.image_size
    replay_images, replay_masks = _slices(cfg.replay_per_site, size, seed=1)
    site_b = _site("B", 8, size, seed=2)
    seed_everything(0)
    model = Segmenter(SegmenterConfig(1, tuple(cfg.channels), cfg.num_res_units))
    strategy = _smg(cfg, [_site("A", 8, size, seed=1), site_b])
    strategy.stage = 1  # site B, replaying site A (the SMD's samples in a run)
    strategy.memory = ReplayMemory(
        replay_images, replay_masks, torch.zeros(cfg.replay_per_site).long()
    )
    step = strategy.step
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    dataset = SliceDataset([site_b], [1])
    config = _config(precision, cfg.batch_size)
    _fit_steps(model, optimizer, dataset, step, config, tmp_path, "smg/pga")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_smd_denoising_step(precision, tmp_path):
    """The site-modulated diffusion model of an ``smg`` run and the step of its stages
    (``train_smd_stage``'s DDPM loss)."""
    cfg = run_preset("tiny")
    sites = [_site("A", 8, cfg.image_size, seed=3), _site("B", 8, cfg.image_size, seed=4)]
    seed_everything(0)
    smd = _smg(cfg, sites).smd
    assert smd.config.image_size == cfg.image_size  # smd.image_size 0: the segmenter's
    dataset = SliceDataset(sites, [0, 1])
    optimizer = torch.optim.Adam(smd.parameters(), lr=cfg.smd.lr)
    config = _config(precision, cfg.smd.batch_size)
    _fit_steps(smd, optimizer, dataset, smd_step(0, 0), config, tmp_path, "smg/smd")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_smd_full_config_step(precision, tmp_path):
    """The ``full`` preset's SMD as configured, never run on the CPU presets: 192 px,
    a (64, 128, 256, 256) U-Net with attention, ε-prediction, batch 16, "trailing" DDIM
    spacing; a few training steps (fp16: enough for the loss scaler to settle), then a
    DDIM-2 sample of each site that must be finite, in range and of the right shape."""
    cfg = run_preset("full")
    size, batch = cfg.image_size, cfg.smd.batch_size
    sites = [_site("A", batch, size, seed=5), _site("B", batch, size, seed=6)]
    seed_everything(0)
    smd = _smg(cfg, sites).smd
    c = smd.config
    assert (c.image_size, c.block_out_channels, c.attention) == (192, (64, 128, 256, 256), True)
    assert (c.prediction_type, c.timestep_spacing) == ("epsilon", "trailing")
    dataset = SliceDataset(sites, [0, 1])
    optimizer = torch.optim.Adam(smd.parameters(), lr=cfg.smd.lr)
    _fit_steps(
        smd,
        optimizer,
        dataset,
        smd_step(0, 0),
        _config(precision, batch),
        tmp_path,
        "smg/smd-full",
        peak_bound=40 * 2**30,
    )
    images, masks = smd.to(GPU_DEVICE).sample(
        torch.tensor([0, 1]), steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert images.shape == (2, 1, size, size) and masks.shape == (2, 1, size, size)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert set(masks.unique().tolist()) <= {0, 1}
