"""DICOM reading with the display pipeline applied in the standard's order.

Order (PS3.4 grayscale pipeline): stored values -> Modality LUT (rescale slope and
intercept, or a Modality LUT sequence) -> VOI LUT (a VOI LUT sequence if present,
else the first window centre/width) -> MONOCHROME1 inverted so that larger means
brighter. PALETTE COLOR indices go through the palette to RGB. Multi-frame objects
keep their frames as the first axis.

Spacing that the header does not give is ``None`` ("unknown"), never a made-up
1.0 or a meaningless 0: many real radiographs carry ``PixelSpacing`` ``0\\0`` or
none at all. ``PixelSpacing`` (patient plane; for enhanced multi-frame objects the
shared Pixel Measures macro) is preferred, then ``ImagerPixelSpacing`` (detector
plane, not corrected for geometric magnification, PS3.3 C.8.11.4.1.1).
"""

from __future__ import annotations

import warnings
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


def _positive(value: Any) -> float | None:
    """``float(value)`` if it is a finite positive number, else ``None`` (unknown)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _pair(value: Any) -> tuple[float, float] | None:
    """A ``(row, column)`` spacing pair if both entries are positive, else ``None``."""
    try:
        dy, dx = (_positive(v) for v in value)
    except (TypeError, ValueError):  # absent, a single value, or more than two
        return None
    return (dy, dx) if dy is not None and dx is not None else None


def _shared_pixel_measures(ds: Any) -> Any:
    """The shared Pixel Measures item of an enhanced multi-frame object, or ``None``."""
    try:
        return ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    except (AttributeError, IndexError, KeyError):
        return None


def _spacing(ds: Any, spatial_ndim: int) -> tuple[tuple[float | None, ...], str]:
    """Spacing ``(dy, dx)`` or ``(dz, dy, dx)`` in mm (``None`` = unknown) and its source.

    A zero, negative or malformed ``PixelSpacing`` counts as absent, so the search
    falls through to ``ImagerPixelSpacing``; both entries are ``None`` if neither is
    usable. ``dz`` comes from ``SpacingBetweenSlices``, else ``SliceThickness``.
    """
    measures = _shared_pixel_measures(ds)
    candidates = [
        ("PixelSpacing", ds.get("PixelSpacing")),
        ("PixelMeasuresSequence", measures.get("PixelSpacing") if measures else None),
        ("ImagerPixelSpacing", ds.get("ImagerPixelSpacing")),
    ]
    source, pair = next(((n, p) for n, v in candidates if (p := _pair(v))), ("none", None))
    in_plane: tuple[float | None, ...] = pair or (None, None)
    if spatial_ndim == 2:
        return in_plane, source
    dz = None
    for item in (ds, measures):
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            if dz is None and item is not None:
                dz = _positive(item.get(key))
    return (dz, *in_plane), source


def read_dicom(path: str | Path) -> Image:
    """Read one DICOM file; see the module docstring for the pixel pipeline.

    Returns an :class:`Image` with ``array`` ``(y, x)``, ``(frame, y, x)`` or with a
    trailing colour axis ``(..., 3)`` (RGB, also for PALETTE COLOR), float32 for
    grayscale, and ``spacing`` ``(dy, dx)`` or ``(dz, dy, dx)`` in mm where an entry
    is ``None`` if the header gives no usable value (``meta["spacing_source"]`` names
    the attribute used, or ``"none"``).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    path = Path(path)
    # pydicom warns about what it tolerates; the warnings end up in our message, never on
    # the user's terminal ahead of it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as exc:
            raise InputError(path, f"not a DICOM file ({exc})") from None
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                path, f"corrupt or truncated DICOM ({type(exc).__name__}: {exc})"
            ) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        sop = getattr(ds.get("SOPClassUID"), "name", "")
        if "Image Storage" in str(sop) or "Rows" in ds or not sop:
            said = f"; pydicom: {caught[0].message}" if caught else ""
            raise InputError(
                path,
                f"truncated DICOM: the file ends before its pixel data ({path.stat().st_size} "
                f"bytes{said})",
            )
        raise InputError(path, f"DICOM file has no pixel data (SOP class {sop})")
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
    elif photometric == "PALETTE COLOR":
        # The stored values are palette indices, not intensities: map them through
        # the red/green/blue lookup tables (PS3.3 C.7.6.3.1.5); uint8 or uint16 as
        # the palette's bit depth says.
        try:
            arr = np.asarray(apply_color_lut(raw, ds))
        except (ValueError, AttributeError, KeyError, IndexError) as exc:
            raise InputError(
                path, f"PALETTE COLOR image with an unusable palette ({exc})"
            ) from None
        meta["channels_last"] = True
    else:
        # pydicom >= 3 returns YBR colour data converted to RGB already.
        arr = np.asarray(raw)
        meta["channels_last"] = True

    spatial_ndim = arr.ndim - (1 if meta.get("channels_last") else 0)
    if spatial_ndim not in (2, 3):
        raise InputError(
            path, f"unexpected pixel array shape {arr.shape} for {photometric} pixel data"
        )
    spacing, meta["spacing_source"] = _spacing(ds, spatial_ndim)
    return Image(array=arr, spacing=spacing, meta=meta)
