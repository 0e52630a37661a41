"""DICOM transfer syntaxes that need pylibjpeg (JPEG Lossless Process 14, JPEG-LS) and the DICOM
objects that are not images (SEG, RT, SR...), which the corpus leaves out and counts.

References are pydicom's own: `ds.pixel_array` and `pydicom.pixels.apply_modality_lut` /
`apply_voi_lut`, with the window mapped to 0..255 by hand here (low = centre - width / 2,
high = centre + width / 2, or the 0.5 / 99.5 percentiles without a window; MONOCHROME1 inverted),
as harness/imageio.py documents - never by calling harness code. The first tests use the files of
the installed pydicom wheel (offline); the rest need tests/realdata.py (pydicom-data).
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from typer.testing import CliRunner

from medssl_bench.harness import imageio
from medssl_bench.harness.app.cli.corpus import corpus_app
from medssl_bench.harness.corpus import build_corpus
from medssl_bench.harness.dicom_objects import NonImageObject
from medssl_bench.harness.errors import CorruptImageError, UserError
from tests.conftest import write_dicom


def dcmread(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def syntax(path: Path) -> str:
    return dcmread(path).file_meta.TransferSyntaxUID.name


def hand_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.asarray(values, np.float64) - low) * 255.0 / (high - low)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def reference_frames(path: Path) -> list[np.ndarray]:
    """Every frame as harness/imageio.py documents it, from pydicom's pixels and LUT functions."""
    ds = dcmread(path)
    frames = ds.pixel_array if int(ds.get("NumberOfFrames") or 1) > 1 else ds.pixel_array[None]
    out = []
    for raw in frames:
        values = apply_modality_lut(raw, ds).astype(np.float64)
        if "WindowCenter" in ds:
            centre = float(np.atleast_1d(ds.WindowCenter)[0])
            width = float(np.atleast_1d(ds.WindowWidth)[0])
            gray = hand_window(values, centre - width / 2, centre + width / 2)
            # Cross-check with pydicom's own windowing (the standard's formula: centre - 0.5,
            # width - 1), mapped onto 0..255 by the output range it gives far outside the window.
            voi = apply_voi_lut(values, ds).astype(np.float64)
            ends = apply_voi_lut(np.array([centre - 10 * width, centre + 10 * width]), ds).astype(np.float64)
            pydicom_gray = np.rint((voi - ends[0]) * 255.0 / (ends[1] - ends[0]))
            assert np.abs(pydicom_gray - gray).max() <= 1, path.name
        else:
            gray = hand_window(values, *np.percentile(values, [0.5, 99.5]))
        out.append(255 - gray if ds.PhotometricInterpretation == "MONOCHROME1" else gray)
    return out


def assert_close(ours: np.ndarray, ref: np.ndarray, name: str) -> None:
    """Equal but for rounding: float32 (ours) against float64 (here) may differ by one level at
    an exact .5, never more, and on well under 1 % of the pixels."""
    assert ours.shape == ref.shape and ours.dtype == np.uint8, name
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (name, diff.max(), (diff == 0).mean())


# --------------------------------------------------------------- offline: the pydicom wheel


def test_jpeg_ls_and_jpeg_lossless_from_the_pydicom_wheel_equal_their_uncompressed_twins(pydicom_file):
    pairs = [("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "JPEG-LS Lossless"),
             ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "Process 14")]
    for compressed, twin, expected in pairs:
        path, twin_path = pydicom_file(compressed), pydicom_file(twin)
        assert expected in syntax(path)
        # the twin really holds the same stored pixels (pydicom's decoders, not ours)...
        np.testing.assert_array_equal(dcmread(path).pixel_array, dcmread(twin_path).pixel_array)
        # ...so our display pixels must be equal too
        np.testing.assert_array_equal(imageio.read_pixels(path), imageio.read_pixels(twin_path))
    assert_close(imageio.read_pixels(pydicom_file("MR_small_jpeg_ls_lossless.dcm")),
                 reference_frames(pydicom_file("MR_small_jpeg_ls_lossless.dcm"))[0], "MR_small")


def test_a_damaged_jpeg_names_each_decoders_reason(pydicom_file):
    # pydicom ships JPEG-lossy.dcm with a bad marker segment: no decoder reads it.
    with pytest.raises(CorruptImageError, match=r"JPEG-lossy.dcm: no installed decoder .*pylibjpeg: .*marker"):
        imageio.read_pixels(pydicom_file("JPEG-lossy.dcm"))


@pytest.mark.parametrize("name, label", [
    ("liver_1frame.dcm", "SEG"), ("rtstruct.dcm", "RTSTRUCT"), ("rtplan.dcm", "RTPLAN"),
    ("rtdose.dcm", "RTDOSE"), ("test-SR.dcm", "SR"), ("reportsi.dcm", "SR"),
    ("CT_small.dcm", None), ("MR_small.dcm", None), ("examples_ybr_color.dcm", None),
    ("JPEG2000.dcm", None), ("waveform_ecg.dcm", None),  # no table entry: judged at decode (below)
])
def test_non_image_objects_are_told_from_their_header(pydicom_file, name, label):
    assert imageio.dicom_non_image(pydicom_file(name)) == label


def test_a_pixel_less_object_is_a_non_image_but_a_pixel_less_image_is_broken(pydicom_file, tmp_path):
    with pytest.raises(NonImageObject, match="no pixel data .*ECG Waveform") as err:
        imageio.read_pixels(pydicom_file("waveform_ecg.dcm"))
    assert err.value.label == "ECG"  # its Modality
    ct = write_dicom(tmp_path / "ct.dcm", np.zeros((8, 8), np.uint16), Modality="CT",
                     SOPClassUID=pydicom.uid.CTImageStorage)
    ds = dcmread(ct)
    del ds.PixelData
    ds.save_as(ct)
    with pytest.raises(CorruptImageError, match="no pixel data .*CT Image Storage") as err:
        imageio.read_pixels(ct)
    assert not isinstance(err.value, NonImageObject)


def test_corpus_leaves_out_and_counts_non_image_objects(pydicom_file, workspace, tmp_path):
    only_ct = tmp_path / "only_ct" / "scans"
    only_ct.mkdir(parents=True)
    shutil.copy(pydicom_file("CT_small.dcm"), only_ct)
    mixed = tmp_path / "mixed" / "scans"
    shutil.copytree(only_ct, mixed)
    for name in ("liver_1frame.dcm", "rtstruct.dcm", "rtdose.dcm", "test-SR.dcm", "waveform_ecg.dcm"):
        shutil.copy(pydicom_file(name), mixed)
    broken = write_dicom(mixed / "broken.dcm", np.zeros((8, 8), np.uint16), SOPClassUID=pydicom.uid.CTImageStorage)
    ds = dcmread(broken)
    del ds.PixelData
    ds.save_as(broken)

    built = build_corpus([mixed.parent], workspace)
    assert built.info["non_image"] == {"ECG": 1, "RTDOSE": 1, "RTSTRUCT": 1, "SEG": 1, "SR": 1}
    assert sorted(Path(n["path"]).name for n in built.info["non_image_files"]) == [
        "liver_1frame.dcm", "rtdose.dcm", "rtstruct.dcm", "test-SR.dcm", "waveform_ecg.dcm"]
    assert [Path(u["path"]).name for u in built.info["unreadable"]] == ["broken.dcm"]
    assert [Path(e["path"]).name for e in built.entries] == ["CT_small.dcm"]
    # the id names the kept images only: the same as a corpus of the CT alone
    assert built.id == build_corpus([only_ct.parent], workspace).id

    result = CliRunner().invoke(corpus_app, ["build", "--root", str(mixed.parent), "--workspace", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert "5 non-image DICOM object(s) left out (ECG 1, RTDOSE 1, RTSTRUCT 1, SEG 1, SR 1)" in result.output
    shown = CliRunner().invoke(corpus_app, ["show", built.id, "--workspace", str(workspace.root)])
    assert "5 non-image DICOM object(s) left out" in shown.output


def test_a_root_of_only_non_image_objects_is_a_clear_error(pydicom_file, workspace, tmp_path):
    root = tmp_path / "rt"
    root.mkdir()
    for name in ("liver_1frame.dcm", "test-SR.dcm"):
        shutil.copy(pydicom_file(name), root)
    with pytest.raises(UserError, match=r"rt: no images to index: .*2 non-image DICOM object\(s\) left out") as err:
        build_corpus([root], workspace)
    assert str(err.value).endswith("(SEG 1, SR 1)")


# ------------------------------------------------------------ pydicom-data (tests/realdata.py)


@pytest.mark.slow  # a 62 MB download on the first run, then ~4 s
@pytest.mark.parametrize("name, expected", [
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "Process 14"),  # US, 8-bit, windowed
    ("JPEG-LL.dcm", "Process 14"),  # NM, signed 16-bit, no window
    ("bad_sequence.dcm", "Process 14"),  # CT, rescaled to HU, first of two windows
    ("emri_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless"),  # MR, 10 frames
    ("RG1_J2KR.dcm", "JPEG 2000"),  # CR chest, MONOCHROME1, 15-bit
])
def test_pylibjpeg_syntaxes_decode_like_pydicoms_reference(real_data_root, name, expected):
    path = real_data_root / "pydicom_data" / name
    assert expected in syntax(path)
    reference = reference_frames(path)
    assert imageio.count_slices(path) == len(reference)
    for index, ref in enumerate(reference):
        assert_close(imageio.read_pixels(path, index if len(reference) > 1 else None), ref, f"{name}[{index}]")


@pytest.mark.slow  # ~5 s: RG1 and RG3 are 2000 x 2000 CR images
@pytest.mark.parametrize("plain, other", [
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"), ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
    ("emri_small.dcm", "emri_small_RLE.dcm"), ("emri_small.dcm", "emri_small_big_endian.dcm"),
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm"), ("RG3_UNCR.dcm", "RG3_J2KR.dcm"), ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
    ("US1_UNCR.dcm", "US1_J2KR.dcm"), ("693_UNCR.dcm", "693_J2KR.dcm"), ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm"),
])
def test_one_scene_in_several_encodings_decodes_to_equal_pixels(real_data_root, plain, other):
    a, b = real_data_root / "pydicom_data" / plain, real_data_root / "pydicom_data" / other
    assert dcmread(a).file_meta.TransferSyntaxUID != dcmread(b).file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(dcmread(a).pixel_array, dcmread(b).pixel_array)  # pydicom agrees it is one scene
    assert imageio.count_slices(a) == imageio.count_slices(b)
    for index in range(imageio.count_slices(a)):
        np.testing.assert_array_equal(imageio.read_pixels(a, index), imageio.read_pixels(b, index))
