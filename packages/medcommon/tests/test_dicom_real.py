"""The DICOM reader on real files from ``pydicom-data`` (the ``test`` extra), offline.

References are independent of the reader: pydicom's raw ``pixel_array`` pushed
through the modality rescale and the PS3.3 C.11.2.1.2.1 window by hand, and the
palette applied by indexing the lookup-table bytes directly. Compressed twins
(JPEG 2000, JPEG-LS, RLE, big endian) must decode to exactly the same image as the
uncompressed file.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder

from medai_testkit import pydicom_data_file, pydicom_test_file
from medcommon.cli import run_main
from medcommon.cli.main import main
from medcommon.io import read_image, write_image


def _require_decoder(path) -> None:
    """Skip (visibly, naming the extra) when no installed plugin decodes ``path``."""
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        return
    decoder = get_decoder(syntax)
    if not decoder.is_available:
        pytest.skip(
            f"no decoder for {syntax.name} ({'; '.join(decoder.missing_dependencies)}); "
            "pip install medcommon[dicom-codecs]"
        )


def _stored_range(ds) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _window(x: np.ndarray, c: float, w: float, y_min: float, y_max: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI function, written out from the standard."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min
    y = np.where(x <= c - 0.5 - (w - 1) / 2, y_min, y)
    return np.where(x > c - 0.5 + (w - 1) / 2, y_max, y)


TWINS = [
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),
    ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
    ("emri_small.dcm", "emri_small_RLE.dcm"),
    ("emri_small.dcm", "emri_small_big_endian.dcm"),
]


@pytest.mark.parametrize(("plain", "twin"), TWINS, ids=[t for _, t in TWINS])
def test_compressed_twin_reads_to_the_same_image(plain, twin):
    plain_path, twin_path = pydicom_data_file(plain), pydicom_data_file(twin)
    _require_decoder(twin_path)
    a, b = read_image(plain_path), read_image(twin_path)
    assert a.meta["transfer_syntax"] != b.meta["transfer_syntax"]
    assert a.array.shape == b.array.shape
    np.testing.assert_array_equal(a.array, b.array)
    assert a.spacing == b.spacing
    # Lossless means the stored values themselves agree, not only after windowing.
    np.testing.assert_array_equal(
        pydicom.dcmread(plain_path).pixel_array, pydicom.dcmread(twin_path).pixel_array
    )


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm"])
def test_monochrome1_radiograph_is_windowed_then_inverted(name):
    path = pydicom_data_file(name)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "RescaleSlope" not in ds
    raw = ds.pixel_array.astype(np.float64)
    lo, hi = _stored_range(ds)
    windowed = _window(raw, float(ds.WindowCenter), float(ds.WindowWidth), lo, hi)
    img = read_image(path)
    assert img.meta["voi"] == "window" and img.array.dtype == np.float32
    np.testing.assert_allclose(img.array, hi + lo - windowed, rtol=1e-6, atol=1e-2)
    # MONOCHROME1: the smallest stored value is displayed white, so after the
    # reader's inversion it must be the largest output (and vice versa).
    assert img.array.flat[np.argmin(raw)] == img.array.max()
    assert img.array.flat[np.argmax(raw)] == img.array.min()
    # One pixel by hand, in the standard's words: window, then mirror in [lo, hi].
    y, x = np.unravel_index(np.argmin(raw), raw.shape)
    c, w, v = float(ds.WindowCenter), float(ds.WindowWidth), raw[y, x]
    if v <= c - 0.5 - (w - 1) / 2:
        by_hand = hi  # below the window: darkest stored, so brightest once inverted
    else:
        by_hand = hi - (((v - (c - 0.5)) / (w - 1) + 0.5) * (hi - lo) + lo) + lo
    assert img.array[y, x] == pytest.approx(by_hand, abs=1e-2)


def test_mr_rescale_then_window_matches_the_hand_computation():
    path = pydicom_data_file("MR2_UNCR.dcm")
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert slope != 1.0  # the file exercises a real modality rescale
    hu = ds.pixel_array.astype(np.float64) * slope + intercept
    lo, hi = (v * slope + intercept for v in _stored_range(ds))
    expected = _window(hu, float(ds.WindowCenter), float(ds.WindowWidth), lo, hi)
    img = read_image(path)
    np.testing.assert_allclose(img.array, expected, rtol=1e-5, atol=1e-2)
    assert img.spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert img.meta["spacing_source"] == "PixelSpacing"


def test_real_multiframe_keeps_frames_first_and_slice_spacing():
    path = pydicom_data_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    frames = int(ds.NumberOfFrames)
    assert frames > 1
    assert img.array.shape == (frames, int(ds.Rows), int(ds.Columns))
    assert img.meta["voi"] == "none"  # no window, no rescale: stored values as they are
    np.testing.assert_array_equal(img.array, ds.pixel_array.astype(np.float32))
    # Slice spacing is in the header, in-plane spacing is not.
    assert "PixelSpacing" not in ds and "ImagerPixelSpacing" not in ds
    assert img.spacing == (float(ds.SpacingBetweenSlices), None, None)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm"])
def test_zero_or_missing_pixel_spacing_is_unknown(name):
    path = pydicom_data_file(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    given = ds.get("PixelSpacing")
    # RG1 says 0\0, RG3 says nothing; neither has an ImagerPixelSpacing to fall back on.
    assert given is None or [float(v) for v in given] == [0.0, 0.0]
    assert "ImagerPixelSpacing" not in ds
    img = read_image(path)
    assert img.spacing == (None, None)
    assert img.meta["spacing_source"] == "none"
    assert img.spatial_shape == (int(ds.Rows), int(ds.Columns))
    assert img.summary()["spacing"] == [None, None]


def _ct_with(tmp_path, **changes):
    """CT_small (shipped with pydicom) with spacing attributes set, or deleted when None."""
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    for key, value in changes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    out = tmp_path / "ct.dcm"
    ds.save_as(out)
    return out


@pytest.mark.parametrize("pixel_spacing", [[0, 0], [0.5, 0], None], ids=["zero", "half", "absent"])
def test_imager_pixel_spacing_is_the_fallback(tmp_path, pixel_spacing):
    path = _ct_with(tmp_path, PixelSpacing=pixel_spacing, ImagerPixelSpacing=[0.2, 0.3])
    img = read_image(path)
    assert img.spacing == (0.2, 0.3)
    assert img.meta["spacing_source"] == "ImagerPixelSpacing"


def test_pixel_spacing_wins_over_imager_pixel_spacing(tmp_path):
    path = _ct_with(tmp_path, PixelSpacing=[0.7, 0.8], ImagerPixelSpacing=[0.2, 0.3])
    assert read_image(path).spacing == (0.7, 0.8)


def test_inspect_prints_unknown_spacing_as_null(capsys, tmp_path):
    path = _ct_with(tmp_path, PixelSpacing=[0, 0], ImagerPixelSpacing=None)
    assert run_main(main, ["inspect", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spacing"] == [None, None] and info["spacing_source"] == "none"
    assert run_main(main, ["inspect", str(path)]) == 0
    assert "(unknown, unknown)" in capsys.readouterr().out


def test_unknown_spacing_is_written_to_a_volume_as_unit_spacing(tmp_path):
    img = read_image(pydicom_data_file("emri_small.dcm"))
    out = tmp_path / "emri.nii.gz"
    write_image(out, img.array, img.spacing)
    back = read_image(out)
    np.testing.assert_array_equal(back.array, img.array)
    assert back.spacing == pytest.approx((img.spacing[0], 1.0, 1.0))


def test_palette_color_is_read_as_rgb_through_the_palette():
    path = pydicom_test_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    index = ds.pixel_array.astype(np.int64)
    # By hand from the palette bytes (PS3.3 C.7.6.3.1.5): descriptor = (entries,
    # first mapped value, bits); indices below the first map to entry 0, above to
    # the last.
    channels = []
    for colour in ("Red", "Green", "Blue"):
        entries, first, bits = ds[f"{colour}PaletteColorLookupTableDescriptor"].value
        entries = entries or 65536
        dtype = "<u2" if bits == 16 else "u1"
        lut = np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, dtype=dtype)
        channels.append(lut[np.clip(index - first, 0, entries - 1)])
    expected = np.stack(channels, axis=-1)
    img = read_image(path)
    assert img.array.shape == (*index.shape, 3) and img.meta["channels_last"]
    np.testing.assert_array_equal(img.array, expected)
    assert img.spatial_shape == index.shape and len(img.spacing) == 2
    # A real colour image: the channels are not all the same grey.
    assert np.any(expected[..., 0] != expected[..., 2])


def test_enhanced_multiframe_spacing_comes_from_shared_pixel_measures(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(pydicom_data_file("emri_small.dcm"))
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.6]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.save_as(tmp_path / "enhanced.dcm")
    img = read_image(tmp_path / "enhanced.dcm")
    assert img.spacing == (float(ds.SpacingBetweenSlices), 0.5, 0.6)
    assert img.meta["spacing_source"] == "PixelMeasuresSequence"
