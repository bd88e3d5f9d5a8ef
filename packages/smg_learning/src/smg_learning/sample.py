"""``smg-learning sample``: image/mask PNG pairs of one site from a run's SMD model.

Writes ``OUT/image/<site>_NNNN.png`` (grey or RGB, 0..255), ``OUT/mask/<site>_NNNN.png``
(0/255) and ``OUT/sample.json`` (what was asked), all at once (:func:`atomic_dir`).
Pairs are resized to the segmenter's resolution, as the segmenter replays them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcommon.errors import InputError
from medcommon.fs import atomic_dir, write_json_atomic
from medcommon.io import write_image
from medcommon.models import from_pretrained
from medcommon.run import require_fresh_out
from smg_learning.replay import resize_pairs
from smg_learning.run_io import read_run
from smg_learning.smd import SiteModulatedDiffusion

SAMPLERS = ("ddim", "ddpm")


def sample_site(
    run: str | Path,
    site: str,
    out: str | Path,
    *,
    n: int = 8,
    steps: int = 50,
    sampler: str = "ddim",
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Sample ``n`` pairs of ``site`` with ``RUN/smd`` and write them to ``out``.

    ``steps`` is the DDIM step count (``ddpm`` runs all training timesteps). Returns
    what ``OUT/sample.json`` holds. Raises :class:`InputError` before writing anything
    when the run has no SMD, the site is unknown or an argument is out of range.
    """
    run, out = Path(run), Path(out)
    smd_dir = run / "smd"
    if not (smd_dir / "model.safetensors").is_file():
        raise InputError(run, "no SMD model in this run (train with --method smg or smd-replay)")
    if n < 1:
        raise InputError("--n", "must be >= 1")
    if steps < 1:
        raise InputError("--steps", "must be >= 1")
    if sampler not in SAMPLERS:
        raise InputError("--sampler", f"unknown sampler {sampler!r}; choose ddim or ddpm")
    cfg = read_run(run, need_split=False).cfg
    smd = from_pretrained(SiteModulatedDiffusion, smd_dir).to(device)
    k = smd.site_index(site)
    require_fresh_out(out, "output folder", "choose another --out")
    images, masks = smd.sample(
        torch.full((n,), k, dtype=torch.long),
        steps=steps,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        mask_threshold=cfg.smd.mask_threshold,
    )
    images, masks = resize_pairs(images, masks, cfg.image_size)  # as the segmenter replays them
    info = {
        "run": str(run),
        "site": site,
        "n": n,
        "sampler": sampler,
        "steps": steps if sampler == "ddim" else smd.config.num_train_timesteps,
        "seed": seed,
    }
    with atomic_dir(out) as tmp:
        for i in range(n):
            img = images[i].cpu().numpy()  # (C, S, S) in [0, 1]
            img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            name = f"{site}_{i:04d}.png"
            write_image(tmp / "image" / name, np.round(img * 255).astype(np.uint8))
            write_image(tmp / "mask" / name, (masks[i, 0].cpu().numpy() * 255).astype(np.uint8))
        write_json_atomic(tmp / "sample.json", info)
    return info


__all__ = ["SAMPLERS", "sample_site"]
