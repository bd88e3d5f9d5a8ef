"""Replay of earlier sites: stored real slices, or samples of the Site-Modulated Diffusion.

The SMD itself learns site by site (:func:`train_smd_stage`): site ``t``'s real slices
plus its own replay of sites ``< t``, saved to ``RUN/smd_stages/<site>/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from medcommon.errors import InputError
from medcommon.models import from_pretrained, read_model_config
from medcommon.train import TrainConfig, Trainer
from medcommon.train.loop import StepFn
from smg_learning.config import RunConfig
from smg_learning.data import ContinualData
from smg_learning.distributed import unwrap
from smg_learning.smd import SiteModulatedDiffusion, SMDModelConfig, encode_mask


@dataclass
class ReplayMemory:
    """Replay slices of previous sites: images (M, C, S, S), masks (M, 1, S, S), sites (M,)."""

    images: torch.Tensor
    masks: torch.Tensor
    sites: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, len(self), (n,), generator=generator)
        return self.images[idx], self.masks[idx], self.sites[idx]


def buffer_indices(n: int, per_site: int, seed: int, site: int) -> torch.Tensor:
    """The fixed replay buffer of one site: ``min(per_site, n)`` of its ``n`` training slices.

    A seeded random subset chosen once, when the site ends (``seed`` and the site's
    position ``site`` in the training order fix it); later stages keep it (or a prefix of
    it, under a total capacity) instead of redrawing.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * site + 17)
    return torch.randperm(n, generator=g)[:per_site]


def site_quota(capacity: int, per_site: int, n_sites: int) -> int:
    """Slices kept per finished site: ``per_site``, or an equal share of ``capacity`` (> 0)."""
    return per_site if capacity <= 0 else max(1, min(per_site, capacity // max(n_sites, 1)))


def memory_from_buffers(data: ContinualData, buffers: dict[str, torch.Tensor]) -> ReplayMemory:
    """The replay memory holding the stored slices ``buffers[site]`` (indices into train)."""
    ims, mks, ids = [], [], []
    for s, idx in buffers.items():
        part = data.parts["train"][s]
        ims.append(part.images[idx])
        mks.append(part.masks[idx])
        ids.append(torch.full((len(idx),), data.sites.index(s), dtype=torch.long))
    return ReplayMemory(torch.cat(ims), torch.cat(mks), torch.cat(ids))


def real_memory(data: ContinualData, sites: list[str], per_site: int, seed: int) -> ReplayMemory:
    """``per_site`` stored real training slices of each site: its fixed buffer."""
    return memory_from_buffers(
        data,
        {
            s: buffer_indices(len(data.parts["train"][s]), per_site, seed, data.sites.index(s))
            for s in sites
        },
    )


def smd_model_config(
    cfg: RunConfig, channels: int, sites: list[str], mask_channels: int = 1
) -> SMDModelConfig:
    """The SMD architecture of a run (``cfg.smd``) for ``channels`` image channels.

    ``mask_channels``: the number of mask structures (``len(ContinualData.structures)``).
    """
    s = cfg.smd
    return SMDModelConfig(
        image_channels=channels,
        image_size=s.image_size or cfg.image_size,
        block_out_channels=tuple(s.block_out_channels),
        layers_per_block=s.layers_per_block,
        norm_num_groups=s.norm_num_groups,
        attention=s.attention,
        num_prompts=s.num_prompts,
        num_train_timesteps=s.num_train_timesteps,
        beta_schedule=s.beta_schedule,
        prediction_type=s.prediction_type,
        timestep_spacing=s.timestep_spacing,
        site_names=tuple(sites),
        mask_channels=mask_channels,
    )


def smd_memory(
    smd: SiteModulatedDiffusion, n_sites: int, cfg: RunConfig, seed: int, steps: int | None = None
) -> ReplayMemory:
    """``cfg.smd.replay_per_site`` DDIM samples for each of the first ``n_sites`` prompts."""
    g = torch.Generator().manual_seed(seed * 7919 + n_sites)
    sites = torch.arange(n_sites).repeat_interleave(cfg.smd.replay_per_site)
    prompts = torch.zeros_like(sites) if cfg.smd.shared_prompt else sites
    images, masks = smd.sample(
        prompts,
        steps=steps or cfg.smd.ddim_steps,
        generator=g,
        mask_threshold=cfg.smd.mask_threshold,
    )
    return ReplayMemory(images, masks, sites)


def resize_pairs(
    images: torch.Tensor, masks: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (bilinear, antialiased) and label maps resized to ``size``.

    Each nested structure ``label > k`` is resized on its own (area > 0.5) and the
    label is the number of structures a pixel is in; 0/1 masks are the one-structure case.
    """
    if images.shape[-1] == size:
        return images, masks
    kw = {"size": (size, size), "mode": "bilinear", "align_corners": False, "antialias": True}
    im = F.interpolate(images, **kw).clamp(0, 1)
    k = max(int(masks.max()), 1) if masks.numel() else 1
    mk = (F.interpolate(encode_mask(masks, k) / 2 + 0.5, **kw) > 0.5).long().sum(1, keepdim=True)
    return im, mk


class _TensorSet(Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor, sites: torch.Tensor) -> None:
        self.images, self.masks, self.sites = images, masks, sites

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i], "site": self.sites[i]}


def smd_noise_generator(seed: int, stage: int, step: int, micro: int = 0) -> torch.Generator:
    """The RNG of the DDPM noise and timesteps of one SMD micro-batch: a pure function of
    the run's ``seed``, the SMD ``stage`` (site index), the optimizer ``step`` and the
    ``micro``-batch, so the SMD's training draws depend on nothing else drawn before them
    (model initialisation, other rows, evaluation) and resume is exact. Every process of
    a DDP run builds the same one and keeps its rows of the global draw."""
    key = ((seed * 1_000_003 + 50 + stage) * 1_000_033 + step) * 1_024 + micro
    return torch.Generator().manual_seed(key % 2**63)


def smd_step(seed: int, stage: int) -> StepFn:
    """The Trainer step of SMD stage ``stage`` of a run with ``seed``: the DDPM loss of one
    micro-batch, the forward pass through the (DDP-wrapped) model.

    Going through the wrapper's forward lets DDP average the gradients; the noise is
    drawn for the global batch (:meth:`SiteModulatedDiffusion.training_inputs`) from
    :func:`smd_noise_generator`.
    """

    def step(model: nn.Module, batch: dict[str, torch.Tensor], ctx: Any) -> torch.Tensor:
        share = (ctx.accelerator.process_index, ctx.accelerator.num_processes)
        gen = smd_noise_generator(seed, stage, ctx.step, ctx.micro_step)
        xt, t, target = unwrap(model).training_inputs(batch["image"], batch["mask"], share, gen)
        return F.mse_loss(model(xt, t, batch["site"]), target)

    return step


def check_smd_source(source: Path, sites: list[str]) -> None:
    """Check ``--smd-from`` before anything is written: a folder whose ``smd_stages/``
    holds a saved SMD for each of ``sites``, the one after ``sites[t]`` prompted by
    ``sites[: t + 1]`` (its config is read; the weights are loaded when used)."""
    if not source.is_dir():
        raise InputError(source, "run folder not found (--smd-from)")
    if not (source / "smd_stages").is_dir():
        raise InputError(source, "not a run with SMD stages (no smd_stages/)")
    for t, site in enumerate(sites):
        d = source / "smd_stages" / site
        if not (d / "model.safetensors").is_file():
            raise InputError(d, "no SMD stage model to reuse")
        names = read_model_config(d).get("site_names")
        if list(names or ()) != list(sites[: t + 1]):
            raise InputError(d, f"SMD was trained on sites {names}, not {sites[: t + 1]}")


def load_smd_stage(source: Path, site: str, sites: list[str]) -> SiteModulatedDiffusion:
    """The SMD model that a finished run saved after learning ``site`` (``--smd-from``)."""
    d = source / "smd_stages" / site
    if not (d / "model.safetensors").is_file():
        raise InputError(d, "no SMD stage model to reuse")
    smd = from_pretrained(SiteModulatedDiffusion, d)
    if list(smd.config.site_names) != list(sites):
        raise InputError(d, f"SMD was trained on sites {list(smd.config.site_names)}, not {sites}")
    return smd


def train_smd_stage(
    smd: SiteModulatedDiffusion,
    data: ContinualData,
    t: int,
    memory: ReplayMemory | None,
    cfg: RunConfig,
    out: Path | None,
    *,
    seed: int,
    device: str,
    quiet: bool,
    resume: bool = False,
    checkpoint_every: int = 0,
    fit: Callable[[Trainer], Any] | None = None,
) -> SiteModulatedDiffusion:
    """Continue training the SMD on site ``t``'s real slices plus its replay of sites ``< t``.

    ``fit`` runs the stage's Trainer (a run's :meth:`RunContext.fit_stage`); by default
    ``trainer.fit(resume=resume)``.
    """
    site = data.sites[t]
    part = data.parts["train"][site]
    im, mk = resize_pairs(part.images, part.masks, smd.config.image_size)
    images, masks = [im], [mk]
    ids = [torch.full((len(part),), t, dtype=torch.long)]
    if memory is not None:
        images.append(memory.images)
        masks.append(memory.masks)
        ids.append(memory.sites)
    if cfg.smd.shared_prompt:  # every site under prompt 0 (the site-modulation control)
        ids = [torch.zeros_like(i) for i in ids]
    dataset = _TensorSet(torch.cat(images), torch.cat(masks), torch.cat(ids))
    smd.config = dataclasses.replace(smd.config, site_names=tuple(data.sites[: t + 1]))
    tcfg = TrainConfig(
        max_steps=cfg.smd.train_steps,
        batch_size=min(cfg.smd.batch_size, len(dataset)),
        log_every=cfg.log_every,
        checkpoint_every=checkpoint_every,
        lr_field="smd.lr",  # a divergence here names the SMD's own rate
    )
    opt = torch.optim.Adam(smd.parameters(), lr=cfg.smd.lr)
    trainer = Trainer(
        smd,
        opt,
        dataset,
        smd_step(seed, t),
        config=tcfg,
        run_dir=out,
        seed=seed * 100 + 50 + t,
        model_config=smd.config,
        model_dir=f"smd_stages/{site}",
        stage=f"smd-site-{site}",
        device=device,
        quiet=quiet,
    )
    if fit is None:
        trainer.fit(resume=resume)
    else:
        fit(trainer)
    return trainer.unwrapped_model()
