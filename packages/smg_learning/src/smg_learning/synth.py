"""Synthetic multi-site data in the public layouts, with a site shift to remember and to generalise over.

Prostate (``<Site>/CaseNN.nii.gz`` + ``<Site>/CaseNN_segmentation.nii.gz``): a pelvis-like
body with smooth texture, a bladder-like distractor and an irregular ellipsoidal gland
(the label). Each site renders the same anatomy through its own *intensity transfer*
(the gland's intensity relative to the surrounding tissue: brighter at some sites,
darker at others), then a :class:`medcommon.synthetic.SiteStyle` (gamma, contrast,
bias field, blur, noise). A segmenter fine-tuned on the last site therefore forgets
earlier sites whose transfer differs, which is the effect SMG-Learning addresses.

Fundus (``<Domain>/image/NAME.png`` + ``<Domain>/mask/NAME.png``): an RGB fundus
disc with vessels and a bright optic disc (the label, mask 0/255); domains differ
by colour transfer, gamma, blur and noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from medcommon.errors import InputError
from medcommon.fs import atomic_dir
from medcommon.io import write_image
from medcommon.synthetic import (
    SiteStyle,
    apply_site_style,
    ellipse,
    random_blob,
    smooth_noise,
    to_uint,
)
from smg_learning.config import FUNDUS_SITES, PRESETS, PROSTATE_SITES
from smg_learning.transfer import apply_curve, site_curve

Task = Literal["prostate", "fundus"]


@dataclass(frozen=True)
class SynthSpec:
    """Size of a synthetic dataset: the ``synth`` section of a preset file (defaults: ``full``)."""

    sites: int = 6
    cases: int = 30
    slices: int = 20
    size: int = 128
    # How sites differ in the gland's intensity against the tissue around it:
    # "alternating" (_GLAND_CONTRAST: +-0.2..0.32, polarity alternating by site) or
    # "curves" (issue #22: each site renders through its own intensity transfer curve,
    # smg_learning.transfer; any contrast in either polarity, from one continuous family)
    transfer: Literal["alternating", "curves"] = "alternating"


# Gland intensity minus surrounding-tissue intensity per site: the "intensity transfer".
# Alternating polarity makes sequential fine-tuning forget (and held-out sites of
# either polarity reward a model that remembers both).
_GLAND_CONTRAST = (0.32, -0.30, 0.26, -0.24, 0.30, -0.28, 0.22, -0.2)
# "curves": the canonical rendering (tissue about 0.45, gland +0.30 above it) goes
# through the site's curve; its two levels end at least this far apart at every site
_CANONICAL_CONTRAST, _TISSUE, _MIN_GAP = 0.30, 0.45, 0.2


def site_styles(n: int, task: Task, seed: int = 0) -> list[SiteStyle]:
    """The acquisition style of each of ``n`` sites (fixed by ``seed``)."""
    rng = np.random.default_rng(10_000 + seed)
    out = []
    for k in range(n):
        out.append(
            SiteStyle(
                gamma=float(np.exp(rng.uniform(-0.35, 0.35))),
                contrast=float(np.exp(rng.uniform(-0.25, 0.2))),
                brightness=float(rng.uniform(-0.08, 0.08)),
                bias_strength=float(rng.uniform(0.05, 0.35)) if task == "prostate" else 0.0,
                blur_sigma=float([0.0, 0.6, 0.3, 0.9, 0.15, 0.45][k % 6]),
                noise_sigma=float([0.02, 0.05, 0.03, 0.06, 0.015, 0.04][k % 6]),
            )
        )
    return out


def prostate_case(
    rng: np.random.Generator,
    slices: int,
    size: int,
    gland_contrast: float,
    style: SiteStyle,
    curve: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(z, y, x)`` volume in [0, 1] and its 0/1 gland mask (``curve``: the site's
    intensity transfer, :mod:`smg_learning.transfer`, applied before the site style)."""
    shape = (slices, size, size)
    body = ellipse(shape, (0.0, 0.05, 0.0), (3.0, 0.85, 0.95))
    cz = rng.uniform(-0.2, 0.2)
    center = (cz, rng.uniform(0.0, 0.3), rng.uniform(-0.15, 0.15))
    radius = rng.uniform(0.3, 0.42)
    coords_z = np.linspace(-1, 1, slices)
    # gland: an irregular blob per slice, shrinking towards the ends of its z extent
    gland = np.zeros(shape, dtype=bool)
    half = rng.uniform(0.45, 0.7)
    blob = random_blob((size, size), rng, center[1:], radius, irregularity=0.2)
    for z, zc in enumerate(coords_z):
        rel = abs(zc - center[0]) / half
        if rel < 1.0:
            steps = round((1 - np.sqrt(1 - rel**2)) * radius * size / 2)
            # iterations=0 would mean "erode until nothing changes" in scipy
            eroded = ndimage.binary_erosion(blob, iterations=steps) if steps > 0 else blob
            gland[z] = eroded & body[z]
    bladder = (
        ellipse(shape, (center[0], center[1] - radius - 0.3, center[2]), (0.8, 0.22, 0.3)) & ~gland
    )
    tissue = 0.45 + 0.06 * smooth_noise(shape, rng, sigma=1.5)
    img = np.where(body, tissue, 0.05)
    # the distractor has the opposite polarity of the gland at every site
    img = np.where(bladder, tissue - 1.2 * gland_contrast, img)
    gland_tex = 0.04 * smooth_noise(shape, rng, sigma=1.0)
    img = np.where(gland, tissue + gland_contrast + gland_tex, img)
    if curve is not None:
        img = apply_curve(img, curve)
    img = np.stack([apply_site_style(s, style, rng) for s in img])
    return img.astype(np.float32), gland.astype(np.uint8)


def fundus_case(
    rng: np.random.Generator, size: int, tint: np.ndarray, style: SiteStyle
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(y, x, 3)`` RGB fundus image in [0, 1] and its 0/1 optic-disc mask."""
    field_ = ellipse((size, size), (0, 0), (0.95, 0.95))
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    center = (rng.uniform(-0.2, 0.2), rng.uniform(-0.35, 0.35))
    disc = random_blob((size, size), rng, center, rng.uniform(0.16, 0.24), irregularity=0.1)
    vessels = np.zeros((size, size))
    for _ in range(6):
        ang = rng.uniform(0, 2 * np.pi)
        dist = np.abs(np.sin(ang) * (xx - center[1]) - np.cos(ang) * (yy - center[0]))
        vessels = np.maximum(vessels, np.exp(-((dist / 0.03) ** 2)))
    base = 0.45 + 0.05 * smooth_noise((size, size), rng, sigma=2.0)
    lum = np.where(field_, base - 0.25 * vessels, 0.0)
    lum = np.where(disc, 0.85 + 0.05 * smooth_noise((size, size), rng, 1.0), lum)
    lum = apply_site_style(lum, style, rng)
    rgb = np.clip(lum[..., None] * tint[None, None, :], 0, 1) * field_[..., None]
    return rgb.astype(np.float32), (disc & field_).astype(np.uint8)


def generate(
    out: str | Path,
    task: Task = "prostate",
    preset: str = "tiny",
    seed: int = 0,
    num_sites: int | None = None,
    quiet: bool = True,
    spec: SynthSpec | None = None,
) -> Path:
    """Write a synthetic multi-site dataset to ``out`` (atomically; ``out`` must not hold files).

    ``spec``: the sizes and transfer, instead of the ``preset``'s ``synth`` section.

    Returns:
        ``out``.
    """
    spec = spec or PRESETS.section(preset, "synth", SynthSpec)
    if spec.transfer not in ("alternating", "curves"):
        raise InputError("synth.transfer", f"unknown {spec.transfer!r}; choose alternating, curves")
    if spec.transfer == "curves" and task != "prostate":
        raise InputError("synth.transfer", "curves are defined for the prostate task only")
    if task not in ("prostate", "fundus"):
        raise InputError("--task", f"unknown task {task!r}; choose from prostate, fundus")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "already exists and is not an empty folder")
    names = PROSTATE_SITES if task == "prostate" else FUNDUS_SITES
    n = num_sites or (spec.sites if task == "prostate" else min(spec.sites, 4))
    if not 1 <= n <= len(names):
        raise InputError("--sites", f"{task} synth writes 1 to {len(names)} sites, not {n}")
    styles = site_styles(n, task, seed)
    curves: list[np.ndarray | None] = [None] * n
    if spec.transfer == "curves":
        levels = (_TISSUE, _TISSUE + _CANONICAL_CONTRAST)
        curves = [
            site_curve(np.random.default_rng([seed, 500 + k]), levels, _MIN_GAP) for k in range(n)
        ]
    bar = tqdm(total=n * spec.cases, desc="synth", disable=quiet, leave=False)
    with atomic_dir(out) as tmp:
        for k, site in enumerate(names[:n]):
            rng = np.random.default_rng([seed, k])
            if task == "prostate":
                for c in range(spec.cases):
                    contrast = _GLAND_CONTRAST[k % 8] if curves[k] is None else _CANONICAL_CONTRAST
                    img, mask = prostate_case(
                        rng, spec.slices, spec.size, contrast, styles[k], curves[k]
                    )
                    spacing = (3.0, 0.6 * 256 / spec.size, 0.6 * 256 / spec.size)
                    # scanner-like integer intensities, a different range per site
                    scale = [1000, 255, 4095, 600, 2000, 1500][k % 6]
                    write_image(
                        tmp / site / f"Case{c:02d}.nii.gz",
                        np.round(img * scale).astype(np.int16),
                        spacing,
                    )
                    write_image(tmp / site / f"Case{c:02d}_segmentation.nii.gz", mask, spacing)
                    bar.update(1)
            else:
                tint = np.array([1.0, 0.55, 0.3]) * np.exp(rng.uniform(-0.3, 0.3, 3))
                for c in range(spec.cases):
                    img, mask = fundus_case(rng, spec.size * 2, tint, styles[k])
                    write_image(tmp / site / "image" / f"{site}_{c:03d}.png", to_uint(img))
                    write_image(tmp / site / "mask" / f"{site}_{c:03d}.png", mask * 255)
                    bar.update(1)
    bar.close()
    return out


# ------------------------------------------------------------------ released-layout replicas
#: Mask file suffix per prostate site in the replica: both capitalisations occur in the
#: public six-site release, and RUNMC/BMC masks carry a second label (2) inside the gland.
_RELEASE_MASK_SUFFIX = {
    "RUNMC": "_segmentation",
    "BMC": "_segmentation",
    "I2CVB": "_Segmentation",
    "UCL": "_Segmentation",
    "BIDMC": "_Segmentation",
    "HK": "_Segmentation",
}
_RELEASE_LABEL2 = ("RUNMC", "BMC")


def write_prostate_release(
    out: str | Path,
    sites: tuple[str, ...] = PROSTATE_SITES,
    cases: int = 3,
    slices: int = 4,
    size: int = 24,
    seed: int = 0,
) -> Path:
    """A tiny replica of the public six-site prostate release, quirks included.

    ``<Site>/CaseNN.nii.gz`` + ``<Site>/CaseNN_segmentation.nii.gz`` or
    ``..._Segmentation.nii.gz`` (per site, :data:`_RELEASE_MASK_SUFFIX`); at RUNMC and
    BMC the gland's upper half is label 2 instead of 1 (a second zone), as in the
    release. Any non-zero label is the gland.
    """
    out = Path(out)
    styles = site_styles(len(sites), "prostate", seed)
    for k, site in enumerate(sites):
        rng = np.random.default_rng([seed, 100 + k])
        for c in range(cases):
            img, mask = prostate_case(rng, slices, size, _GLAND_CONTRAST[k % 8], styles[k])
            if site in _RELEASE_LABEL2:
                rows = np.arange(size)[None, :, None] < size // 2
                mask = np.where((mask > 0) & rows, 2, mask).astype(np.uint8)
            spacing = (3.0, 0.6, 0.6)
            write_image(out / site / f"Case{c:02d}.nii.gz", np.round(img * 1000).astype(np.int16))
            write_image(
                out / site / f"Case{c:02d}{_RELEASE_MASK_SUFFIX[site]}.nii.gz", mask, spacing
            )
    return out


def write_dofe_release(
    out: str | Path,
    domains: int = 2,
    train: int = 3,
    test: int = 2,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """A tiny replica of the public DoFE fundus release (Wang et al., MICCAI 2020).

    ``DomainK/{train,test}/ROIs/{image,mask}/NAME.png``; masks are 0 = cup, 128 = disc
    rim, 255 = background (the disc is ``mask < 255``, the cup, a bright core of the
    disc, ``mask == 0``).
    """
    out = Path(out)
    styles = site_styles(domains, "fundus", seed)
    for k in range(domains):
        rng = np.random.default_rng([seed, 200 + k])
        tint = np.array([1.0, 0.55, 0.3]) * np.exp(rng.uniform(-0.3, 0.3, 3))
        for part, n in (("train", train), ("test", test)):
            for c in range(n):
                img, disc = fundus_case(rng, size, tint, styles[k])
                depth = ndimage.distance_transform_edt(disc)
                cup = depth > 0.45 * depth.max()
                img = np.where(cup[..., None], np.clip(img * 1.25 + 0.05, 0, 1), img)
                mask = np.full(disc.shape, 255, dtype=np.uint8)
                mask[disc > 0] = 128
                mask[cup] = 0
                rois = out / f"Domain{k + 1}" / part / "ROIs"
                name = f"d{k + 1}_{part}_{c:03d}.png"
                write_image(rois / "image" / name, to_uint(img))
                write_image(rois / "mask" / name, mask)
    return out
