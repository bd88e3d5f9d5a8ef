"""PNG and JPEG (8- and 16-bit grayscale, RGB) through Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcommon.errors import InputError
from medcommon.fs import atomic_path
from medcommon.io.image import Image

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_raster(path: str | Path) -> Image:
    """Read a PNG or JPEG into ``(y, x)`` (grayscale, uint8/uint16) or ``(y, x, 3)`` (RGB).

    Spacing is ``(1.0, 1.0)``: these formats carry no reliable physical spacing.
    """
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    path = Path(path)
    try:
        with PILImage.open(path) as img:
            img.load()
            mode = img.mode
            if mode in {"I;16", "I;16B", "I;16L"}:
                arr = np.asarray(img, dtype=np.uint16)
            elif mode == "I":
                arr = np.asarray(img, dtype=np.int32)
                if arr.min() >= 0 and arr.max() <= 65535:
                    arr = arr.astype(np.uint16)
            elif mode in {"L", "P", "1"} or mode in {"LA"}:
                arr = np.asarray(img.convert("L"), dtype=np.uint8)
            else:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise InputError(path, "not a readable PNG/JPEG image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"truncated or corrupt image ({exc})") from None
    meta = {"format": path.suffix.lower().lstrip("."), "mode": mode}
    if arr.ndim == 3:
        meta["channels_last"] = True
    return Image(array=arr, spacing=(1.0, 1.0), meta=meta)


def write_raster(path: str | Path, array: np.ndarray) -> None:
    """Write a ``uint8`` (PNG/JPEG) or ``uint16`` (PNG) array atomically."""
    from PIL import Image as PILImage

    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == np.uint16 and path.suffix.lower() != ".png":
        raise InputError(path, "16-bit images can only be written as PNG")
    if arr.dtype not in (np.uint8, np.uint16):
        raise InputError(path, f"expected uint8 or uint16 pixels, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8)):
        raise InputError(path, f"expected (y, x) or (y, x, 3) pixels, got shape {arr.shape}")
    img = PILImage.fromarray(arr)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
