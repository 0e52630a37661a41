"""Real images from PyPI wheels (tests/realdata.py) through the corpus and the decoders, checked
against the packages' own readers: nibabel for the MNI152 template, Pillow for the 2D files.

What pydicom-data holds (68 files; 2 DICOM-SEG masks; 1 truncated JPEG 2000 file) is measured in
docs/datasets.md; these tests pin those facts.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssl_bench.harness import imageio
from medssl_bench.harness.corpus import build_corpus, load_corpus

TRUNCATED = "emri_small_jpeg_2k_lossless_too_short.dcm"
SEGMENTATIONS = ["liver.dcm", "liver_expb.dcm"]


def hand_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.asarray(values, np.float64) - low) * 255.0 / (high - low)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def assert_close(ours: np.ndarray, ref: np.ndarray, name: str) -> None:
    """Equal but for float32 (ours) against float64 (here) rounding: one level, rarely."""
    assert ours.shape == ref.shape and ours.dtype == np.uint8, (name, ours.shape, ref.shape)
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (name, diff.max(), (diff == 0).mean())


@pytest.mark.slow  # ~8 s: decodes every file of the root (68 DICOM, 189 MR slices, 4 photos)
def test_corpus_over_the_real_data_root(real_data_root, workspace):
    built = build_corpus([real_data_root], workspace)
    info = built.info
    assert info["non_image"] == {"SEG": 2}
    assert sorted(Path(n["path"]).name for n in info["non_image_files"]) == SEGMENTATIONS
    assert [Path(u["path"]).name for u in info["unreadable"]] == [TRUNCATED]
    assert "truncated" in info["unreadable"][0]["reason"]

    # Every other DICOM file decoded: it is in the manifest or dropped as a duplicate of one that is.
    dicoms = {p.name for p in (real_data_root / "pydicom_data").glob("*.dcm")}
    assert len(dicoms) == 68
    seen = {Path(e["path"]).name for e in built.entries} | {Path(d["path"]).name for d in info["duplicates"]}
    assert seen & dicoms == dicoms - {TRUNCATED, *SEGMENTATIONS}

    # The JPEG-LS and JPEG 2000 copies of emri_small are the same frames: dropped as duplicates.
    same = {(Path(d["path"]).name, d["slice"]): Path(d["same_as"]).name for d in info["duplicates"]}
    for copy in ("emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm"):
        assert all(same[copy, frame] == "emri_small.dcm" for frame in range(10))

    rows = info["datasets"]
    assert rows["mni152"]["modality"] == "mr"
    assert rows["mni152"]["images"] + rows["mni152"]["duplicates"] == 189  # axial slices (empty ones repeat)
    assert {name: rows[name]["images"] for name in ("skimage_fundus", "skimage_ihc", "stardist_nuclei")} == {
        "skimage_fundus": 2, "skimage_ihc": 1, "stardist_nuclei": 1}
    assert set(rows["pydicom_data"]["modality"].split(",")) >= {"ct", "mr", "nm", "us", "xray"}
    assert info["synthetic"] is False and not any(row["synthetic"] for row in rows.values())

    written = json.loads((built.dir / "corpus.json").read_text())
    assert written["non_image"] == {"SEG": 2} and load_corpus(built.dir).id == built.id


@pytest.mark.slow  # ~3 s
def test_mni152_slices_equal_nibabels_reference(real_data_root):
    (path,) = (real_data_root / "mni152").glob("*.nii.gz")
    # nibabel's own reading, windowed as harness/imageio.py documents: canonical (RAS+) orientation,
    # the 0.5 / 99.5 percentiles of the whole volume, axial slices rotated anterior-up.
    volume = nib.as_closest_canonical(nib.load(path)).get_fdata()
    assert volume.shape == (197, 233, 189)
    windowed = hand_window(volume, *np.percentile(volume, [0.5, 99.5]))
    slices = list(imageio.iter_pixels(path))
    assert [index for index, _ in slices] == list(range(189))
    for index, pixels in slices:
        assert_close(pixels, np.rot90(windowed[:, :, index]), f"slice {index}")
    middle = slices[94][1]
    assert middle.shape == (233, 197) and middle.std() > 30  # a brain, not a blank


@pytest.mark.slow  # fast, but the first run downloads (make test-fast stays offline)
def test_real_photos_and_microscopy_decode_like_pillow(real_data_root):
    retina = real_data_root / "skimage_fundus" / "retina.jpg"
    np.testing.assert_array_equal(imageio.read_pixels(retina), np.asarray(Image.open(retina).convert("RGB")))
    assert imageio.read_pixels(retina).shape == (1411, 1411, 3)
    ihc = imageio.read_pixels(real_data_root / "skimage_ihc" / "ihc.png")
    assert ihc.shape == (512, 512, 3) and ihc.dtype == np.uint8
    # 16-bit fluorescence: windowed from its percentiles
    nuclei = real_data_root / "stardist_nuclei" / "img2d.tif"
    raw = np.asarray(Image.open(nuclei))
    assert raw.dtype == np.uint16 and raw.shape == (512, 512)
    assert_close(imageio.read_pixels(nuclei), hand_window(raw, *np.percentile(raw, [0.5, 99.5])), "img2d")
