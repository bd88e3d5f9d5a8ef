"""Image I/O against independent references: pydicom's raw pixels, SimpleITK, Pillow."""

from __future__ import annotations

import gzip

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage

from medai_testkit import pydicom_test_file as shipped_dicom
from medcommon.errors import InputError
from medcommon.io import read_image, write_image


def test_ct_applies_rescale_slope_and_intercept():
    path = shipped_dicom("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept
    )
    img = read_image(path)
    assert img.array.shape == (128, 128)
    np.testing.assert_allclose(img.array, expected)
    assert img.spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert img.meta["modality"] == "CT"
    # CT in Hounsfield units: air is about -1000, so the minimum must be strongly negative.
    assert img.array.min() < -800


def test_mr_applies_window_by_the_dicom_linear_formula():
    path = shipped_dicom("MR_small.dcm")
    ds = pydicom.dcmread(path)
    x = ds.pixel_array.astype(np.float64)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    bits = int(ds.BitsStored)
    y_min, y_max = (
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    )
    # PS3.3 C.11.2.1.2.1: linear window with the 0.5 offsets.
    expected = ((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min
    expected = np.where(x <= c - 0.5 - (w - 1) / 2, y_min, expected)
    expected = np.where(x > c - 0.5 + (w - 1) / 2, y_max, expected)
    img = read_image(path)
    assert img.meta["voi"] == "window"
    np.testing.assert_allclose(img.array, expected, rtol=1e-5, atol=1e-2)


def test_monochrome1_is_inverted_after_the_voi_stage(tmp_path):
    src = shipped_dicom("CT_small.dcm")
    ds = pydicom.dcmread(src)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted_path = tmp_path / "mono1.dcm"
    ds.save_as(inverted_path)
    normal, inverted = read_image(src).array, read_image(inverted_path).array
    assert read_image(inverted_path).meta["photometric_interpretation"] == "MONOCHROME1"
    # Inversion maps the value range onto itself: x -> lo + hi - x, with lo/hi the
    # stored range after rescale (16 bits stored, signed or not as the file says).
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    lo, hi = (
        lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
        hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
    )
    np.testing.assert_allclose(inverted, lo + hi - normal)
    # Ordering flips: the brightest pixel becomes the darkest.
    assert np.argmax(normal) == np.argmin(inverted)


def test_multiframe_keeps_frames_as_first_axis():
    path = shipped_dicom("rtdose.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    assert img.array.shape == (int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    assert img.meta["frames"] == 15
    assert len(img.spacing) == 3
    np.testing.assert_allclose(img.array[3], ds.pixel_array[3].astype(np.float64))


def test_jpeg2000_lossless_decodes_to_the_uncompressed_pixels():
    plain = read_image(shipped_dicom("MR_small.dcm"))
    try:
        compressed = read_image(shipped_dicom("MR_small_jp2klossless.dcm"))
    except InputError as exc:  # no JPEG 2000 decoder installed: the error must say so
        assert "MR_small_jp2klossless.dcm" in str(exc) and "cannot decode" in str(exc)
        pytest.skip("no JPEG 2000 decoder installed; only the error message was checked")
    assert "JPEG 2000" in compressed.meta["transfer_syntax"]
    np.testing.assert_array_equal(compressed.array, plain.array)


def test_jpeg_baseline_colour_decodes_to_rgb():
    path = shipped_dicom("SC_rgb_jpeg_dcmtk.dcm")
    try:
        img = read_image(path)
    except InputError as exc:
        assert "cannot decode" in str(exc) and path.name in str(exc)
        pytest.skip("no JPEG baseline decoder installed; only the error message was checked")
    assert img.array.shape == (100, 100, 3) and img.meta["channels_last"]
    # The test image is made of pure colour bands: the top band is red.
    r, g, b = img.array[5, 50].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_undecodable_transfer_syntax_names_file_and_syntax(tmp_path):
    # MPEG-2 video has no pixel-data handler in any pydicom plugin: always undecodable.
    from pydicom.uid import UID

    ds = pydicom.dcmread(shipped_dicom("JPEG-lossy.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError) as exc:
        read_image(path)
    assert str(exc.value).startswith(f"{path}: cannot decode pixel data in transfer syntax")
    assert "MPEG2" in str(exc.value) and "dicom-codecs" in str(exc.value)


def test_a_dicom_cut_before_its_pixel_data_is_named_truncated(tmp_path, capfd):
    data = shipped_dicom("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:784])  # the header survives, the pixel data does not
    with pytest.raises(InputError, match="cut.dcm: truncated DICOM: the file ends before"):
        read_image(cut)
    assert capfd.readouterr().err == ""  # pydicom's own warnings are not printed


def test_truncated_dicom_is_an_input_error():
    path = shipped_dicom("MR_truncated.dcm")
    with pytest.raises(InputError, match="MR_truncated.dcm.*truncated"):
        read_image(path)


def test_garbage_and_empty_files_are_input_errors(tmp_path):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x07" * 50)
    with pytest.raises(InputError, match="scan.dcm"):
        read_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.png: file is empty"):
        read_image(empty)
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.nii.gz")
    with pytest.raises(InputError, match="unsupported image format"):
        read_image(tmp_path.joinpath("notes.txt").write_text("x") and tmp_path / "notes.txt")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_volume_round_trip_keeps_axis_order_and_anisotropic_spacing(tmp_path, suffix):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 1000, size=(5, 7, 11)).astype(np.int16)  # (z, y, x)
    spacing = (3.0, 0.5, 0.75)  # (z, y, x)
    path = tmp_path / f"vol{suffix}"
    write_image(path, arr, spacing)
    img = read_image(path)
    np.testing.assert_array_equal(img.array, arr)
    assert img.spacing == pytest.approx(spacing)
    # Independent check with SimpleITK itself: it reports (x, y, z).
    raw = sitk.ReadImage(str(path))
    assert raw.GetSize() == (11, 7, 5)
    assert raw.GetSpacing() == pytest.approx((0.75, 0.5, 3.0))


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii", "cutstream.nii.gz", "half.nii.gz"])
def test_truncated_nifti_is_an_input_error(tmp_path, name):
    # SimpleITK alone zero-fills missing voxels; the reader must refuse instead.
    path = tmp_path / "vol.nii.gz"
    write_image(path, np.ones((4, 8, 8), np.float32), (1.0, 1.0, 1.0))
    raw = gzip.decompress(path.read_bytes())
    cut = tmp_path / name
    if name == "cut.nii.gz":
        cut.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # complete gzip of half the data
    elif name == "cut.nii":
        cut.write_bytes(raw[: len(raw) // 2])
    elif name == "half.nii.gz":  # a download cut in half: what survives is counted
        rng = np.random.default_rng(0)
        write_image(path, rng.random((20, 64, 64)).astype(np.float32), (1.0, 1.0, 1.0))
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        cut.write_bytes(path.read_bytes()[:-40])  # gzip stream cut short
    with pytest.raises(InputError, match=name.replace(".", r"\.") + ": truncated NIfTI") as info:
        read_image(cut)
    if name == "half.nii.gz":
        held = int(str(info.value).split(", ")[1].split()[0])
        assert 0 < held < 20 * 64 * 64 * 4  # not "holds 0": the bytes before the cut


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_8_and_16_bit(tmp_path, dtype):
    top = np.iinfo(dtype).max
    arr = np.linspace(0, top, 48 * 32).reshape(48, 32).astype(dtype)
    path = tmp_path / "x.png"
    write_image(path, arr)
    img = read_image(path)
    assert img.array.dtype == dtype
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_array_equal(np.asarray(PILImage.open(path)), arr)


def test_truncated_png_is_an_input_error(tmp_path):
    path = tmp_path / "x.png"
    write_image(path, (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8))
    data = path.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        read_image(cut)


def test_jpeg_reads_as_uint8_grayscale(tmp_path):
    arr = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (32, 1))
    path = tmp_path / "x.jpg"
    write_image(path, arr)
    img = read_image(path)
    assert img.array.shape == (32, 64) and img.array.dtype == np.uint8
    assert np.abs(img.array.astype(int) - arr).mean() < 3  # lossy, but close


def test_writes_are_atomic_on_failure(tmp_path):
    path = tmp_path / "bad.png"
    with pytest.raises(InputError):
        write_image(path, np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nan_voxels_in_nifti_survive_reading(tmp_path, suffix):
    # SimpleITK alone reads NaN voxels as 0, which hides a corrupt volume.
    arr = np.ones((3, 4, 5), np.float32)
    arr[1, 2, 3] = np.nan
    arr[2, 0, 0] = np.inf
    path = tmp_path / f"v{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # the hidden fault
    img = read_image(path)
    assert np.isnan(img.array[1, 2, 3]) and np.isinf(img.array[2, 0, 0])
    assert img.meta["nonfinite_voxels"] == 2
    assert np.isfinite(np.delete(img.array.ravel(), [1 * 20 + 2 * 5 + 3, 40])).all()


@pytest.mark.parametrize("keep", [200, 1000, 3000, -4])
def test_a_cut_nifti_gz_is_refused_whatever_its_last_bytes_say(tmp_path, keep):
    """The gzip trailer of a cut file is compressed data; it must not vouch for the size."""
    from medcommon.io import read_image, write_image

    rng = np.random.default_rng(0)
    full = tmp_path / "full.nii.gz"
    write_image(full, rng.normal(size=(8, 32, 32)).astype(np.float32), (2.0, 1.0, 1.0))
    data = full.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[:keep] if keep > 0 else data[:keep] + data[-4:][::-1])
    with pytest.raises(InputError, match="cut.nii.gz"):
        read_image(cut)


def test_write_volume_keeps_an_oblique_geometry(tmp_path):
    import SimpleITK as sitk

    from medcommon.io import read_image, write_image

    img = sitk.GetImageFromArray(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4))
    img.SetSpacing((0.5, 0.7, 3.0))
    img.SetOrigin((10.0, -20.0, 5.0))
    c, s_ = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s_, 0.0, s_, c, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "in.mha"))
    src = read_image(tmp_path / "in.mha")
    write_image(
        tmp_path / "out.nii.gz",
        src.array > 5,
        src.spacing,
        src.meta["origin"],
        src.meta["direction"],
    )
    back = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert back.GetSpacing() == pytest.approx(img.GetSpacing())
    assert back.GetOrigin() == pytest.approx(img.GetOrigin(), abs=1e-4)
    assert back.GetDirection() == pytest.approx(img.GetDirection(), abs=1e-5)
