"""Overlap and boundary metrics for binary segmentation masks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from medcommon.errors import InputError


def _binary(name: str, mask: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return arr.astype(bool) if arr.dtype != bool else arr


def dice(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, empty: float = 1.0
) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of two binary masks of the same shape.

    Args:
        pred, target: masks of any shape (nonzero = foreground).
        empty: the value when both masks are empty (1.0: a correct "nothing here").
    """
    p, t = _binary("pred", pred), _binary("target", target)
    if p.shape != t.shape:
        raise InputError("pred", f"shape {p.shape} differs from target shape {t.shape}")
    denom = p.sum() + t.sum()
    if denom == 0:
        return float(empty)
    return float(2.0 * np.logical_and(p, t).sum() / denom)


def hd95(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | None = None,
) -> float:
    """95th-percentile symmetric Hausdorff distance between mask surfaces (MONAI underneath).

    Args:
        pred, target: binary masks ``(y, x)`` or ``(z, y, x)``.
        spacing: voxel size per axis in mm (same order); distances are in mm when given.
            An unknown entry (None, as the DICOM reader gives for ``PixelSpacing 0\\0``)
            makes the whole distance fall back to voxel units.

    Returns:
        The distance; ``0.0`` if both masks are empty and ``inf`` if exactly one is.
    """
    from monai.metrics import compute_hausdorff_distance

    p, t = _binary("pred", pred), _binary("target", target)
    if p.shape != t.shape:
        raise InputError("pred", f"shape {p.shape} differs from target shape {t.shape}")
    if p.ndim not in (2, 3):
        raise InputError("pred", f"expected a 2D or 3D mask, got shape {p.shape}")
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    pt = torch.from_numpy(p)[None, None].float()
    tt = torch.from_numpy(t)[None, None].float()
    with warnings.catch_warnings():
        # MONAI >= 1.5 warns about an argument its own HD code still passes internally.
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy", category=FutureWarning
        )
        value = compute_hausdorff_distance(
            pt,
            tt,
            include_background=True,
            percentile=95,
            spacing=list(spacing) if spacing and None not in spacing else None,
        )
    return float(value.item())
