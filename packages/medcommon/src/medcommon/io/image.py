"""The :class:`Image` value returned by every reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Image:
    """A decoded image.

    Attributes:
        array: pixel data; spatial axes first, in the order ``(z, y, x)`` or ``(y, x)``
            (DICOM multi-frame: ``(frame, y, x)``), then an optional channel axis.
        spacing: physical spacing in mm per spatial axis, same order as ``array``; an
            entry is ``None`` where the file does not say (e.g. a DICOM radiograph
            with ``PixelSpacing`` ``0\\0`` or none), so nothing downstream measures
            in millimetres that were never recorded.
        meta: reader-specific facts (format, photometric interpretation, frames, ...).
    """

    array: np.ndarray
    spacing: tuple[float | None, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape of the spatial axes (without a trailing colour channel)."""
        return tuple(self.array.shape[: len(self.spacing)])

    def summary(self) -> dict[str, Any]:
        """What ``medcommon inspect`` prints: shape, spacing, dtype, range and key metadata.

        Unknown spacing entries stay ``None`` (``null`` in ``inspect --json``).
        """
        arr = self.array
        finite = np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else None
        vals = arr[finite] if finite is not None else arr
        info: dict[str, Any] = {
            "shape": list(arr.shape),
            "spacing": [None if s is None else round(float(s), 6) for s in self.spacing],
            "dtype": str(arr.dtype),
            "min": float(vals.min()) if vals.size else None,
            "max": float(vals.max()) if vals.size else None,
        }
        info.update(self.meta)
        return info
