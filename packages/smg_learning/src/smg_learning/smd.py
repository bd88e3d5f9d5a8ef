"""Site-Modulated Diffusion (SMD): a diffusion model of image + mask, prompted per site.

A diffusers ``UNet2DModel`` denoises ``x = [image · 2 - 1, encode_mask(mask)]`` (image
channels + one channel per mask structure, all in [-1, 1]; :func:`encode_mask`). The site prompt is a learnable
embedding ``e_s`` (``UNet2DModel(num_class_embeds=...)``: an ``nn.Embedding`` row per
site) added to the timestep embedding, so every residual block is modulated by
the site. Training is DDPM (ε-prediction, ``L = ||ε - ε_φ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t, e_s)||²``);
sampling is DDIM (deterministic, ``steps`` configurable) or full DDPM ancestral
sampling. ``prediction_type="sample"`` trains the network to predict ``x_0`` instead
of ``ε``, ``"v_prediction"`` the velocity ``√ᾱ_t ε - √(1-ᾱ_t) x_0`` (the training
target and both samplers' schedulers follow the one ``prediction_type``); the CPU
presets use x0 because a tiny U-Net trained a few hundred steps gives clean
x0-predictions long before clean ε ones. Generated mask channels are thresholded at
``mask_threshold`` (0 in [-1, 1]; :func:`decode_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from medcommon.errors import InputError


@dataclass(frozen=True)
class SMDModelConfig:
    """Architecture and noise schedule; ``site_names[k]`` is the site of prompt ``k``."""

    image_channels: int = 1
    image_size: int = 32
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    attention: bool = True
    num_prompts: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    site_names: tuple[str, ...] = ()
    mask_channels: int = 1  # one per nested structure (fundus: disc, cup)
    # DDIM's timestep spacing (diffusers ``timestep_spacing``). "trailing" starts at
    # t = T - 1, pure noise matching training's last step; "leading" (diffusers' default,
    # and what models saved before this field sampled with) starts at T - T/steps
    # (t = 950 for 20 steps of 1000), a noise level the chain never saw as a start
    # (Lin et al., WACV 2024, "Common diffusion noise schedules and sample steps are flawed").
    timestep_spacing: str = "leading"


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def encode_mask(masks: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """Label maps (B, 1, S, S) in {0..K} -> K channels in {-1, 1}: channel k is ``label > k``.

    Structures are nested (label ``k`` lies inside structures ``0..k-1``: the optic
    cup inside the disc), so a label map and its structure masks determine each other.
    """
    ks = torch.arange(channels, device=masks.device).view(1, -1, 1, 1)
    return (masks > ks).float() * 2 - 1


def decode_mask(x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Mask channels (B, K, S, S) in [-1, 1] -> label maps (B, 1, S, S) int64 in {0..K}.

    Each channel is thresholded (``x > threshold``: above is inside the structure); the
    label is the number of structures a pixel is in.
    """
    return (x > threshold).long().sum(1, keepdim=True)


class SiteModulatedDiffusion(nn.Module):
    """U-Net over ``(B, C+K, S, S)`` (image + K mask channels), one learnable prompt per site."""

    config_class = SMDModelConfig

    def __init__(self, config: SMDModelConfig) -> None:
        super().__init__()
        self.config = config
        n = len(config.block_out_channels)
        if config.attention:
            down = ("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",)
            up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1)
        else:
            down, up = ("DownBlock2D",) * n, ("UpBlock2D",) * n
        self.unet = UNet2DModel(
            sample_size=config.image_size,
            in_channels=config.image_channels + config.mask_channels,
            out_channels=config.image_channels + config.mask_channels,
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            down_block_types=down,
            up_block_types=up,
            norm_num_groups=config.norm_num_groups,
            add_attention=config.attention,
            num_class_embeds=config.num_prompts,
        )

    @property
    def prompts(self) -> torch.Tensor:
        """The learnable site prompt embeddings ``(num_prompts, D)``."""
        return self.unet.class_embedding.weight

    def forward(self, x: torch.Tensor, t: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        """The network's prediction ``(B, C+K, S, S)`` (ε, x0 or v) for noisy ``x`` at timesteps ``t`` (B,), sites (B,)."""
        return self.unet(x, t, class_labels=site).sample

    def site_index(self, name: str) -> int:
        """The prompt index of a site name (an :class:`InputError` listing known sites)."""
        if name not in self.config.site_names:
            raise InputError(
                "--site",
                f"unknown site {name!r}; this model knows {', '.join(self.config.site_names)}",
            )
        return self.config.site_names.index(name)

    def _prediction_type(self) -> str:
        pt = self.config.prediction_type
        if pt not in PREDICTION_TYPES:
            raise InputError(
                "--set smd.prediction_type", f"{pt!r} is not one of {', '.join(PREDICTION_TYPES)}"
            )
        return pt

    def _timestep_spacing(self) -> str:
        spacing = self.config.timestep_spacing
        if spacing not in TIMESTEP_SPACINGS:
            raise InputError(
                "--set smd.timestep_spacing",
                f"{spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}",
            )
        return spacing

    def train_scheduler(self) -> DDPMScheduler:
        """The DDPM schedule of training (and of ancestral sampling)."""
        return DDPMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule=self.config.beta_schedule,
            clip_sample=True,
            prediction_type=self._prediction_type(),
        )

    def ddim_scheduler(self) -> DDIMScheduler:
        """The DDIM sampler on the training schedule, reading the same ``prediction_type``
        (and the model's ``timestep_spacing``)."""
        return DDIMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule=self.config.beta_schedule,
            clip_sample=True,
            set_alpha_to_one=True,
            prediction_type=self._prediction_type(),
            timestep_spacing=self._timestep_spacing(),
        )

    def training_inputs(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        share: tuple[int, int] = (0, 1),
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy inputs ``x_t``, timesteps ``t`` (B,) and regression targets of a DDPM batch.

        Images (B, C, S, S) in [0, 1], masks (B, 1, S, S) label maps in {0..K}. ``share = (rank,
        world)``: the batch is process ``rank``'s contiguous share of a global batch of
        ``world * B`` (DDP); noise and timesteps are drawn for the global batch and this
        share's rows kept, so the processes together draw what one process would.
        ``generator``: the generator the noise and timesteps are drawn from, on its own
        device, then moved to the batch's (training uses a CPU one,
        :func:`smg_learning.replay.smd_noise_generator`); None: the global RNG of the
        batch's device.
        """
        x0 = torch.cat([images * 2 - 1, encode_mask(masks, self.config.mask_channels)], dim=1)
        sched = self.train_scheduler()
        rank, world = share
        b = x0.shape[0]
        rows = slice(rank * b, (rank + 1) * b)
        where = x0.device if generator is None else generator.device
        shape = (b * world, *x0.shape[1:])
        noise = torch.randn(shape, generator=generator, dtype=x0.dtype, device=where)[rows]
        t = torch.randint(
            0, sched.config.num_train_timesteps, (b * world,), generator=generator, device=where
        )
        noise, t = noise.to(x0.device), t[rows].to(x0.device)
        xt = sched.add_noise(x0, noise, t)
        kind = self._prediction_type()
        if kind == "sample":
            target = x0
        elif kind == "v_prediction":
            target = sched.get_velocity(x0, noise, t)
        else:
            target = noise
        return xt, t, target

    def training_loss(
        self, images: torch.Tensor, masks: torch.Tensor, sites: torch.Tensor
    ) -> torch.Tensor:
        """DDPM loss on a batch: images (B, C, S, S) in [0, 1], masks (B, 1, S, S) {0..K}."""
        xt, t, target = self.training_inputs(images, masks)
        return nn.functional.mse_loss(self(xt, t, sites), target)

    @torch.no_grad()
    def sample(
        self,
        sites: torch.Tensor,
        steps: int = 50,
        sampler: Literal["ddim", "ddpm"] = "ddim",
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        mask_threshold: float = 0.0,
        batch: int = 64,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate image/mask pairs for the site indices ``sites`` (B,).

        Returns:
            images ``(B, C, S, S)`` in [0, 1] and masks ``(B, 1, S, S)`` int64 label maps
            in {0..K} (``K = mask_channels``; {0, 1} for one structure).
        """
        cfg = self.config
        device = next(self.parameters()).device
        chans = cfg.image_channels + cfg.mask_channels
        shape = (sites.shape[0], chans, cfg.image_size, cfg.image_size)
        if noise is None:
            noise = torch.randn(shape, generator=generator)
        if tuple(noise.shape) != shape:
            raise InputError("noise", f"shape {tuple(noise.shape)} differs from {shape}")
        was_training = self.training
        self.eval()
        outs = []
        for i in range(0, shape[0], batch):
            outs.append(
                self._denoise(
                    noise[i : i + batch].to(device),
                    sites[i : i + batch].to(device),
                    steps,
                    sampler,
                    generator,
                )
            )
        self.train(was_training)
        x = torch.cat(outs).cpu()
        c = cfg.image_channels
        images = ((x[:, :c] + 1) / 2).clamp(0, 1)
        masks = decode_mask(x[:, c:], mask_threshold)
        return images, masks

    def _denoise(self, x, sites, steps, sampler, generator):
        if sampler == "ddim":
            sched = self.ddim_scheduler()
            sched.set_timesteps(steps)
            for t in sched.timesteps:
                eps = self(x, t.expand(x.shape[0]).to(x.device), sites)
                x = sched.step(eps, t, x, eta=0.0).prev_sample
        elif sampler == "ddpm":
            sched = self.train_scheduler()
            sched.set_timesteps(self.config.num_train_timesteps)
            for t in sched.timesteps:
                eps = self(x, t.expand(x.shape[0]).to(x.device), sites)
                x = sched.step(eps, t, x, generator=generator).prev_sample
        else:
            raise InputError("--sampler", f"unknown sampler {sampler!r}; choose ddim or ddpm")
        return x
