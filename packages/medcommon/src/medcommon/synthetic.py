"""Procedural primitives for the packages' synthetic datasets.

Everything takes an explicit ``numpy.random.Generator`` so a dataset is a pure
function of its seed. Images are float arrays in [0, 1] unless stated;
coordinates are normalised to [-1, 1] along each axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Normalised coordinates, one array per axis, each of ``shape``, in [-1, 1]."""
    axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    return list(np.meshgrid(*axes, indexing="ij"))


def ellipse(
    shape: Sequence[int], center: Sequence[float], radii: Sequence[float], angle: float = 0.0
) -> np.ndarray:
    """A filled ellipse (2D, rotated by ``angle`` radians) or ellipsoid (3D), as a bool mask."""
    coords = grid(shape)
    if len(shape) == 2 and angle:
        y, x = coords[0] - center[0], coords[1] - center[1]
        c, s = np.cos(angle), np.sin(angle)
        rel = [c * y - s * x, s * y + c * x]
    else:
        rel = [g - c for g, c in zip(coords, center)]
    dist = sum((r / rad) ** 2 for r, rad in zip(rel, radii))
    return dist <= 1.0


def smooth_noise(shape: Sequence[int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """White noise blurred by a Gaussian of ``sigma`` voxels, rescaled to zero mean, unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma=sigma, mode="wrap")
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def random_blob(
    shape: Sequence[int],
    rng: np.random.Generator,
    center: Sequence[float],
    radius: float,
    irregularity: float = 0.25,
) -> np.ndarray:
    """An irregular, smooth, roughly round shape: a sphere whose radius is modulated by smooth noise."""
    coords = grid(shape)
    rel = [g - c for g, c in zip(coords, center)]
    dist = np.sqrt(sum(r**2 for r in rel))
    wobble = smooth_noise(shape, rng, sigma=max(2.0, min(shape) / 6))
    return dist <= radius * (1.0 + irregularity * wobble)


def bias_field(shape: Sequence[int], rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """A smooth multiplicative intensity field ``exp(strength * low-order polynomial)``, mean ~1."""
    coords = grid(shape)
    poly = np.zeros(tuple(shape))
    for g in coords:
        poly += rng.uniform(-1, 1) * g + rng.uniform(-0.5, 0.5) * g**2
    if len(coords) >= 2:
        poly += rng.uniform(-0.5, 0.5) * coords[0] * coords[1]
    return np.exp(strength * poly)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in voxels (identity for ``sigma <= 0``)."""
    return ndimage.gaussian_filter(image, sigma=sigma) if sigma > 0 else image


def add_noise(
    image: np.ndarray, rng: np.random.Generator, sigma: float, rician: bool = False
) -> np.ndarray:
    """Additive Gaussian noise, or Rician noise (magnitude of complex Gaussian noise, as in MRI)."""
    if sigma <= 0:
        return image
    if rician:
        real = image + rng.normal(0, sigma, image.shape)
        imag = rng.normal(0, sigma, image.shape)
        return np.sqrt(real**2 + imag**2)
    return image + rng.normal(0, sigma, image.shape)


def to_uint(image: np.ndarray, bits: int = 8, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Clip ``image`` to [lo, hi] and quantise to ``uint8`` or ``uint16``."""
    top = 2**bits - 1
    scaled = np.clip((image - lo) / (hi - lo), 0, 1) * top
    return np.round(scaled).astype(np.uint8 if bits == 8 else np.uint16)


@dataclass(frozen=True)
class SiteStyle:
    """How one acquisition site renders the same anatomy (a domain shift).

    Applied in this order: gamma (intensity transfer), contrast and brightness,
    multiplicative bias field, blur, additive noise; then clipped to [0, 1].
    """

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    bias_strength: float = 0.0
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0


def apply_site_style(image: np.ndarray, style: SiteStyle, rng: np.random.Generator) -> np.ndarray:
    """Render a [0, 1] image as seen at a site (see :class:`SiteStyle`)."""
    out = np.clip(image, 0, 1) ** style.gamma
    out = (out - 0.5) * style.contrast + 0.5 + style.brightness
    if style.bias_strength > 0:
        out = out * bias_field(out.shape, rng, style.bias_strength)
    out = gaussian_blur(out, style.blur_sigma)
    out = add_noise(out, rng, style.noise_sigma)
    return np.clip(out, 0, 1)


def random_site_styles(n: int, rng: np.random.Generator, severity: float = 1.0) -> list[SiteStyle]:
    """``n`` distinct site styles; ``severity`` scales how far sites drift from each other."""
    styles = []
    for _ in range(n):
        styles.append(
            SiteStyle(
                gamma=float(np.exp(rng.uniform(-0.6, 0.6) * severity)),
                contrast=float(np.exp(rng.uniform(-0.4, 0.3) * severity)),
                brightness=float(rng.uniform(-0.15, 0.15) * severity),
                bias_strength=float(rng.uniform(0.0, 0.4) * severity),
                blur_sigma=float(rng.uniform(0.0, 1.2) * severity),
                noise_sigma=float(rng.uniform(0.01, 0.06) * severity),
            )
        )
    return styles
