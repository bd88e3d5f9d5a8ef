"""NIfTI, MHA/MHD and NRRD volumes through SimpleITK.

SimpleITK reports spacing in (x, y, z) order while its arrays are (z, y, x); we
reverse the spacing so that ``array.shape[i]`` and ``spacing[i]`` always describe
the same axis.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from medcommon.errors import InputError
from medcommon.fs import atomic_path
from medcommon.io.image import Image

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


def _nifti_sizes(path: Path) -> tuple[int, int] | None:
    """``(expected, actual)`` byte counts of a NIfTI-1/2 file, or None if not NIfTI.

    SimpleITK zero-fills a NIfTI whose voxel data stops early, so we compare the
    size the header promises with what is there (for ``.gz``: the gzip trailer's
    uncompressed size, confirmed by decompressing when it looks short).
    """
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    gz = name.endswith(".gz")
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
    except (OSError, EOFError):
        return None  # not gzip at all: SimpleITK reports it
    if len(head) < 348:
        return (348, len(head))
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if size == 540:
            dims = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[12:14])[0]
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    n_dims = max(0, min(int(dims[0]), 7))
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : n_dims + 1]], dtype=np.int64))
    expected = max(offset, 348) + voxels * max(int(bitpix), 8) // 8
    if not gz:
        return expected, path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        actual = struct.unpack("<I", fh.read(4))[0]
    if actual < expected % 2**32 or expected >= 2**32:
        actual = 0
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    actual += len(chunk)
        except (OSError, EOFError):
            return expected, actual
    return expected, actual


def read_volume(path: str | Path) -> Image:
    """Read a volume into ``(z, y, x)`` with spacing ``(dz, dy, dx)`` in mm."""
    import SimpleITK as sitk

    path = Path(path)
    sizes = _nifti_sizes(path)
    if sizes is not None and sizes[1] < sizes[0]:
        raise InputError(
            path, f"truncated NIfTI: header promises {sizes[0]} bytes, file holds {sizes[1]}"
        )
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
