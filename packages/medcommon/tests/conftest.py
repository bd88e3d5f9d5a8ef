"""Fixtures: pydicom's shipped test files (never the download-on-demand ones)."""

from __future__ import annotations

from pathlib import Path

import pytest


def shipped_dicom(name: str) -> Path:
    """Path of a DICOM file that ships inside the pydicom wheel."""
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.is_file():  # pragma: no cover - depends on the pydicom build
        pytest.skip(f"pydicom does not ship {name}")
    return path
