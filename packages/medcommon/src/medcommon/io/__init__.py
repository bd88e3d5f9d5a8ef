"""Medical image I/O: DICOM, NIfTI/MHA/NRRD and PNG/JPEG behind one function.

``read_image(path)`` returns an :class:`Image` whose ``array`` axis order and
``spacing`` order agree: volumes are ``(z, y, x)``, single images ``(y, x)``,
DICOM multi-frame ``(frame, y, x)``; colour images add a trailing channel axis
that has no spacing entry. A spacing entry the file does not give is ``None``.
"""

from __future__ import annotations

from pathlib import Path

from medcommon.errors import InputError
from medcommon.io.dicom import is_dicom, read_dicom
from medcommon.io.image import Image
from medcommon.io.raster import RASTER_SUFFIXES, read_raster, write_raster
from medcommon.io.volume import VOLUME_SUFFIXES, read_volume, write_volume

__all__ = ["Image", "InputError", "image_kind", "read_image", "write_image"]


def image_kind(path: str | Path) -> str:
    """Return ``"dicom"``, ``"volume"`` or ``"raster"`` for ``path`` (by suffix, then content)."""
    path = Path(path)
    name = path.name.lower()
    if any(name.endswith(s) for s in VOLUME_SUFFIXES):
        return "volume"
    if path.suffix.lower() in RASTER_SUFFIXES:
        return "raster"
    if path.suffix.lower() in {".dcm", ".dicom"} or is_dicom(path):
        return "dicom"
    raise InputError(path, f"unsupported image format {path.suffix or '(no suffix)'!r}")


def read_image(path: str | Path) -> Image:
    """Read a medical image file into an :class:`Image`.

    Raises:
        InputError: the file is missing, empty, truncated, corrupt or of an
            unsupported format; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    kind = image_kind(path)
    if kind == "dicom":
        return read_dicom(path)
    if kind == "volume":
        return read_volume(path)
    return read_raster(path)


def write_image(
    path: str | Path,
    array,
    spacing: tuple[float, ...] | None = None,
    origin: tuple[float, ...] | None = None,
    direction: tuple[float, ...] | None = None,
) -> None:
    """Write ``array`` to ``path`` atomically, format chosen by the suffix.

    Volumes (``.nii``, ``.nii.gz``, ``.mha``, ``.nrrd``) take ``(z, y, x)`` arrays and
    ``spacing`` (and optionally ``origin``, ``direction``, as :func:`read_image` gives them
    in ``meta``) in the same order; PNG/JPEG take ``(y, x)`` or ``(y, x, 3)`` arrays of
    ``uint8`` (or ``uint16`` for PNG).
    """
    path = Path(path)
    kind = image_kind(path) if path.suffix else "unknown"
    if kind == "volume":
        write_volume(path, array, spacing, origin, direction)
    elif kind == "raster":
        write_raster(path, array)
    else:
        raise InputError(path, "can only write NIfTI, MHA, NRRD, PNG or JPEG")
