"""Kvasir polyp detection adapter quirks (the contract every adapter meets:
tests/test_dataset_contract.py): boxes equal kavsir_bboxes.json's, the split is kvasir_seg's, box
rows clipped / dropped with a count, and every rejected input (nothing written)."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path


from medssl_bench.downstream.datasets import kvasir_det, kvasir_seg
from medssl_bench.downstream.datasets.canonical_det import load_detection_dataset
from medssl_bench.downstream.datasets.canonical_seg import load_segmentation_dataset
from tests.dataset_helpers import Download, refused

N, SIZE, SEED = 20, 40, 6
BOX_JSON = kvasir_seg.BOX_JSON
DOWNLOAD = Download(kvasir_det, n=N, seed=SEED, size=SIZE, folder="kvasir", part="Kvasir-SEG")


def _json(root: Path) -> dict:
    return json.loads((root / BOX_JSON).read_text())


def _change(root: Path, change) -> tuple[str, dict]:
    """Apply change(entry) to the first entry of the box file; returns (id, the entry before)."""
    data = _json(root)
    key = next(iter(data))
    before = json.loads(json.dumps(data[key]))
    change(data[key])
    (root / BOX_JSON).write_text(json.dumps(data))
    return key, before


def test_round_trip_boxes_and_split(raw, tmp_path):
    from pycocotools.coco import COCO

    ds = load_detection_dataset(kvasir_det.prepare(raw, tmp_path / "out"))
    boxes = _json(raw / "Kvasir-SEG")
    assert ds.name == "kvasir_det" and ds.classes == ["polyp"] and ds.meta["synthetic"]
    assert ds.meta["box_json"] == BOX_JSON and ds.meta["box_rows"] == {} and ds.meta["warnings"] == []
    assert ds.meta["images_without_boxes"] == 0 and len(ds.rows) == N
    for row in ds.rows:
        entry = boxes[row["id"]]
        # the JSON's xmax/ymax are exclusive (pixel edges): the same numbers as COCO x + w
        assert row["boxes"] == [[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in entry["bbox"]]
        assert row["labels"] == [0] * len(entry["bbox"])
        assert (row["height"], row["width"]) == (entry["height"], entry["width"])
        assert row["image"].read_bytes() == (raw / "Kvasir-SEG" / "images" / f"{row['id']}.jpg").read_bytes()
    for split in ("train", "val", "test"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ds.annotation_file(split)))
        expected = sum(len(boxes[r["id"]]["bbox"]) for r in ds.split(split))
        assert len(coco.getAnnIds()) == expected and coco.loadCats(coco.getCatIds())[0]["name"] == "polyp"
    seg = load_segmentation_dataset(kvasir_seg.prepare(raw, tmp_path / "seg"))
    for split in ("train", "val", "test"):  # segmentation and detection test the same images
        assert {r["id"] for r in ds.split(split)} == {s.id for s in seg.split(split)}
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [13, 3, 4]
    other = load_detection_dataset(kvasir_det.prepare(raw, tmp_path / "other", seed=1))
    assert {r["id"] for r in other.split("test")} != {r["id"] for r in ds.split("test")}


def test_image_without_entry_is_a_negative(src, tmp_path):
    key, _ = next(iter(_json(src).items()))
    data = _json(src)
    del data[key]
    (src / BOX_JSON).write_text(json.dumps(data))
    ds = load_detection_dataset(kvasir_det.prepare(src, tmp_path / "out"))
    row = next(r for r in ds.rows if r["id"] == key)
    assert row["boxes"] == [] and ds.meta["images_without_boxes"] == 1
    assert sum(c["negatives"] for c in ds.meta["split"]["counts"].values()) == 1


def test_box_crossing_the_border_is_clipped_and_counted(src, tmp_path):
    key, before = _change(src, lambda e: e["bbox"][0].update(xmax=e["width"] + 9, ymin=-3))
    ds = load_detection_dataset(kvasir_det.prepare(src, tmp_path / "out"))
    row = next(r for r in ds.rows if r["id"] == key)
    first = before["bbox"][0]
    assert row["boxes"][0] == [first["xmin"], 0, before["width"], first["ymax"]]
    rows = ds.meta["box_rows"]
    assert list(rows) == ["box crosses the image border (clipped to it)"]
    assert rows["box crosses the image border (clipped to it)"] == {"count": 1, "examples": [f"{BOX_JSON} {key} box 1"]}
    assert any(key in w and "clipped" in w for w in ds.meta["warnings"])


def test_degenerate_box_is_dropped_and_counted(src, tmp_path):
    def change(entry):
        entry["bbox"].append(dict(entry["bbox"][0], xmax=entry["bbox"][0]["xmin"]))
    key, before = _change(src, change)
    ds = load_detection_dataset(kvasir_det.prepare(src, tmp_path / "out"))
    row = next(r for r in ds.rows if r["id"] == key)
    assert row["boxes"] == [[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in before["bbox"]]
    degenerate = "degenerate box: x_max <= x_min or y_max <= y_min (dropped)"
    n = len(before["bbox"]) + 1
    assert ds.meta["box_rows"] == {degenerate: {"count": 1, "examples": [f"{BOX_JSON} {key} box {n}"]}}


def test_rejected_box_files(src, tmp_path):
    good = (src / BOX_JSON).read_text()
    key, before = _change(src, lambda e: e.update(height=e["height"] + 1))
    refused(kvasir_det, src, tmp_path / "out", str(src / BOX_JSON), repr(key),
            f"is {before['width']}x{before['height']}")
    (src / BOX_JSON).write_text(good)
    key, _ = _change(src, lambda e: e["bbox"][0].update(label="adenoma"))
    refused(kvasir_det, src, tmp_path / "out", str(src / BOX_JSON), repr(key), "unknown class 'adenoma'")
    (src / BOX_JSON).write_text(good)
    key, _ = _change(src, lambda e: e["bbox"][0].update(xmax="12"))
    refused(kvasir_det, src, tmp_path / "out", str(src / BOX_JSON), repr(key), "lacks numeric xmin/ymin/xmax/ymax")
    (src / BOX_JSON).write_text(good[: len(good) // 2])
    refused(kvasir_det, src, tmp_path / "out", str(src / BOX_JSON), "unreadable")
    (src / BOX_JSON).unlink()
    refused(kvasir_det, src, tmp_path / "out", BOX_JSON, "no kavsir_bboxes.json")


def test_entry_whose_image_is_missing(src, tmp_path):
    key = next(iter(_json(src)))
    (src / "images" / f"{key}.jpg").rename(tmp_path / f"{key}.jpg")
    refused(kvasir_det, src, tmp_path / "out", str(src / BOX_JSON), repr(key), "missing")


def test_missing_folders_and_bad_images(src, tmp_path):
    refused(kvasir_det, tmp_path / "nope", tmp_path / "out", "does not exist")
    image = sorted((src / "images").iterdir())[0]
    image.write_bytes(b"garbage")
    refused(kvasir_det, src, tmp_path / "out", image.name)
    shutil.rmtree(src / "images")
    refused(kvasir_det, src, tmp_path / "out", "no Kvasir-SEG images/ folder")
