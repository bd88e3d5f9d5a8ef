"""Site-Modulated Diffusion (SMD): a diffusion model of image + mask, prompted per site.

A diffusers ``UNet2DModel`` denoises ``x = [image · 2 - 1, mask · 2 - 1]`` (image
channels + one mask channel, all in [-1, 1]). The site prompt is a learnable
embedding ``e_s`` (``UNet2DModel(num_class_embeds=...)``: an ``nn.Embedding`` row per
site) added to the timestep embedding, so every residual block is modulated by
the site. Training is DDPM (ε-prediction, ``L = ||ε - ε_φ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t, e_s)||²``);
sampling is DDIM (deterministic, ``steps`` configurable) or full DDPM ancestral
sampling. ``prediction_type="sample"`` trains the network to predict ``x_0`` instead
of ``ε`` (same schedulers, same samplers); the CPU presets use it because a tiny
U-Net trained a few hundred steps gives clean x0-predictions long before clean ε ones. Generated masks are thresholded at ``mask_threshold`` (0 in [-1, 1]).
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


class SiteModulatedDiffusion(nn.Module):
    """ε-prediction U-Net over ``(B, C+1, S, S)`` with one learnable prompt per site."""

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
            in_channels=config.image_channels + 1,
            out_channels=config.image_channels + 1,
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
        """Predicted noise ``(B, C+1, S, S)`` for noisy ``x`` at timesteps ``t`` (B,), sites (B,)."""
        return self.unet(x, t, class_labels=site).sample

    def site_index(self, name: str) -> int:
        """The prompt index of a site name (an :class:`InputError` listing known sites)."""
        if name not in self.config.site_names:
            raise InputError(
                "--site",
                f"unknown site {name!r}; this model knows {', '.join(self.config.site_names)}",
            )
        return self.config.site_names.index(name)

    def train_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule=self.config.beta_schedule,
            clip_sample=True,
            prediction_type=self.config.prediction_type,
        )

    def training_inputs(
        self, images: torch.Tensor, masks: torch.Tensor, share: tuple[int, int] = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy inputs ``x_t``, timesteps ``t`` (B,) and regression targets of a DDPM batch.

        Images (B, C, S, S) in [0, 1], masks (B, 1, S, S) in {0, 1}. ``share = (rank,
        world)``: the batch is process ``rank``'s contiguous share of a global batch of
        ``world * B`` (DDP); noise and timesteps are drawn for the global batch and this
        share's rows kept, so the processes together draw what one process would.
        """
        x0 = torch.cat([images * 2 - 1, masks.float() * 2 - 1], dim=1)
        sched = self.train_scheduler()
        rank, world = share
        b = x0.shape[0]
        rows = slice(rank * b, (rank + 1) * b)
        noise = torch.randn((b * world, *x0.shape[1:]), dtype=x0.dtype, device=x0.device)[rows]
        t = torch.randint(0, sched.config.num_train_timesteps, (b * world,), device=x0.device)
        t = t[rows]
        xt = sched.add_noise(x0, noise, t)
        target = x0 if self.config.prediction_type == "sample" else noise
        return xt, t, target

    def training_loss(
        self, images: torch.Tensor, masks: torch.Tensor, sites: torch.Tensor
    ) -> torch.Tensor:
        """DDPM loss on a batch: images (B, C, S, S) in [0, 1], masks (B, 1, S, S) {0, 1}."""
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
            images ``(B, C, S, S)`` in [0, 1] and masks ``(B, 1, S, S)`` int64 in {0, 1}.
        """
        cfg = self.config
        device = next(self.parameters()).device
        shape = (sites.shape[0], cfg.image_channels + 1, cfg.image_size, cfg.image_size)
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
        images = ((x[:, :-1] + 1) / 2).clamp(0, 1)
        masks = (x[:, -1:] > mask_threshold).long()
        return images, masks

    def _denoise(self, x, sites, steps, sampler, generator):
        if sampler == "ddim":
            sched = DDIMScheduler(
                num_train_timesteps=self.config.num_train_timesteps,
                beta_schedule=self.config.beta_schedule,
                clip_sample=True,
                set_alpha_to_one=True,
                prediction_type=self.config.prediction_type,
            )
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
