"""Kvasir-SEG adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py): JPEG
masks and their threshold, kavsir_bboxes.json and its boxes, the seeded 64/16/20 split, input errors."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medssl_bench.downstream.datasets import kvasir_seg
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from medssl_bench.downstream.phantoms.seg_kvasir import kvasir_sample, polyp_boxes
from medssl_bench.harness.errors import UserError
from tests.dataset_helpers import Download, refused

N, SIZE, SEED = 20, 40, 4
DOWNLOAD = Download(kvasir_seg, n=N, seed=SEED, size=SIZE, folder="kvasir", part="Kvasir-SEG")


def _boxes(root: Path) -> dict:
    return json.loads((root / "Kvasir-SEG" / kvasir_seg.BOX_JSON).read_text())


def _intended(index: int):
    """Re-run the generator for image `index` exactly as synthesize does."""
    shape = np.random.default_rng([SEED, kvasir_seg._TAG, 1, index]).integers(SIZE, int(SIZE * 1.5) + 1, 2)
    height, width = int(shape[0]), int(shape[1]) + int(shape[0] == shape[1])
    return kvasir_sample([SEED, kvasir_seg._TAG, 2, index], height, width)


def test_round_trip_and_seeded_split(raw, tmp_path):
    ds = load_segmentation_dataset(kvasir_seg.prepare(raw, tmp_path / "out"))
    meta = ds.meta
    assert ds.name == "kvasir_seg" and ds.kind == "2d" and ds.classes == ["background", "polyp"]
    assert ds.target_classes == [1] and meta["synthetic"] and meta["box_json"] == kvasir_seg.BOX_JSON
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [13, 3, 4]  # 20 * .64/.16/.2
    assert meta["split"]["seed"] == 42 and "64%/16%/20%" in meta["split"]["method"]
    assert meta["ambiguous_mask_pixels"] > 0  # grey JPEG borders: the threshold matters
    images = raw / "Kvasir-SEG" / "images"
    assert sorted(s.id for s in ds.samples) == sorted(p.stem for p in images.iterdir())
    for s in ds.samples:
        assert s.image.read_bytes() == (images / f"{s.id}.jpg").read_bytes()
        raw_mask = np.asarray(Image.open(raw / "Kvasir-SEG" / "masks" / f"{s.id}.jpg"))
        assert raw_mask.ndim == 3 and raw_mask.shape[2] == 3  # 3-channel JPEG, like the release
        gray = np.asarray(Image.open(raw / "Kvasir-SEG" / "masks" / f"{s.id}.jpg").convert("L"))
        assert len(np.unique(gray)) > 2  # compression noise
        np.testing.assert_array_equal(np.asarray(Image.open(s.mask)), (gray >= 128).astype(np.uint8))
    other = load_segmentation_dataset(kvasir_seg.prepare(raw, tmp_path / "other", seed=1))
    assert {s.id for s in other.split("test")} != {s.id for s in ds.split("test")}


def test_masks_are_what_the_generator_drew(raw, tmp_path):
    ds = load_segmentation_dataset(kvasir_seg.prepare(raw, tmp_path / "out"))
    by_id = {s.id: s for s in ds.samples}
    for index, key in enumerate(list(_boxes(raw))[:6]):  # json keys are in generation order
        frame = _intended(index)
        mask = np.asarray(Image.open(by_id[key].mask))
        assert mask.shape == frame.mask.shape and frame.mask.any()
        assert (mask == frame.mask).mean() > 0.99  # JPEG noise may flip a few border pixels only


def test_box_json_schema_and_boxes(raw):
    boxes = _boxes(raw)
    assert len(boxes) == N
    counts = []
    for index, (key, entry) in enumerate(boxes.items()):
        assert re.fullmatch(r"[0-9a-z]{25}", key)
        assert set(entry) == {"height", "width", "bbox"}
        width, height = Image.open(raw / "Kvasir-SEG" / "images" / f"{key}.jpg").size
        assert (entry["height"], entry["width"]) == (height, width)
        frame = _intended(index)
        labels, count = ndimage.label(frame.mask, structure=np.ones((3, 3)))
        assert entry["bbox"] == polyp_boxes(frame.mask) and len(entry["bbox"]) == count
        counts.append(count)
        covered = np.zeros_like(frame.mask)
        for box in entry["bbox"]:
            assert set(box) == {"label", "xmin", "ymin", "xmax", "ymax"} and box["label"] == "polyp"
            assert all(type(box[k]) is int for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 0 <= box["xmin"] < box["xmax"] <= width and 0 <= box["ymin"] < box["ymax"] <= height
            inside = frame.mask[box["ymin"]:box["ymax"], box["xmin"]:box["xmax"]]
            # tight: the component touches all four sides of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[box["ymin"]:box["ymax"], box["xmin"]:box["xmax"]] = 1
        assert not (frame.mask & (1 - covered)).any()  # every polyp pixel is inside a box
    assert 1 <= min(counts) and max(counts) <= 3
    assert kvasir_seg.read_bboxes(raw / "Kvasir-SEG" / kvasir_seg.BOX_JSON) == boxes


def test_polyp_boxes_pixel_edge_convention():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 1
    mask[8, 11] = 1  # a one-pixel component in the corner
    assert polyp_boxes(mask) == [{"label": "polyp", "xmin": 3, "ymin": 2, "xmax": 7, "ymax": 5},
                                 {"label": "polyp", "xmin": 11, "ymin": 8, "xmax": 12, "ymax": 9}]


def test_box_json_absent_or_broken(src, tmp_path):
    json_path = src / kvasir_seg.BOX_JSON
    good = json_path.read_text()
    json_path.unlink()
    ds = load_segmentation_dataset(kvasir_seg.prepare(src, tmp_path / "a"))
    assert len(ds.samples) == N and ds.meta["box_json"] is None and ds.meta["warnings"] == []
    json_path.write_text("{not json")
    ds = load_segmentation_dataset(kvasir_seg.prepare(src, tmp_path / "b"))
    assert len(ds.samples) == N and "ignored" in ds.meta["warnings"][0]
    data = json.loads(good)
    key = next(iter(data))
    data[key]["bbox"][0]["xmax"] = data[key]["width"] + 5
    json_path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=re.escape(str(json_path)) + ".*outside"):
        kvasir_seg.read_bboxes(json_path)


def test_other_seed_other_ids(raw, tmp_path):
    other = kvasir_seg.synthesize(tmp_path / "other", n=N, seed=SEED + 1, size=SIZE)
    assert set(_boxes(other)).isdisjoint(_boxes(raw))


# ----------------------------------------------------------------------------- errors
def _first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def test_image_without_mask_and_mask_without_image(src, tmp_path):
    mask = _first(src / "masks")
    moved = mask.rename(tmp_path / mask.name)
    refused(kvasir_seg, src, tmp_path / "out", "image without mask", str(src / "images" / mask.name))
    moved.rename(mask)
    (src / "images" / mask.name).unlink()
    refused(kvasir_seg, src, tmp_path / "out", "mask without image", str(mask))


def test_bad_masks_and_images(src, tmp_path):
    mask = _first(src / "masks")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(mask, format="JPEG")
    refused(kvasir_seg, src, tmp_path / "out", str(mask), "mask is 12x10")
    mask.write_bytes(b"garbage")
    refused(kvasir_seg, src, tmp_path / "out", str(mask), "unreadable mask")
    image = _first(src / "images")
    image.write_bytes(b"garbage")
    refused(kvasir_seg, src, tmp_path / "out", image.name)


def test_missing_folders_and_strays(src, tmp_path):
    (src / "images" / ".DS_Store").write_bytes(b"\0")
    (src / "masks" / "Thumbs.db").write_bytes(b"\0")
    ds = load_segmentation_dataset(kvasir_seg.prepare(src.parent, tmp_path / "ok"))  # parent folder given
    assert ds.meta["ignored_files"] == {"images": 1, "masks": 1}
    refused(kvasir_seg, tmp_path / "nope", tmp_path / "out", "does not exist")
    shutil.rmtree(src / "masks")
    refused(kvasir_seg, src, tmp_path / "out", "missing folder masks/", str(src / "masks"))
    (src / "masks").mkdir()
    for p in (src / "images").iterdir():
        p.unlink()
    refused(kvasir_seg, src, tmp_path / "out", "no images", str(src / "images"))
