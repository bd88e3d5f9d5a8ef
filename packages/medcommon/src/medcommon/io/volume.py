"""NIfTI, MHA/MHD and NRRD volumes through SimpleITK.

SimpleITK reports spacing in (x, y, z) order while its arrays are (z, y, x); we
reverse the spacing so that ``array.shape[i]`` and ``spacing[i]`` always describe
the same axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcommon.errors import InputError
from medcommon.fs import atomic_path
from medcommon.io.image import Image

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


def read_volume(path: str | Path) -> Image:
    """Read a volume into ``(z, y, x)`` with spacing ``(dz, dy, dx)`` in mm."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in reversed(first) if ln.strip()), "unreadable")
        raise InputError(path, f"corrupt or unreadable volume ({detail.strip()[:160]})") from None
    arr = sitk.GetArrayFromImage(img)
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    meta = {
        "format": "volume",
        "origin": [float(v) for v in reversed(img.GetOrigin())],
        "direction": [float(v) for v in img.GetDirection()],
        "pixel_type": img.GetPixelIDTypeAsString(),
        "components": img.GetNumberOfComponentsPerPixel(),
    }
    if img.GetNumberOfComponentsPerPixel() > 1:
        meta["channels_last"] = True
    return Image(array=arr, spacing=spacing, meta=meta)


def write_volume(
    path: str | Path, array: np.ndarray, spacing: tuple[float, ...] | None = None
) -> None:
    """Write a ``(z, y, x)`` (or ``(y, x)``) array with ``spacing`` in the same order."""
    import SimpleITK as sitk

    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise InputError(path, f"expected a 2D or 3D array, got shape {arr.shape}")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    if spacing is not None:
        if len(spacing) != arr.ndim:
            raise InputError(path, f"spacing {spacing} does not match array of {arr.ndim} dims")
        img.SetSpacing([float(s) for s in reversed(spacing)])
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)
