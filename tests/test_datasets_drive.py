"""DRIVE adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py): the raw
layout, official 20/20 split and the no-test-labels fallback, FOV mask validation, thin vessels,
and the errors that name the offending file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from medssl_bench.downstream.datasets import drive
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from tests.dataset_helpers import Download, raises as _raises

N, SIZE = 40, 48  # the real 20/20 layout at a small size
WIDTH = round(SIZE * 565 / 584)
DOWNLOAD = Download(drive, n=N, seed=2, size=SIZE)


def _gif(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return (np.asarray(im.convert("L")) > 127).astype(np.uint8)


def test_raw_layout(raw):
    root = raw / "DRIVE"
    train = sorted(p.name for p in (root / "training" / "images").iterdir())
    test = sorted(p.name for p in (root / "test" / "images").iterdir())
    assert train == [f"{k}_training.tif" for k in range(21, 41)]
    assert test == [f"{k:02d}_test.tif" for k in range(1, 21)]
    with Image.open(root / "training" / "images" / "21_training.tif") as im:
        assert (im.format, im.mode, im.size) == ("TIFF", "RGB", (WIDTH, SIZE))  # non-square, like 565x584
    for name in ("training/1st_manual/21_manual1.gif", "training/mask/21_training_mask.gif",
                 "test/1st_manual/01_manual1.gif", "test/2nd_manual/01_manual2.gif", "test/mask/01_test_mask.gif"):
        assert (root / name).is_file(), name
    assert {Image.open(g).mode for g in root.rglob("*.gif")} == {"P", "L"}  # both GIF flavours


def test_vessels_are_thin_and_many(tmp_path):
    src = drive.synthesize(tmp_path / "big", n=8, seed=0, size=96)
    for gif in sorted(src.glob("DRIVE/*/1st_manual/*.gif")):
        vessels = _gif(gif)
        fov = _gif(next(src.glob(f"DRIVE/*/mask/{gif.name.split('_')[0]}_*_mask.gif")))
        assert not (vessels & (1 - fov)).any()  # annotations stay inside the field of view
        assert 0.04 < vessels.sum() / fov.sum() < 0.25
        core = cv2.erode(vessels, np.ones((3, 3), np.uint8))  # what survives is wider than 2 px
        assert core.sum() < 0.25 * vessels.sum(), gif.name
        assert vessels.sum() > 500  # many branches: ~1,000 vessel pixels in a 93x96 image


def test_official_split_round_trip(raw, tmp_path):
    ds = load_segmentation_dataset(drive.prepare(raw, tmp_path / "out", seed=7))
    assert (ds.name, ds.kind, ds.classes, ds.target_classes) == ("drive", "2d", ["background", "vessel"], [1])
    assert ds.meta["synthetic"] is True and ds.meta["source"]["test_labels"] is True
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {"train": 16, "val": 4, "test": 20}
    assert all(s.id.endswith("_test") for s in ds.split("test"))
    assert ds.meta["warnings"] == []
    assert ds.meta["fov_masks"]["21_training"] == "training/mask/21_training_mask.gif"
    assert len(ds.meta["fov_masks"]) == N
    sample = next(s for s in ds.samples if s.id == "05_test")
    mask = np.asarray(Image.open(sample.mask))
    assert np.array_equal(mask, _gif(raw / "DRIVE" / "test" / "1st_manual" / "05_manual1.gif"))
    image = np.asarray(Image.open(sample.image))
    original = np.asarray(Image.open(raw / "DRIVE" / "test" / "images" / "05_test.tif"))
    assert image.shape == (SIZE, WIDTH, 3) and np.array_equal(image, original)
    # vessels are darker than the background inside the FOV (green channel, as in real fundus images)
    fov = _gif(raw / "DRIVE" / "test" / "mask" / "05_test_mask.gif").astype(bool)
    assert image[..., 1][mask.astype(bool)].mean() < image[..., 1][fov & (mask == 0)].mean()


def test_without_test_labels(src, tmp_path):
    shutil.rmtree(src / "DRIVE" / "test" / "1st_manual")
    shutil.rmtree(src / "DRIVE" / "test" / "2nd_manual")
    ds = load_segmentation_dataset(drive.prepare(src / "DRIVE", tmp_path / "out", seed=7))
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {"train": 12, "val": 4, "test": 4}
    assert all(s.id.endswith("_training") for s in ds.samples)
    assert ds.meta["unlabelled_test_images"] == 20 and "no test labels" in ds.meta["warnings"][0]
    assert ds.meta["source"]["test_labels"] is False


def test_split_sizes_do_not_depend_on_the_seed(raw, tmp_path):
    metas = [json.loads((drive.prepare(raw, tmp_path / str(seed), seed=seed) / "dataset.json").read_text())
             for seed in (1, 2)]
    assert metas[0]["split"]["counts"] == metas[1]["split"]["counts"]  # sizes fixed, members seeded


def test_missing_annotation_and_fov(src, tmp_path):
    train = src / "DRIVE" / "training"
    (train / "1st_manual" / "23_manual1.gif").rename(tmp_path / "kept.gif")
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "23_training.tif", "no vessel annotation")
    (tmp_path / "kept.gif").rename(train / "1st_manual" / "23_manual1.gif")
    (train / "mask" / "24_training_mask.gif").unlink()
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "24_training_mask.gif", "field-of-view mask")
    shutil.rmtree(train / "mask")
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "training/mask", "folder is missing")


def test_annotation_without_image(src, tmp_path):
    (src / "DRIVE" / "test" / "images" / "07_test.tif").unlink()
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "07_manual1.gif", "has no image")


def test_size_mismatches(src, tmp_path):
    fov = src / "DRIVE" / "training" / "mask" / "30_training_mask.gif"
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(fov, format="GIF")
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "30_training_mask.gif", "field-of-view mask is")
    Image.fromarray(np.full((SIZE, WIDTH), 255, np.uint8)).save(fov, format="GIF")
    manual = src / "DRIVE" / "test" / "1st_manual" / "02_manual1.gif"
    Image.fromarray(np.zeros((SIZE + 1, WIDTH), np.uint8)).save(manual, format="GIF")
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "02_manual1.gif", "vessel annotation is")
    assert not (tmp_path / "out" / "drive").exists()


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_image_and_missing_root(src, tmp_path):
    tif = src / "DRIVE" / "training" / "images" / "33_training.tif"
    tif.write_bytes(tif.read_bytes()[:2000])  # a valid header, truncated pixel data
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "33_training.tif", "truncated")
    tif.write_bytes(b"II*\0garbage")
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "33_training.tif", "unreadable image")
    shutil.rmtree(src / "DRIVE" / "training")
    _raises(lambda: drive.prepare(src, tmp_path / "out"), "has test/ but no training/")
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(lambda: drive.prepare(empty, tmp_path / "out"), str(empty), "no DRIVE training/ folder")
