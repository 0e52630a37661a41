"""BCCD adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py): the
official ImageSets split, the 1-based inclusive coordinate convention, the release's box quirks
(border crossing, one-pixel boxes, difficult flags) and every rejected input (nothing written)."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets import bccd
from medssl_bench.downstream.datasets.canonical_det import load_detection_dataset
from medssl_bench.downstream.phantoms.det_bccd import smear_sample
from tests.dataset_helpers import Download, raises, refused

N, SIZE, SEED = 20, 96, 3
NAMES = ["WBC", "RBC", "Platelets"]
DOWNLOAD = Download(bccd, n=N, seed=SEED, size=SIZE, folder="bccd", part="BCCD")


def _voc(path: Path) -> list[tuple[str, list[int], int, int]]:
    """(name, [xmin, ymin, xmax, ymax], truncated, difficult) per object, read here without the adapter."""
    root = ET.parse(path).getroot()
    return [(o.find("name").text, [int(o.find(f"bndbox/{c}").text) for c in ("xmin", "ymin", "xmax", "ymax")],
             int(o.find("truncated").text), int(o.find("difficult").text)) for o in root.iter("object")]


def _stems(path: Path) -> set[str]:
    return set(path.read_text().split())


def test_round_trip_official_split_and_coordinates(raw, tmp_path):
    from pycocotools.coco import COCO

    ds = load_detection_dataset(bccd.prepare(raw, tmp_path / "out"))
    meta, main = ds.meta, raw / "BCCD" / "ImageSets" / "Main"
    assert ds.name == "bccd" and ds.classes == NAMES and meta["synthetic"] and meta["box_rows"] == {}
    assert meta["split"]["method"].startswith("official") and meta["split"]["seed"] is None
    for split in ("train", "val", "test"):
        assert {r["id"] for r in ds.split(split)} == _stems(main / f"{split}.txt")
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ds.annotation_file(split)))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == NAMES
        assert len(coco.getAnnIds()) == sum(len(_voc(raw / "BCCD" / "Annotations" / f"{s}.xml"))
                                            for s in _stems(main / f"{split}.txt"))
    assert _stems(main / "trainval.txt") == _stems(main / "train.txt") | _stems(main / "val.txt")
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [11, 5, 4]  # 20 * .56/.24/.2
    difficult = truncated = 0
    for row in ds.rows:
        objects = _voc(raw / "BCCD" / "Annotations" / f"{row['id']}.xml")
        # VOC 1-based inclusive -> pixel edges: x0 = xmin - 1, x1 = xmax
        assert row["boxes"] == [[x0 - 1, y0 - 1, x1, y1] for _, (x0, y0, x1, y1), _, _ in objects]
        assert row["labels"] == [NAMES.index(name) for name, *_ in objects]
        assert row["image"].read_bytes() == (raw / "BCCD" / "JPEGImages" / f"{row['id']}.jpg").read_bytes()
        assert (row["width"], row["height"]) == (SIZE, SIZE * 3 // 4)
        difficult += sum(d for *_, d in objects)
        truncated += sum(t for *_, t, _ in objects)
    assert meta["difficult_boxes"] == difficult > 0 and meta["truncated_boxes"] == truncated > 0
    inner = load_detection_dataset(bccd.prepare(raw / "BCCD", tmp_path / "inner"))  # the BCCD folder itself
    assert inner.meta["synthetic"] and [r["boxes"] for r in inner.rows] == [r["boxes"] for r in ds.rows]


def test_synthetic_layout_matches_the_generator(raw):
    root = raw / "BCCD"
    stems = sorted(p.stem for p in (root / "JPEGImages").iterdir())
    numbers = [int(s.split("_")[1]) for s in stems]
    assert len(stems) == N and stems == sorted(p.stem for p in (root / "Annotations").iterdir())
    assert max(numbers) - min(numbers) + 1 > N  # gaps in the ids, as in the release
    counts = dict.fromkeys(NAMES, 0)
    height, width = SIZE * 3 // 4, SIZE
    for stem, number in zip(stems, numbers):
        assert Image.open(root / "JPEGImages" / f"{stem}.jpg").size == (width, height)
        xml = ET.parse(root / "Annotations" / f"{stem}.xml").getroot()
        assert xml.findtext("filename") == f"{stem}.jpg"
        assert [int(xml.findtext(f"size/{k}")) for k in ("width", "height", "depth")] == [width, height, 3]
        objects = _voc(root / "Annotations" / f"{stem}.xml")
        truth = smear_sample([SEED, bccd._TAG, 1, number], width).objects
        assert objects == [(o.name, [o.xmin, o.ymin, o.xmax, o.ymax], o.truncated, o.difficult) for o in truth]
        for name, (x0, y0, x1, y1), cut, _ in objects:
            counts[name] += 1
            assert 1 <= x0 <= x1 <= width and 1 <= y0 <= y1 <= height  # clipped, as VOC writes them
            if cut:
                assert x0 == 1 or y0 == 1 or x1 == width or y1 == height
    assert counts["RBC"] > counts["WBC"] > 0 and counts["Platelets"] > 0


def test_classes_differ_in_size_and_colour():
    """What a small detector can learn: platelet << RBC < WBC, and purple (blue over green) nuclei
    and platelets against pink, pale-centred RBCs."""
    area, purple = {n: [] for n in NAMES}, {n: [] for n in NAMES}
    for k in range(24):
        smear = smear_sample([5, k], 96)
        img = smear.image.astype(float)
        for o in smear.objects:
            area[o.name].append((o.xmax - o.xmin + 1) * (o.ymax - o.ymin + 1))
            if not o.truncated:
                cy, cx = (o.ymin + o.ymax) // 2 - 1, (o.xmin + o.xmax) // 2 - 1
                centre = img[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
                purple[o.name].append(centre[2] - centre[1])
    median = {n: np.median(v) for n, v in area.items()}
    assert median["Platelets"] * 5 < median["RBC"] and median["RBC"] * 2.5 < median["WBC"]
    assert np.percentile(purple["RBC"], 95) < min(np.percentile(purple[n], 5) for n in ("WBC", "Platelets"))


def test_synthesize_refuses_tiny_requests(tmp_path):
    raises(lambda: bccd.synthesize(tmp_path / "small", n=5), "n=5 is too small")


def test_voc_to_pixels():
    assert bccd.voc_to_pixels((1, 1, 640, 480)) == (0, 0, 640, 480)
    assert bccd.voc_to_pixels((10, 20, 10, 30)) == (10, 20, 10, 30)  # one pixel wide: left degenerate


# ----------------------------------------------------------------------------- quirks and errors
def _first_xml(src: Path) -> Path:
    return sorted((src / "Annotations").iterdir())[0]


def _edit(path: Path, change) -> None:
    tree = ET.parse(path)
    change(tree.getroot())
    tree.write(path)


def _set_box(k: int, values) -> callable:
    def change(root):
        box = root.findall("object")[k].find("bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), values):
            box.find(tag).text = str(value)
    return change


def test_border_and_degenerate_boxes_are_counted(src, tmp_path):
    xml = _first_xml(src)
    width = SIZE
    _edit(xml, _set_box(0, (0, 5, width + 7, 20)))  # crosses left and right border
    _edit(xml, _set_box(1, (30, 30, 30, 30)))  # one pixel, like BloodImage_00338
    _edit(xml, lambda root: setattr(root.findall("object")[2].find("difficult"), "text", "1"))
    objects = _voc(xml)
    ds = load_detection_dataset(bccd.prepare(src, tmp_path / "out"))
    row = next(r for r in ds.rows if r["id"] == xml.stem)
    kept = [o for k, o in enumerate(objects) if k != 1]
    assert row["boxes"][0] == [0, 4, width, 20]
    assert row["boxes"][1:] == [[x0 - 1, y0 - 1, x1, y1] for _, (x0, y0, x1, y1), _, _ in kept[1:]]
    assert row["labels"] == [NAMES.index(o[0]) for o in kept]
    rows = ds.meta["box_rows"]
    assert {k: v["count"] for k, v in rows.items()} == {"box crosses the image border (clipped to it)": 1,
                                                        "degenerate box: x_max <= x_min or y_max <= y_min (dropped)": 1}
    examples = [e for v in rows.values() for e in v["examples"]]
    assert sorted(examples) == [f"{xml.name} object 1", f"{xml.name} object 2"]
    assert len(ds.meta["warnings"]) == 2 and ds.meta["difficult_boxes"] >= 1


def test_bad_annotations_reject_the_xml(src, tmp_path):
    xml = _first_xml(src)
    good = xml.read_bytes()
    _edit(xml, lambda root: setattr(root.findall("object")[1].find("name"), "text", "Neutrophil"))
    refused(bccd, src, tmp_path / "out", str(xml), "object 2", "unknown class 'Neutrophil'")
    xml.write_bytes(good[:-40])
    refused(bccd, src, tmp_path / "out", str(xml), "malformed XML")
    xml.write_bytes(good)
    _edit(xml, _set_box(0, ("12", "abc", "40", "40")))
    refused(bccd, src, tmp_path / "out", str(xml), "object 1 <ymin>")
    xml.write_bytes(good)
    _edit(xml, lambda root: setattr(root.find("size/width"), "text", "640"))
    refused(bccd, src, tmp_path / "out", str(xml), f"<size> says 640x{SIZE * 3 // 4}", f"is {SIZE}x{SIZE * 3 // 4}")
    xml.write_bytes(good)
    _edit(xml, lambda root: root.remove(root.find("size")))
    ds = load_detection_dataset(bccd.prepare(src, tmp_path / "ok"))
    assert ds.meta["size_unchecked"] == 1


def test_unpaired_files_and_bad_images(src, tmp_path):
    xml = _first_xml(src)
    image = src / "JPEGImages" / f"{xml.stem}.jpg"
    moved = image.rename(tmp_path / image.name)
    refused(bccd, src, tmp_path / "out", str(xml), "annotation without image")
    moved.rename(image)
    xml.rename(tmp_path / xml.name)
    refused(bccd, src, tmp_path / "out", str(image), "image without annotation")
    (tmp_path / xml.name).rename(xml)
    image.write_bytes(b"garbage")
    refused(bccd, src, tmp_path / "out", image.name)


def test_image_sets_errors(src, tmp_path):
    main = src / "ImageSets" / "Main"
    val = main / "val.txt"
    lines = val.read_text().splitlines()
    val.write_text("\n".join(lines[:2] + ["BloodImage_99999"] + lines[2:]) + "\n")
    refused(bccd, src, tmp_path / "out", str(val), "line 3", "BloodImage_99999")
    test_first = _stems(main / "test.txt").pop()
    val.write_text("\n".join(lines + [test_first]) + "\n")  # also in test.txt
    refused(bccd, src, tmp_path / "out", f"line {len(lines) + 1}", test_first, "already listed")
    val.write_text("\n".join(lines + [f"{lines[0]} 1"]) + "\n")
    refused(bccd, src, tmp_path / "out", str(val), f"line {len(lines) + 1}", "one image id")
    val.unlink()
    refused(bccd, src, tmp_path / "out", str(val), "no val.txt")


def test_unlisted_images_and_trainval_mismatch_warn(src, tmp_path):
    main = src / "ImageSets" / "Main"
    test_lines = (main / "test.txt").read_text().splitlines()
    (main / "test.txt").write_text("\n".join(test_lines[1:]) + "\n")
    (main / "trainval.txt").write_text("\n".join(sorted(_stems(main / "train.txt"))) + "\n")
    ds = load_detection_dataset(bccd.prepare(src, tmp_path / "out"))
    assert len(ds.rows) == N - 1 and ds.meta["unlisted_images"] == 1
    assert test_lines[0] not in {r["id"] for r in ds.rows}
    warnings = " ".join(ds.meta["warnings"])
    assert "left out" in warnings and test_lines[0] in warnings and "trainval.txt differs" in warnings


def test_without_image_sets_a_seeded_split(src, tmp_path):
    shutil.rmtree(src / "ImageSets")
    ds = load_detection_dataset(bccd.prepare(src, tmp_path / "a"))
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [14, 2, 4]  # 70/10/20
    assert ds.meta["split"]["seed"] == 42 and "70%/10%/20%" in ds.meta["split"]["method"]
    assert any("ImageSets" in w for w in ds.meta["warnings"])
    again = load_detection_dataset(bccd.prepare(src, tmp_path / "b"))
    other = load_detection_dataset(bccd.prepare(src, tmp_path / "c", seed=7))
    assert [(r["id"], r["split"]) for r in again.rows] == [(r["id"], r["split"]) for r in ds.rows]
    assert {r["id"] for r in other.split("test")} != {r["id"] for r in ds.split("test")}
    written = json.loads((tmp_path / "a" / "bccd" / "dataset.json").read_text())
    assert written["content_hash"] == again.meta["content_hash"] and written["synthetic"] is False


def test_missing_folders_and_strays(src, tmp_path):
    (src / "JPEGImages" / ".DS_Store").write_bytes(b"\0")
    (src / "Annotations" / "README.md").write_text("notes\n")
    ds = load_detection_dataset(bccd.prepare(src.parent, tmp_path / "ok"))  # the parent folder
    assert ds.meta["ignored_files"] == {"JPEGImages": 1, "Annotations": 1} and len(ds.rows) == N
    refused(bccd, tmp_path / "nope", tmp_path / "out", "does not exist")
    shutil.rmtree(src / "Annotations")
    refused(bccd, src, tmp_path / "out", "missing folder Annotations/", str(src / "Annotations"))
