"""The continual pipeline: one :class:`medcommon.train.Trainer` stage per site.

For each site ``t`` in the training order:

1. build the replay memory of sites ``< t``: stored real slices (``replay-real``,
   ``pga-real``) or samples of the SMD model trained through site ``t-1``
   (``smd-replay``, ``smg``);
2. train the segmenter on site ``t`` with the strategy's step (stage ``site-<name>``,
   model saved to ``RUN/stages/<name>/``) and evaluate every matrix column;
3. strategies that need it update their state (EWC Fisher, LwF teacher), and the
   SMD model learns site ``t`` from real slices plus its own replay of sites ``< t``
   (stage ``smd-site-<name>``, saved to ``RUN/smd_stages/<name>/``).

Run folder: ``config.json`` (resolved :class:`SMGConfig`, sites filled in),
``run.json`` (method, seed, preset, task), ``split.json`` (per-site patient split),
``log.jsonl``, ``checkpoint/<stage>/``, ``stages/``, ``model/`` (last segmenter),
``smd/`` (last SMD, for ``smg-learning sample``), ``metrics.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medcommon.config import config_from_dict, config_to_dict
from medcommon.errors import InputError
from medcommon.fs import read_json, write_json_atomic
from medcommon.models import from_pretrained, save_pretrained
from medcommon.train import TrainConfig, Trainer, seed_everything
from smg_learning import __version__
from smg_learning.config import SMGConfig
from smg_learning.data import ContinualData, SliceDataset
from smg_learning.evaluate import stage_metrics, summarize
from smg_learning.segmenter import SegLoss, Segmenter, SegmenterConfig
from smg_learning.smd import SiteModulatedDiffusion, SMDModelConfig
from smg_learning.strategies import STRATEGIES, EWCPenalty, ReplayMemory, make_step


class _TensorSet(Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor, sites: torch.Tensor) -> None:
        self.images, self.masks, self.sites = images, masks, sites

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i], "site": self.sites[i]}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError("--device", f"unknown device {device!r}; choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but no CUDA device is available")
    return device


def smd_model_config(cfg: SMGConfig, channels: int, sites: list[str]) -> SMDModelConfig:
    """The SMD architecture of a run (``cfg.smd``) for ``channels`` image channels."""
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
        site_names=tuple(sites),
    )


def real_memory(data: ContinualData, sites: list[str], per_site: int, seed: int) -> ReplayMemory:
    """``per_site`` stored real training slices of each site (a fixed random subset)."""
    g = torch.Generator().manual_seed(seed)
    ims, mks, ids = [], [], []
    for s in sites:
        part = data.parts["train"][s]
        idx = torch.randperm(len(part), generator=g)[:per_site]
        ims.append(part.images[idx])
        mks.append(part.masks[idx])
        ids.append(torch.full((len(idx),), data.sites.index(s), dtype=torch.long))
    return ReplayMemory(torch.cat(ims), torch.cat(mks), torch.cat(ids))


def smd_memory(
    smd: SiteModulatedDiffusion, n_sites: int, cfg: SMGConfig, seed: int, steps: int | None = None
) -> ReplayMemory:
    """``cfg.smd.replay_per_site`` DDIM samples for each of the first ``n_sites`` prompts."""
    g = torch.Generator().manual_seed(seed * 7919 + n_sites)
    sites = torch.arange(n_sites).repeat_interleave(cfg.smd.replay_per_site)
    images, masks = smd.sample(
        sites, steps=steps or cfg.smd.ddim_steps, generator=g, mask_threshold=cfg.smd.mask_threshold
    )
    return ReplayMemory(images, masks, sites)


def resize_pairs(
    images: torch.Tensor, masks: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (bilinear, antialiased) and 0/1 masks (area > 0.5) resized to ``size``."""
    if images.shape[-1] == size:
        return images, masks
    kw = {"size": (size, size), "mode": "bilinear", "align_corners": False, "antialias": True}
    im = F.interpolate(images, **kw).clamp(0, 1)
    mk = (F.interpolate(masks.float(), **kw) > 0.5).long()
    return im, mk


def write_run_header(
    out: Path, cfg: SMGConfig, data: ContinualData, method: str, seed: int, preset: str
) -> None:
    """``config.json``, ``run.json`` and ``split.json`` of a new run."""
    resolved = dataclasses.replace(cfg, sites=tuple(data.sites), heldout=tuple(data.heldout))
    write_json_atomic(out / "config.json", config_to_dict(resolved))
    write_json_atomic(
        out / "run.json",
        {
            "package": "smg-learning",
            "version": __version__,
            "method": method,
            "seed": seed,
            "preset": preset,
            "task": data.task,
            "channels": data.channels,
        },
    )
    write_json_atomic(out / "split.json", data.split)


def load_run(run: str | Path) -> tuple[SMGConfig, list[str], list[str], dict[str, Any]]:
    """The config, training sites, held-out sites and split saved in a run folder."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(run, "run folder not found")
    for name in ("config.json", "split.json", "run.json"):
        if not (run / name).is_file():
            raise InputError(run, f"not a run folder (no {name})")
    raw = read_json(run / "config.json")
    split = read_json(run / "split.json")
    cfg = config_from_dict(SMGConfig, raw)
    return cfg, list(cfg.sites), list(cfg.heldout), split


def read_run_info(run: str | Path) -> dict[str, Any]:
    return read_json(Path(run) / "run.json", "run.json")


def train_continual(
    data: ContinualData,
    cfg: SMGConfig,
    method: str,
    out: str | Path | None,
    *,
    seed: int = 0,
    device: str = "cpu",
    quiet: bool = True,
    resume: bool = False,
    checkpoint_every: int | None = None,
    smd_from: str | Path | None = None,
    train_last_smd: bool = True,
) -> dict[str, Any]:
    """Train ``method`` over ``data.sites`` in order; returns (and writes) ``metrics.json``.

    The returned dict also holds ``_model`` (the final segmenter) and ``_smd`` (the
    final SMD model, or None), which are not written to ``metrics.json``.

    Args:
        data: loaded slices (:func:`smg_learning.data.load_continual`).
        out: the run folder (header files are written by :func:`write_run_header`);
            None trains in memory.
        smd_from: a finished run on the same data and sites whose per-stage SMD
            models (``smd_stages/``) are reused instead of training new ones.
        train_last_smd: also teach the SMD the last site (needed by ``sample`` for
            that site; the segmenter never replays it).
    """
    strategy = STRATEGIES.get(method)
    out = Path(out) if out is not None else None
    sites = data.sites
    seed_everything(seed)
    model = Segmenter(
        SegmenterConfig(
            in_channels=data.channels, channels=tuple(cfg.channels), num_res_units=cfg.num_res_units
        )
    )
    smd: SiteModulatedDiffusion | None = None
    if strategy.replay == "smd" and smd_from is None:
        smd = SiteModulatedDiffusion(smd_model_config(cfg, data.channels, []))
    ewc = EWCPenalty() if strategy.objective == "ewc" else None
    teacher = None
    rows: list[dict[str, float]] = []
    seg_seconds = smd_seconds = sample_seconds = 0.0
    every = cfg.checkpoint_every if checkpoint_every is None else checkpoint_every
    for t, site in enumerate(sites):
        # 1. replay memory of the sites before t
        memory = smd_replay = None
        if t > 0 and strategy.replay == "real":
            memory = real_memory(data, sites[:t], cfg.replay_per_site, seed + 17 * t)
        elif t > 0 and strategy.replay == "smd":
            t0 = time.perf_counter()
            smd_replay = smd_memory(smd, t, cfg, seed)  # at the SMD's resolution
            memory = ReplayMemory(
                *resize_pairs(smd_replay.images, smd_replay.masks, cfg.image_size),
                smd_replay.sites,
            )
            sample_seconds += time.perf_counter() - t0
        # 2. the segmenter's stage
        stage_sites = sites[: t + 1] if strategy.cumulative else [site]
        train_set = SliceDataset(
            [data.parts["train"][s] for s in stage_sites], [sites.index(s) for s in stage_sites]
        )
        tcfg = TrainConfig(
            max_steps=cfg.steps_per_site,
            batch_size=min(cfg.batch_size, len(train_set)),
            log_every=cfg.log_every,
            checkpoint_every=every,
        )
        step = make_step(strategy, cfg, seed=seed, stage=t, memory=memory, ewc=ewc, teacher=teacher)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        trainer = Trainer(
            model,
            opt,
            train_set,
            step,
            config=tcfg,
            run_dir=out,
            seed=seed * 100 + t,
            eval_fn=lambda m: stage_metrics(m, data, "test", next(m.parameters()).device),
            model_config=model.config,
            model_dir=f"stages/{site}",
            stage=f"site-{site}",
            device=device,
            quiet=quiet,
        )
        res = trainer.fit(resume=resume)
        model = trainer.unwrapped_model()
        seg_seconds += res.train_seconds
        rows.append(res.final_metrics or stage_metrics(model, data, "test", device))
        # 3. strategy state and the SMD's stage
        if ewc is not None:
            part = data.parts["train"][site]
            g = torch.Generator().manual_seed(seed + t)
            dev = next(model.parameters()).device
            batches = []
            for _ in range(cfg.ewc_batches):
                idx = torch.randint(0, len(part), (min(cfg.batch_size, len(part)),), generator=g)
                batches.append((part.images[idx].to(dev), part.masks[idx].to(dev)))
            ewc.update(model, batches, SegLoss(cfg.dice_weight))
        if strategy.objective == "lwf":
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
        if strategy.replay == "smd" and (train_last_smd or t < len(sites) - 1):
            if smd_from is not None:
                smd = _load_smd_stage(Path(smd_from), site, sites[: t + 1])
            else:
                t0 = time.perf_counter()
                smd = train_smd_stage(
                    smd,
                    data,
                    t,
                    smd_replay if t > 0 else None,
                    cfg,
                    out,
                    seed=seed,
                    device=device,
                    quiet=quiet,
                    resume=resume,
                    checkpoint_every=every,
                )
                smd_seconds += time.perf_counter() - t0
    metrics = summarize(rows, sites, data.columns)
    metrics.update(
        method=method,
        seed=seed,
        train_seconds=seg_seconds + smd_seconds + sample_seconds,
        segmenter_seconds=seg_seconds,
        smd_seconds=smd_seconds,
        replay_sample_seconds=sample_seconds,
    )
    if out is not None:
        save_pretrained(model, out / "model", model.config)
        if smd is not None:
            save_pretrained(smd, out / "smd", smd.config)
        write_json_atomic(out / "metrics.json", metrics)
    metrics["_model"] = model
    metrics["_smd"] = smd
    return metrics


def _load_smd_stage(source: Path, site: str, sites: list[str]) -> SiteModulatedDiffusion:
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
    cfg: SMGConfig,
    out: Path | None,
    *,
    seed: int,
    device: str,
    quiet: bool,
    resume: bool,
    checkpoint_every: int = 0,
) -> SiteModulatedDiffusion:
    """Continue training the SMD on site ``t``'s real slices plus its replay of sites ``< t``."""
    site = data.sites[t]
    part = data.parts["train"][site]
    im, mk = resize_pairs(part.images, part.masks, smd.config.image_size)
    images, masks = [im], [mk]
    ids = [torch.full((len(part),), t, dtype=torch.long)]
    if memory is not None:
        images.append(memory.images)
        masks.append(memory.masks)
        ids.append(memory.sites)
    dataset = _TensorSet(torch.cat(images), torch.cat(masks), torch.cat(ids))
    smd.config = dataclasses.replace(smd.config, site_names=tuple(data.sites[: t + 1]))
    tcfg = TrainConfig(
        max_steps=cfg.smd.train_steps,
        batch_size=min(cfg.smd.batch_size, len(dataset)),
        log_every=cfg.log_every,
        checkpoint_every=checkpoint_every,
    )
    opt = torch.optim.Adam(smd.parameters(), lr=cfg.smd.lr)
    trainer = Trainer(
        smd,
        opt,
        dataset,
        lambda m, b, ctx: m.training_loss(b["image"], b["mask"], b["site"]),
        config=tcfg,
        run_dir=out,
        seed=seed * 100 + 50 + t,
        model_config=smd.config,
        model_dir=f"smd_stages/{site}",
        stage=f"smd-site-{site}",
        device=device,
        quiet=quiet,
    )
    trainer.fit(resume=resume)
    return trainer.unwrapped_model()
