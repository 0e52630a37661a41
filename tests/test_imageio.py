"""Decoding every supported format to display-ready uint8 (harness.imageio)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl_bench.harness import imageio
from medssl_bench.harness.errors import CorruptImageError, UserError
from tests.conftest import write_dicom


def gradient(h: int = 32, w: int = 48) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 255 // (h * w - 1)).astype(np.uint8)


# ------------------------------------------------------------------------------ 2D formats


def test_8bit_png_and_bmp_are_kept_as_stored(tmp_path: Path):
    pixels = gradient()
    for name in ("g.png", "g.bmp", "g.tif"):
        Image.fromarray(pixels).save(tmp_path / name)
        out = imageio.read_pixels(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == pixels.shape
        np.testing.assert_array_equal(out, pixels)
    assert imageio.count_slices(tmp_path / "g.png") == 1


def test_rgba_drops_alpha_and_gray_rgb_collapses_to_one_channel(tmp_path: Path):
    rgb = np.stack([gradient(), 255 - gradient(), np.full((32, 48), 7, np.uint8)], axis=-1)
    rgba = np.dstack([rgb, np.full((32, 48), 10, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    np.testing.assert_array_equal(imageio.read_pixels(tmp_path / "c.png"), rgb)

    Image.fromarray(np.dstack([gradient()] * 3)).save(tmp_path / "gray_as_rgb.png")
    np.testing.assert_array_equal(imageio.read_pixels(tmp_path / "gray_as_rgb.png"), gradient())


def test_jpeg_colour_decodes_close_to_the_original(tmp_path: Path):
    yy, xx = np.mgrid[0:64, 0:64]
    rgb = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.JPG", quality=95)  # upper-case suffix on purpose
    out = imageio.read_pixels(tmp_path / "c.JPG")
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 3


@pytest.mark.parametrize("name", ["deep.png", "deep.tiff"])
def test_16bit_images_are_percentile_windowed(tmp_path: Path, name: str):
    values = np.linspace(1000, 50000, 64 * 64).reshape(64, 64).astype(np.uint16)
    values[0, 0] = 65535  # one hot outlier must not squash the rest (0.5-99.5 percentile window)
    Image.fromarray(values).save(tmp_path / name)
    out = imageio.read_pixels(tmp_path / name)
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    flat = out.ravel()[1:]
    assert np.all(np.diff(flat.astype(int)) >= 0)  # order kept
    assert flat.min() == 0 and flat.max() == 255
    assert 100 < np.median(flat) < 155  # a min-max stretch would put the median near 96


def test_palette_gif_expands_through_its_palette(tmp_path: Path):
    index = (np.arange(16 * 16).reshape(16, 16) % 4).astype(np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
    img = Image.fromarray(index, "P")
    img.putpalette([c for colour in colours for c in colour] + [0] * (256 - 4) * 3)
    img.save(tmp_path / "pal.gif")
    out = imageio.read_pixels(tmp_path / "pal.gif")
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out, np.array(colours, np.uint8)[index])

    gray_palette = Image.fromarray(gradient(), "L").convert("P")  # a grayscale palette
    gray_palette.save(tmp_path / "gray.gif")
    np.testing.assert_array_equal(imageio.read_pixels(tmp_path / "gray.gif"), gradient())


def test_load_rgb_replicates_grayscale(tmp_path: Path):
    Image.fromarray(gradient()).save(tmp_path / "g.png")
    img = imageio.load_rgb(tmp_path / "g.png")
    assert img.mode == "RGB" and img.size == (48, 32)
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[..., 0], gradient())
    np.testing.assert_array_equal(arr[..., 2], gradient())


# --------------------------------------------------------------------------------- NIfTI


def save_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4) if affine is None else affine), path)
    return path


def test_nifti_slices_share_one_window_per_volume(tmp_path: Path):
    # Value grows with z; within a slice a gentle x ramp. Per-slice windowing would stretch every
    # slice to 0..255 and erase the ordering between slices.
    x, _, z = np.mgrid[0:20, 0:16, 0:6]
    path = save_nifti(tmp_path / "vol.nii.gz", z * 100.0 + x)
    assert imageio.count_slices(path) == 6
    means = [imageio.read_pixels(path, k).mean() for k in range(6)]
    assert all(a < b for a, b in zip(means, means[1:]))
    assert means[-1] - means[0] > 150
    assert imageio.read_pixels(path, 0).shape == (16, 20)  # rotated: rows = y, columns = x
    assert [k for k, _ in imageio.iter_pixels(path)] == list(range(6))


def test_nifti_is_reoriented_and_displayed_upright(tmp_path: Path):
    _, y, z = np.mgrid[0:8, 0:10, 0:5]
    flipped = np.diag([1.0, 1.0, -1.0, 1.0])  # array z runs superior -> inferior
    path = save_nifti(tmp_path / "flip.nii", z * 10.0 + y, flipped)
    means = [imageio.read_pixels(path, k).mean() for k in range(5)]
    assert all(a > b for a, b in zip(means, means[1:]))  # canonical slice 0 = most inferior
    upright = imageio.read_pixels(path, 2)
    assert upright[0].mean() > upright[-1].mean()  # anterior (high y) at the top


def test_nifti_4d_uses_its_first_volume_and_checks_slice_range(tmp_path: Path):
    first = np.random.default_rng(0).random((12, 10, 4)) * 1000
    vol4d = np.stack([first, np.zeros_like(first)], axis=-1)
    path4 = save_nifti(tmp_path / "four.nii.gz", vol4d)
    path3 = save_nifti(tmp_path / "three.nii.gz", first)
    assert imageio.count_slices(path4) == 4
    np.testing.assert_array_equal(imageio.read_pixels(path4, 3), imageio.read_pixels(path3, 3))
    with pytest.raises(CorruptImageError, match="slice 4 out of range"):
        imageio.read_pixels(path4, 4)


def test_nifti_volumes_are_cached_between_slices(tmp_path: Path):
    path = save_nifti(tmp_path / "c.nii", np.random.default_rng(1).random((8, 8, 3)))
    imageio.read_pixels(path, 0)
    hits = imageio._load_nifti_volume.cache_info().hits
    imageio.read_pixels(path, 1)
    assert imageio._load_nifti_volume.cache_info().hits == hits + 1


# --------------------------------------------------------------------------------- DICOM


def test_dicom_rescale_then_window(tmp_path: Path):
    # stored s -> HU = 2 s - 1000; window 0 +- 200 HU. Without the rescale, every stored value
    # (0..1000) would sit above the window and come out white.
    stored = np.array([[0, 400, 500, 600, 1000]], np.int16).repeat(4, axis=0)
    path = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=0, WindowWidth=400, PixelRepresentation=1)
    out = imageio.read_pixels(path)
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out[0], [0, 0, 128, 255, 255], atol=1)


def test_dicom_voi_lut_sequence_is_applied(tmp_path: Path):
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    lut.add_new("LUTData", "US", [4095 - 16 * v for v in range(256)])  # decreasing, 12-bit values
    stored = np.arange(256, dtype=np.uint16).reshape(16, 16)
    out = imageio.read_pixels(write_dicom(tmp_path / "voi.dcm", stored, bits_stored=8,
                                          VOILUTSequence=[lut]))
    assert out[0, 0] == 255 and out[-1, -1] == 0  # the table's own range maps to 0..255
    assert np.all(np.diff(out.ravel().astype(int)) <= 0)


def test_dicom_monochrome1_is_inverted(tmp_path: Path):
    stored = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16
    mono2 = imageio.read_pixels(write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", 12))
    mono1 = imageio.read_pixels(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", 12))
    assert mono2[0, 0] == 0 and mono2[-1, -1] == 255
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_multiframe_and_colour(tmp_path: Path):
    frames = np.stack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30)])
    frames[:, 0, 0] = 0
    path = write_dicom(tmp_path / "cine.dcm", frames)
    assert imageio.count_slices(path) == 3
    assert [k for k, _ in imageio.iter_pixels(path)] == [0, 1, 2]
    assert imageio.read_pixels(path, 2)[4, 4] == 30  # 8-bit without window: as stored
    with pytest.raises(CorruptImageError, match="out of range"):
        imageio.read_pixels(path, 3)

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    out = imageio.read_pixels(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", 8, Modality="US"))
    np.testing.assert_array_equal(out, rgb)
    assert imageio.dicom_modality(tmp_path / "rgb.dcm") == "US"


def test_dicom_without_suffix_is_recognised_by_its_preamble(tmp_path: Path):
    write_dicom(tmp_path / "IM0001", np.eye(8, dtype=np.uint8) * 200)
    (tmp_path / "notes").write_text("not an image")
    assert imageio.image_kind(tmp_path / "IM0001") == "dicom"
    assert imageio.image_kind(tmp_path / "notes") is None
    assert imageio.read_pixels(tmp_path / "IM0001")[3, 3] == 200


# ------------------------------------------------------------------------------- failures


def test_truncated_and_fake_files_raise_corrupt_image_error_naming_the_file(tmp_path: Path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.jpg").write_text("hello")
    (tmp_path / "fake.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    for name in ("t.png", "fake.jpg", "fake.nii.gz", "fake.dcm"):
        with pytest.raises(CorruptImageError) as err:
            imageio.read_pixels(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name) + ": ")
        assert "\n" not in str(err.value)
        assert isinstance(err.value, UserError)


def test_missing_and_unsupported_files(tmp_path: Path):
    with pytest.raises(CorruptImageError, match="file not found"):
        imageio.read_pixels(tmp_path / "nope.png")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(CorruptImageError, match="not a supported image"):
        imageio.count_slices(tmp_path / "table.csv")


# ------------------------------------------------------------ real files shipped by packages


def test_real_pydicom_ct_and_mr(pydicom_file):
    ct = imageio.read_pixels(pydicom_file("CT_small.dcm"))
    assert ct.shape == (128, 128) and ct.dtype == np.uint8 and ct.std() > 20
    mr = imageio.read_pixels(pydicom_file("MR_small.dcm"))
    assert mr.shape == (64, 64) and mr.std() > 20
    # The same pixels in other encodings decode identically (why the corpus hashes pixels).
    for variant in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                    "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(imageio.read_pixels(pydicom_file(variant)), mr)


def test_real_pydicom_colour_palette_and_cine(pydicom_file):
    palette = imageio.read_pixels(pydicom_file("examples_palette.dcm"))
    assert palette.shape == (350, 800, 3)
    cine = pydicom_file("examples_ybr_color.dcm")
    assert imageio.count_slices(cine) == 30
    frame = imageio.read_pixels(cine, 29)
    assert frame.shape == (240, 320, 3) and frame.max() > 100


def test_real_pydicom_broken_files(pydicom_file):
    with pytest.raises(CorruptImageError, match="MR_truncated.dcm: cannot decode"):
        imageio.read_pixels(pydicom_file("MR_truncated.dcm"))
    with pytest.raises(CorruptImageError, match="no pixel data"):
        imageio.read_pixels(pydicom_file("rtplan.dcm"))
    # JPEG-LS decodes since the pylibjpeg pins (tests/test_dicom_codecs.py); a damaged JPEG names each decoder's reason
    with pytest.raises(CorruptImageError, match="JPEG-lossy.dcm: no installed decoder.*pylibjpeg"):
        imageio.read_pixels(pydicom_file("JPEG-lossy.dcm"))


def test_real_nibabel_volumes(nibabel_file):
    anat = nibabel_file("anatomical.nii")
    assert imageio.count_slices(anat) == 25
    assert imageio.read_pixels(anat, 12).shape == (41, 33)
    epi = nibabel_file("example4d.nii.gz")  # 128 x 96 x 24 x 2: first volume, 24 axial slices
    assert imageio.count_slices(epi) == 24
    middle = imageio.read_pixels(epi, 12)
    assert middle.shape == (96, 128) and middle.std() > 10
