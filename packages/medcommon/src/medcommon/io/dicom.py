"""DICOM reading with the display pipeline applied in the standard's order.

Order (PS3.4 grayscale pipeline): stored values -> Modality LUT (rescale slope and
intercept, or a Modality LUT sequence) -> VOI LUT (a VOI LUT sequence if present,
else the first window centre/width) -> MONOCHROME1 inverted so that larger means
brighter. Multi-frame objects keep their frames as the first axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcommon.errors import InputError
from medcommon.io.image import Image


def is_dicom(path: str | Path) -> bool:
    """True if ``path`` carries the DICOM Part 10 preamble marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _stored_range(ds: Any) -> tuple[float, float]:
    """The range of stored values allowed by BitsStored and PixelRepresentation."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _output_range(ds: Any, voi_applied: str) -> tuple[float, float]:
    """The value range after the modality and VOI stages, used to invert MONOCHROME1."""
    if voi_applied == "voi_lut_sequence":
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        return 0.0, float(2 ** int(descriptor[2]) - 1)
    lo, hi = _stored_range(ds)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    lo, hi = lo * slope + intercept, hi * slope + intercept
    return (min(lo, hi), max(lo, hi))


def read_dicom(path: str | Path) -> Image:
    """Read one DICOM file; see the module docstring for the pixel pipeline.

    Returns an :class:`Image` with ``array`` ``(y, x)``, ``(frame, y, x)`` or with a
    trailing colour axis, float32 for grayscale, and ``spacing`` ``(dy, dx)`` or
    ``(dz, dy, dx)`` in mm.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise InputError(path, f"not a DICOM file ({exc})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            path, f"corrupt or truncated DICOM ({type(exc).__name__}: {exc})"
        ) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise InputError(path, "DICOM file has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    syntax_name = getattr(syntax, "name", str(syntax))
    try:
        raw = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        reason = str(exc).splitlines()[0]
        raise InputError(
            path,
            f"cannot decode pixel data in transfer syntax {syntax_name!r}: {reason} "
            "(install the decoders with `pip install medcommon[dicom-codecs]`)",
        ) from None
    except (ValueError, EOFError, OSError, AttributeError) as exc:
        raise InputError(path, f"truncated or corrupt pixel data ({exc})") from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": str(ds.get("Modality", "")),
        "photometric_interpretation": photometric,
        "frames": frames,
        "transfer_syntax": syntax_name,
        "patient_id": str(ds.get("PatientID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
    }
    if photometric.startswith("MONOCHROME"):
        arr = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        voi = "none"
        if "VOILUTSequence" in ds:
            voi = "voi_lut_sequence"
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            voi = "window"
        if voi != "none":
            arr = np.asarray(apply_voi_lut(arr, ds, index=0), dtype=np.float64)
        if photometric == "MONOCHROME1":
            lo, hi = _output_range(ds, voi)
            arr = (lo + hi) - arr
        meta["voi"] = voi
        arr = arr.astype(np.float32)
    else:
        # pydicom >= 3 returns YBR colour data converted to RGB already.
        arr = np.asarray(raw)
        meta["channels_last"] = True

    pixel_spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or [1.0, 1.0]
    dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
    spatial_ndim = arr.ndim - (1 if meta.get("channels_last") else 0)
    if spatial_ndim == 3:
        dz = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        spacing: tuple[float, ...] = (dz, dy, dx)
    elif spatial_ndim == 2:
        spacing = (dy, dx)
    else:
        raise InputError(path, f"unexpected pixel array shape {arr.shape}")
    return Image(array=arr, spacing=spacing, meta=meta)
