"""Cost and quality measurements reported beside the benchmark table.

An experiment, not part of the package: ``run.py`` beside this file runs the benchmark
and measures these on its rows (the first seed's replay SMD and ``joint`` model).

- :func:`time_pga`: PGA step / plain step on the same samples, first-order / exact PGA.
- :func:`time_samplers`: DDIM-k / DDPM-T sampling time and how well each sampler's
  generated masks agree with a real-data segmenter's reading of the generated images.
- :func:`site_classifier_accuracy`: a CNN trained on real slices to name the site,
  applied to SMD samples (far above chance means the prompts carry the site).
"""

from __future__ import annotations

import dataclasses
import time
from statistics import median

import torch
import torch.nn.functional as F
from torch import nn

from medcommon.metrics import dice
from smg_learning.config import RunConfig
from smg_learning.data import ContinualData
from smg_learning.pga import pga_objective, shift_domain, split_domains
from smg_learning.replay import real_memory, resize_pairs
from smg_learning.segmenter import SegLoss, Segmenter, SegmenterConfig
from smg_learning.smd import SiteModulatedDiffusion


def _segmenter(data: ContinualData, cfg: RunConfig) -> Segmenter:
    """The run's segmenter: background + one class per nested structure (fundus: 3)."""
    return Segmenter(
        SegmenterConfig(
            data.channels,
            tuple(cfg.channels),
            cfg.num_res_units,
            out_channels=len(data.structures) + 1,
        )
    )


def _structure_dice(pred: torch.Tensor, mask: torch.Tensor, structures: int) -> float:
    """Mean over nested structures ``k`` of the Dice of ``label > k`` (label maps)."""
    return sum(dice(pred > k, mask > k) for k in range(structures)) / structures


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def time_pga(
    data: ContinualData, cfg: RunConfig, seed: int = 0, repeats: int = 10
) -> dict[str, float]:
    """Seconds per step (forward + backward) of plain, first-order PGA and exact PGA on one batch.

    The batch: ``batch_size`` current-site slices (the last site), ``replay_batch`` real
    replay slices of the earlier sites and ``pga.shifted_copies`` shifted copies of the
    current slices; the plain step sees all of them concatenated.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = _segmenter(data, cfg)
    loss_fn = SegLoss(cfg.dice_weight)
    part = data.parts["train"][data.sites[-1]]
    idx = torch.randint(0, len(part), (cfg.batch_size,), generator=g)
    cur = (part.images[idx], part.masks[idx])
    domains = [cur]
    replay = None
    if len(data.sites) > 1:
        mem = real_memory(data, data.sites[:-1], cfg.replay_per_site, seed)
        rx, ry, rs = mem.sample(cfg.replay_batch, g)
        replay = (rx, ry)
        domains += [(rx[rs == s], ry[rs == s]) for s in torch.unique(rs).tolist()]
    shifted = [
        (shift_domain(cur[0], g, cfg.pga.shift_strength), cur[1])
        for _ in range(cfg.pga.shifted_copies)
    ]
    domains += shifted
    meta_test = split_domains(len(domains), cfg.pga.meta_test_domains, g)
    parts = [cur, *([replay] if replay else []), *shifted]
    samples_x = torch.cat([p[0] for p in parts])
    samples_y = torch.cat([p[1] for p in parts])

    def plain():
        model.zero_grad(set_to_none=True)
        loss_fn(model(samples_x), samples_y).backward()

    def pga(estimator):
        # the run's PGA weights and α with ``estimator``; the SGD virtual step and no
        # alignment measurement, as the step time was always measured
        options = dataclasses.replace(
            cfg.pga, estimator=estimator, virtual_step="sgd", measure=False
        )

        def run():
            model.zero_grad(set_to_none=True)
            pga_objective(
                model,
                loss_fn,
                domains,
                meta_test,
                replay,
                options=options,
            )["loss"].backward()

        return run

    t_plain = _timed(plain, repeats)
    t_first = _timed(pga("first_order"), repeats)
    t_exact = _timed(pga("exact"), repeats)
    return {
        "plain_step_s": t_plain,
        "pga_step_s": t_first,
        "pga_exact_step_s": t_exact,
        "pga_over_plain": t_first / t_plain,
        "first_over_exact": t_first / t_exact,
        "step_samples": int(samples_x.shape[0]),
    }


def _train_on(
    images, masks, cfg: RunConfig, data: ContinualData, steps: int, seed: int
) -> Segmenter:
    torch.manual_seed(seed)
    model = _segmenter(data, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = SegLoss(cfg.dice_weight)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(images[idx]), masks[idx]).backward()
        opt.step()
    return model.eval()


def _real_train(data: ContinualData, sites: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.cat([data.parts["train"][s].images for s in sites])
    masks = torch.cat([data.parts["train"][s].masks for s in sites])
    return images, masks


def time_samplers(
    smd: SiteModulatedDiffusion,
    data: ContinualData,
    cfg: RunConfig,
    *,
    judge: Segmenter | None = None,
    ddim_steps: int = 50,
    per_site: int = 8,
    train_steps: int = 300,
    seed: int = 0,
) -> dict[str, float]:
    """DDIM-``ddim_steps`` vs DDPM (all T steps) on ``per_site`` samples of every trained site.

    Downstream quality of a sampler's pairs: the Dice between each generated mask and
    what ``judge`` (a segmenter trained on the real training slices of all sites; one
    is trained for ``train_steps`` steps when not given) segments in the generated
    image, pooled per site and averaged over sites. High means the image and mask
    agree the way real pairs do, which is what a replayed pair must teach.
    """
    names = list(smd.config.site_names)
    if judge is None:
        judge = _train_on(*_real_train(data, names), cfg, data, train_steps, seed)
    judge.eval()
    sites = torch.arange(len(names)).repeat_interleave(per_site)
    out: dict[str, float] = {}
    for name, sampler, steps in (("ddim", "ddim", ddim_steps), ("ddpm", "ddpm", None)):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        images, masks = smd.sample(
            sites,
            steps=steps or smd.config.num_train_timesteps,
            sampler=sampler,
            generator=g,
            mask_threshold=cfg.smd.mask_threshold,
        )
        out[f"{name}_seconds"] = time.perf_counter() - t0
        images, masks = resize_pairs(images, masks, cfg.image_size)
        pred = judge.predict(images)
        k_structures = len(data.structures)
        per = [
            _structure_dice(pred[sites == k], masks[sites == k, 0], k_structures)
            for k in range(len(names))
        ]
        out[f"{name}_downstream_dice"] = sum(per) / len(per)
    # the judge's own Dice on real test slices of the same sites: what "agree the way real
    # pairs do" means in numbers (samples cannot be expected to score above it)
    per = []
    for name in names:
        part = data.parts["test"][name]
        per.append(_structure_dice(judge.predict(part.images), part.masks[:, 0], k_structures))
    out["real_downstream_dice"] = sum(per) / len(per)
    out["ddim_over_ddpm_time"] = out["ddim_seconds"] / out["ddpm_seconds"]
    out["ddim_minus_ddpm_dice"] = out["ddim_downstream_dice"] - out["ddpm_downstream_dice"]
    out["ddim_steps"] = ddim_steps
    out["ddpm_steps"] = smd.config.num_train_timesteps
    return out


class SiteClassifier(nn.Module):
    """A small CNN naming the site of a ``(B, C, S, S)`` slice."""

    def __init__(self, channels: int, n_sites: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, n_sites),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def site_classifier_accuracy(
    smd: SiteModulatedDiffusion,
    data: ContinualData,
    cfg: RunConfig,
    *,
    per_site: int = 32,
    steps: int = 300,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy of a real-data site classifier on real test slices and on SMD samples.

    The classifier is trained on real training slices passed through the SMD's
    resolution (``smd.image_size``), like the samples it then names.
    """
    names = list(smd.config.site_names)
    torch.manual_seed(seed)
    clf = SiteClassifier(data.channels, len(names))
    xs, ms = _real_train(data, names)
    size = smd.config.image_size
    # real slices seen at the SMD's resolution (down, then up to the segmenter's size),
    # so the classifier judges the site cues, not the resolution of the samples
    xs = resize_pairs(*resize_pairs(xs, ms, size), cfg.image_size)[0]
    ys = torch.cat([torch.full((len(data.parts["train"][s]),), k) for k, s in enumerate(names)])
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, xs.shape[0], (32,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(clf(xs[idx]), ys[idx]).backward()
        opt.step()
    clf.eval()
    with torch.no_grad():
        tx = torch.cat([data.parts["test"][s].images for s in names])
        tm = torch.cat([data.parts["test"][s].masks for s in names])
        tx = resize_pairs(*resize_pairs(tx, tm, size), cfg.image_size)[0]
        ty = torch.cat([torch.full((len(data.parts["test"][s]),), k) for k, s in enumerate(names)])
        real_acc = float((clf(tx).argmax(1) == ty).float().mean())
        sites = torch.arange(len(names)).repeat_interleave(per_site)
        images, masks = smd.sample(
            sites, steps=cfg.smd.ddim_steps, generator=torch.Generator().manual_seed(seed + 1)
        )
        images, _ = resize_pairs(images, masks, cfg.image_size)
        smd_acc = float((clf(images).argmax(1) == sites).float().mean())
    return {"site_acc_real_test": real_acc, "site_acc_smd": smd_acc, "site_chance": 1 / len(names)}
