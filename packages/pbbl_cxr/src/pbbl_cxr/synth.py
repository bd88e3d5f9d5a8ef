"""Synthetic chest-radiograph-like datasets in the GbP / SbP on-disk layouts.

Each image is a torso (bright ellipse) with two dark lungs, a smooth lung texture and
noise. The **label** is a subtle lesion: a small Gaussian opacity at a random place
inside one lung, a few pixels wide and of low contrast. The **bias** attribute is an
easier, global cue:

- ``gbp`` (gender-biased pneumothorax): bias 1 renders a wider, brighter torso and
  narrower lungs (a body-habitus cue standing in for sex);
- ``sbp`` (source-biased pneumonia): bias 1 ("MIMIC") renders a different
  acquisition style (higher contrast, gamma, a bright corner marker), bias 0 ("NIH")
  the plain style.

Train groups: a share ``bias_ratio`` of samples is bias-aligned (label == bias), split
evenly over the two labels; valid and test are group-balanced. Layouts:

- ``gbp``: ``images/*.png`` and ``train.csv``, ``valid.csv``, ``test.csv`` with the header
  ``path,pneumothorax,gender`` (as the published GbP files);
- ``sbp``: ``NIH/*.png``, ``MIMIC/*.png`` and ``train_NIH.csv``, ``train_MIMIC.csv``,
  ``valid.csv``, ``test.csv`` with the header ``path,pneumonia,MIMIC`` (as SbP).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medcommon.fs import atomic_dir
from medcommon.io import write_image
from medcommon.synthetic import grid, smooth_noise, to_uint
from pbbl_cxr.config import SynthConfig

HEADERS = {"gbp": ("path", "pneumothorax", "gender"), "sbp": ("path", "pneumonia", "MIMIC")}


def render(rng: np.random.Generator, cfg: SynthConfig, label: int, bias: int) -> np.ndarray:
    """One ``(S, S)`` float image in [0, 1] with lesion ``label`` and bias attribute ``bias``."""
    s = cfg.image_size
    shape = (s, s)
    strength = cfg.bias_strength
    jy, jx = rng.uniform(-0.06, 0.06, 2)
    habitus = cfg.kind == "gbp" and bias == 1
    body_w = 0.80 + (0.14 * strength if habitus else 0.0) + rng.uniform(-0.03, 0.03)
    lung_w = 0.27 - (0.05 * strength if habitus else 0.0) + rng.uniform(-0.02, 0.02)
    yy, xx = grid(shape)

    def inside(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0

    img = np.full(shape, 0.12)
    img[inside(0.08 + jy, jx, 0.98, body_w)] = 0.62
    lungs = inside(-0.02 + jy, -0.40 + jx, 0.58, lung_w) | inside(
        -0.02 + jy, 0.40 + jx, 0.58, lung_w
    )
    img[lungs] = 0.28
    img = img + 0.05 * smooth_noise(shape, rng, sigma=max(1.0, s / 20)) * lungs
    if label == 1:
        # The lesion: a small, low-contrast opacity somewhere inside a lung.
        side = rng.choice((-1, 1))
        cy = -0.02 + jy + rng.uniform(-0.35, 0.35)
        cx = side * 0.40 + jx + rng.uniform(-0.4, 0.4) * lung_w
        sig = cfg.lesion_sigma * 2.0 / s
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
        img = img + cfg.lesion_contrast * rng.uniform(0.8, 1.2) * blob
    if habitus:
        img = img + 0.08 * strength
    if cfg.kind == "sbp" and bias == 1:
        img = np.clip(img, 0, 1) ** (1.0 - 0.3 * strength)
        img = (img - 0.4) * (1.0 + 0.3 * strength) + 0.4
        m = max(2, s // 10)
        img[1 : 1 + m, s - 1 - 2 * m : s - 1] = 0.95  # a laterality-marker-like corner label
    img = img + rng.normal(0.0, cfg.noise, shape)
    return np.clip(img, 0.0, 1.0)


def group_counts(n: int, bias_ratio: float | None) -> dict[tuple[int, int], int]:
    """Samples per ``(label, bias)`` group; ``bias_ratio=None`` means group-balanced.

    With a ratio, ``round(n * ratio)`` samples are aligned (label == bias) and the rest
    conflicting, each half label 0 and half label 1.
    """
    aligned = n // 2 if bias_ratio is None else round(n * bias_ratio)
    conflicting = n - aligned
    if bias_ratio is None:
        aligned = conflicting = n // 2
    return {
        (0, 0): aligned - aligned // 2,
        (1, 1): aligned // 2,
        (1, 0): conflicting - conflicting // 2,
        (0, 1): conflicting // 2,
    }


def _csv_text(header: tuple[str, ...], rows: list[tuple[str, int, int]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def generate(out: str | Path, cfg: SynthConfig, seed: int = 0, quiet: bool = True) -> Path:
    """Write a synthetic dataset to ``out`` (replaced as a whole once complete)."""
    cfg = cfg.check()
    rng = np.random.default_rng(seed)
    header = HEADERS[cfg.kind]
    plan = {
        "train": group_counts(cfg.n_train, cfg.bias_ratio),
        "valid": group_counts(cfg.n_valid, None),
        "test": group_counts(cfg.n_test, None),
    }
    total = sum(sum(c.values()) for c in plan.values())
    bar = tqdm(total=total, desc=f"synth {cfg.kind}", disable=quiet, leave=False)
    with atomic_dir(out) as tmp:
        files: dict[str, list[tuple[str, int, int]]] = {}
        for split, counts in plan.items():
            items = [(y, b) for (y, b), k in counts.items() for _ in range(k)]
            order = rng.permutation(len(items))
            for i, j in enumerate(order):
                y, b = items[j]
                pixels = to_uint(render(rng, cfg, y, b), bits=8)
                if cfg.kind == "gbp":
                    rel, name = f"images/{split}_{i:05d}.png", split
                else:
                    folder = "MIMIC" if b == 1 else "NIH"
                    rel = f"{folder}/{split}_{i:05d}.png"
                    name = f"train_{folder}" if split == "train" else split
                write_image(tmp / rel, pixels)
                files.setdefault(name, []).append((rel, y, b))
                bar.update(1)
        for name, rows in files.items():
            (tmp / f"{name}.csv").write_text(_csv_text(header, rows), encoding="utf-8")
        info = {"generator": "pbbl_cxr.synth", "seed": seed, "kind": cfg.kind}
        info.update({k: v for k, v in vars(cfg).items() if k != "kind"})
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    bar.close()
    return Path(out)
