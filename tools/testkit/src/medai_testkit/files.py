"""Real files that test-only wheels ship (pydicom's own test files, ``pydicom-data``),
looked up by exact name and never downloaded."""

from __future__ import annotations


def pydicom_test_file(name: str):
    """Path of a DICOM file shipped inside the pydicom wheel (never the downloadable extras).

    ``pydicom.data.get_testdata_file`` tries to download files that are not
    shipped; tests must not touch the network, so we look on disk only and skip
    the test when the file is absent.
    """
    from pathlib import Path

    import pydicom.data
    import pytest

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.is_file():  # pragma: no cover - depends on the pydicom build
        pytest.skip(f"pydicom does not ship {name}")
    return path


def pydicom_data_file(name: str):
    """Path of ``name`` from the installed ``pydicom-data`` package (the ``test`` extra).

    Offline by construction: the file must already be in the package folder on
    disk (else the test is skipped), and ``get_testdata_file`` is asked by exact
    name with ``download=False``, because a miss or a pattern would otherwise
    make pydicom try to download it.
    """
    from importlib import metadata
    from pathlib import Path

    import pytest
    from pydicom.data import get_testdata_file

    if any(c in name for c in "*?[]/\\"):
        raise ValueError(f"exact file name expected, got {name!r}")
    try:
        folder = Path(metadata.distribution("pydicom-data").locate_file("data_store/data"))
    except metadata.PackageNotFoundError:
        pytest.skip("pydicom-data is not installed (pip install medcommon[test])")
    if not (folder / name).is_file():
        pytest.skip(f"pydicom-data does not hold {name}")
    path = get_testdata_file(name, download=False)
    if path is None:  # pragma: no cover - e.g. the file fails pydicom's hash check
        pytest.skip(f"pydicom does not accept pydicom-data's {name}")
    return Path(path)
