"""NIfTI, MHA/MHD and NRRD volumes through SimpleITK.

SimpleITK reports spacing in (x, y, z) order while its arrays are (z, y, x); we
reverse the spacing so that ``array.shape[i]`` and ``spacing[i]`` always describe
the same axis. Two NIfTI faults SimpleITK hides are caught here: voxel data
shorter than the header promises (it zero-fills) and NaN/inf voxels (it reads
them as 0; we put them back so callers can refuse them).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcommon.errors import InputError
from medcommon.fs import atomic_path
from medcommon.io.image import Image

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass(frozen=True)
class _NiftiHeader:
    endian: str
    datatype: int
    expected_bytes: int
    offset: int
    gz: bool


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_header(path: Path) -> _NiftiHeader | None:
    """The few NIfTI-1/2 header fields we check ourselves, or None if not NIfTI."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    gz = name.endswith(".gz")
    try:
        with open(path, "rb") as fh:
            if gz:
                # zlib rather than gzip.open: a cut stream still yields the bytes it holds
                # (gzip.open raises EOFError and returns nothing), so a file cut inside
                # its header is caught below rather than zero-filled by SimpleITK.
                head = zlib.decompressobj(wbits=31).decompress(fh.read(1 << 16), 540)
            else:
                head = fh.read(540)
    except (OSError, zlib.error):
        return None  # not gzip at all: SimpleITK reports it
    if len(head) < 348:
        return _NiftiHeader("<", 0, 348, 348, gz)
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if size == 540:
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    n_dims = max(0, min(int(dims[0]), 7))
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : n_dims + 1]], dtype=np.int64))
    offset = max(offset, 348)
    return _NiftiHeader(
        endian, int(datatype), offset + voxels * max(int(bitpix), 8) // 8, offset, gz
    )


def _nifti_actual_bytes(path: Path, header: _NiftiHeader) -> int:
    """Bytes really there; for ``.gz`` the bytes that decompress before the stream ends.

    The gzip trailer's size field cannot be trusted: in a cut file those last four
    bytes are compressed data, and garbage there can claim any size. So the stream
    is decompressed (in C, by chunks) and counted; a stream that ends early counts
    what came out before the break.
    """
    if not header.gz:
        return path.stat().st_size
    actual = 0
    stream = zlib.decompressobj(wbits=31)  # counts the bytes before a cut, unlike gzip.open
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                actual += len(stream.decompress(chunk))
                if stream.eof:  # one gzip member: NIfTI writers write exactly one
                    break
    except (OSError, zlib.error):
        pass
    return actual


def _restore_nonfinite(path: Path, header: _NiftiHeader, arr: np.ndarray) -> int:
    """Put NaN/inf voxels back into ``arr`` (SimpleITK reads them as 0); return their count.

    Only float NIfTI data can hold them; the raw voxels are in (z, y, x) C order,
    the same index order as SimpleITK's array.
    """
    if header.datatype not in _NIFTI_FLOATS or arr.dtype.kind != "f":
        return 0
    opener = gzip.open if header.gz else open
    with opener(path, "rb") as fh:
        fh.seek(header.offset)
        raw = np.frombuffer(
            fh.read(arr.size * np.dtype(_NIFTI_FLOATS[header.datatype]).itemsize),
            dtype=np.dtype(header.endian + _NIFTI_FLOATS[header.datatype]),
        )
    if raw.size != arr.size:
        return 0
    bad = ~np.isfinite(raw)
    count = int(bad.sum())
    if count:
        flat = arr.reshape(-1)
        flat[bad] = raw[bad].astype(arr.dtype)
    return count


def read_volume(path: str | Path) -> Image:
    """Read a volume into ``(z, y, x)`` with spacing ``(dz, dy, dx)`` in mm."""
    import SimpleITK as sitk

    path = Path(path)
    header = _nifti_header(path)
    if header is not None:
        actual = _nifti_actual_bytes(path, header)
        if actual < header.expected_bytes:
            held = "decompress before the gzip stream breaks off" if header.gz else "are there"
            raise InputError(
                path,
                f"truncated NIfTI: the header promises {header.expected_bytes} bytes, "
                f"{actual} {held}",
            )
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in reversed(first) if ln.strip()), "unreadable")
        raise InputError(path, f"corrupt or unreadable volume ({detail.strip()[:160]})") from None
    arr = sitk.GetArrayFromImage(img)
    nonfinite = _restore_nonfinite(path, header, arr) if header is not None else 0
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    meta = {
        "format": "volume",
        "origin": [float(v) for v in reversed(img.GetOrigin())],
        "direction": [float(v) for v in img.GetDirection()],
        "pixel_type": img.GetPixelIDTypeAsString(),
        "components": img.GetNumberOfComponentsPerPixel(),
        "nonfinite_voxels": nonfinite,
    }
    if img.GetNumberOfComponentsPerPixel() > 1:
        meta["channels_last"] = True
    return Image(array=arr, spacing=spacing, meta=meta)


def write_volume(
    path: str | Path,
    array: np.ndarray,
    spacing: tuple[float, ...] | None = None,
    origin: tuple[float, ...] | None = None,
    direction: tuple[float, ...] | None = None,
) -> None:
    """Write a ``(z, y, x)`` (or ``(y, x)``) array with ``spacing`` in the same order.

    ``origin`` is in the same ``(z, y, x)`` order and ``direction`` is SimpleITK's
    row-major cosine matrix, exactly as :func:`read_volume` puts them in ``meta``,
    so ``write_volume(p, a, img.spacing, img.meta["origin"], img.meta["direction"])``
    keeps an input's geometry (e.g. a predicted mask on the image it came from).

    Volume formats have no "unknown" spacing: ``None`` entries (as a DICOM without
    pixel spacing gives) are written as 1.0, the formats' own default.
    """
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
        img.SetSpacing([1.0 if s is None else float(s) for s in reversed(spacing)])
    if origin is not None:
        if len(origin) != arr.ndim:
            raise InputError(path, f"origin {origin} does not match array of {arr.ndim} dims")
        img.SetOrigin([float(v) for v in reversed(origin)])
    if direction is not None:
        if len(direction) != arr.ndim**2:
            raise InputError(path, f"direction needs {arr.ndim**2} values, got {len(direction)}")
        img.SetDirection([float(v) for v in direction])
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)
