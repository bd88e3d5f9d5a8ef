"""Intensity transfer curves: one continuous family of site shifts, polarity changes included.

A curve maps intensity in [0, 1] piecewise linearly through :data:`KNOTS` equally
spaced knots whose values are drawn uniformly in [:data:`LOW`, :data:`HIGH`]. A
non-monotone curve swaps the order of two intensities, so within the family the gland
is brighter than the tissue around it at some sites and darker at others, by any
amount (issue #22: the shift that matters is a polarity change, and PGA's shifted
copies must be able to produce it).

The same family serves two places: :func:`smg_learning.synth.generate` renders a site
through one curve (``synth.transfer: curves``), and PGA's shifted copies
(``pga.shift: transfer``, :func:`shift_transfer`) apply a fresh curve to each batch.
"""

from __future__ import annotations

import numpy as np
import torch

KNOTS = 6
LOW, HIGH = 0.05, 0.95


def knot_values(u: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The curve's knot values from ``KNOTS`` uniforms in [0, 1)."""
    return LOW + (HIGH - LOW) * u


def apply_curve(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``x`` (any shape, clipped to [0, 1]) through the curve with knot ``values`` (K,)."""
    return np.interp(np.clip(x, 0.0, 1.0), np.linspace(0.0, 1.0, len(values)), values)


def apply_curve_torch(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """:func:`apply_curve` for a tensor (piecewise linear, the same knots)."""
    k = len(values)
    pos = x.clamp(0.0, 1.0) * (k - 1)
    i = pos.floor().clamp(max=k - 2).long()
    frac = pos - i
    values = values.to(x)
    return values[i] * (1.0 - frac) + values[i + 1] * frac


def site_curve(rng: np.random.Generator, levels: tuple[float, float], min_gap: float) -> np.ndarray:
    """A site's curve: drawn until the two canonical ``levels`` (tissue, gland) end at
    least ``min_gap`` apart, so every site's gland stays visible (in either polarity)."""
    while True:
        values = knot_values(rng.uniform(size=KNOTS))
        a, b = apply_curve(np.asarray(levels), values)
        if abs(b - a) >= min_gap:
            return values


def shift_transfer(
    x: torch.Tensor, generator: torch.Generator, share: tuple[int, int] = (0, 1)
) -> torch.Tensor:
    """A shifted copy of a batch ``(B, C, H, W)`` in [0, 1]: one fresh curve for the batch.

    ``share`` as :func:`smg_learning.pga.shift_domain` (the curve is drawn once, the same
    on every process, so processes together shift a global batch as one process would).
    """
    del share  # no per-row randomness: the same curve for every row
    values = knot_values(torch.rand(KNOTS, generator=generator, dtype=torch.float64))
    return apply_curve_torch(x, values.float()).clamp(0, 1)
