"""VinDr-CXR adapter quirks (the contract every adapter meets: tests/test_dataset_contract.py): the
DICOM and 512-PNG downloads, DICOM display (MONOCHROME1 inverted, window), Weighted Boxes Fusion of
the three readers, kept "No finding" negatives, LVM-Med's csv-order split, the PhysioNet csv, bad input."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from medssl_bench.downstream.datasets import vindr_cxr
from medssl_bench.downstream.datasets.canonical_det import load_detection_dataset
from medssl_bench.downstream.phantoms import det_vindr
from tests.dataset_helpers import Download, raises

N, SIZE, SEED = 32, 96, 5
DOWNLOAD = Download(vindr_cxr, n=N, seed=SEED, size=SIZE, folder="dicom")


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    return load_detection_dataset(vindr_cxr.prepare(raw, tmp_path_factory.mktemp("out")))


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _write(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([header, *rows])


def _mean_boxes(header, rows, scale=None) -> dict:
    """{(image_id, class_id): mean of its readers' boxes}: each synthetic image shows at most one
    finding per class, so this is what the fusion must give (computed without the adapter)."""
    col = {c: header.index(c) for c in header}
    boxes = defaultdict(list)
    for r in rows:
        if r[col["class_id"]] != "14":
            box = np.array([float(r[col[c]]) for c in vindr_cxr.COORDS])
            if scale:
                box *= [scale / float(r[col["width"]]), scale / float(r[col["height"]])] * 2
            boxes[r[col["image_id"]], int(r[col["class_id"]])].append(box)
    return {k: np.mean(v, axis=0) for k, v in boxes.items()}


def _truth(index: int, findings) -> det_vindr.ChestCase:
    """Re-run the generator for image `index` exactly as synthesize does."""
    rng = np.random.default_rng([SEED, 2, index])
    height = SIZE if rng.random() < 0.5 else int(round(SIZE * 1.25))
    return det_vindr.chest_case([SEED, 3, index], SIZE, findings, height)


def _row_of(path: Path, pick) -> int:
    """The csv row number (header = row 1) of the first data row where pick(row) holds."""
    header, rows = _table(path)
    return next(k for k, r in enumerate(rows, 2) if pick(dict(zip(header, r))))


def test_raw_layout(raw):
    header, rows = _table(raw / "train.csv")
    assert header == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    files = sorted((raw / "train").iterdir())
    assert len(files) == N and all(p.suffix == ".dicom" and len(p.stem) == 32 for p in files)
    readers = defaultdict(set)
    for r in rows:
        readers[r[0]].add(r[3])
        assert (r[2] == "14") == (r[4:] == [""] * 4)  # "No finding" rows have empty coordinates
    assert all(len(v) == 3 for v in readers.values()) and len(readers) == N
    heads = [pydicom.dcmread(p) for p in files]
    assert {d.PhotometricInterpretation for d in heads} == {"MONOCHROME1", "MONOCHROME2"}
    assert {d.BitsStored for d in heads} == {12} and all("WindowWidth" in d for d in heads)
    assert {d.Rows for d in heads} == {SIZE, int(round(SIZE * 1.25))} and {d.Columns for d in heads} == {SIZE}
    assert max(int(d.pixel_array.max()) for d in heads) <= 4095


def test_round_trip(raw, prepared):
    ds = prepared
    assert ds.name == "vindr_cxr" and ds.classes == vindr_cxr.CLASSES and ds.meta["synthetic"]
    assert any("kept as negatives" in note for note in ds.meta["notes"]) and ds.meta["split"]["seed"] is None
    header, rows = _table(raw / "train.csv")
    expected = _mean_boxes(header, rows)
    negatives = {r[0] for r in rows} - {k[0] for k in expected}
    by_id = {row["id"]: row for row in ds.rows}
    assert len(by_id) == N and {i for i, row in by_id.items() if not row["boxes"]} == negatives
    assert sum(ds.meta["split"]["counts"][s]["negatives"] for s in ("train", "val", "test")) == len(negatives) > 0
    got = {}
    for image_id, row in by_id.items():
        assert len(set(row["labels"])) == len(row["labels"])  # three readers fused into one box per finding
        got.update({(image_id, label): np.array(box) for box, label in zip(row["boxes"], row["labels"])})
        head = pydicom.dcmread(raw / "train" / f"{image_id}.dicom", stop_before_pixels=True)
        img = Image.open(row["image"])
        assert img.mode == "L" and img.size == (head.Columns, head.Rows) == (row["width"], row["height"])
    assert got.keys() == expected.keys()
    for key, box in got.items():
        np.testing.assert_allclose(box, expected[key], atol=2e-3)
    # ... and close to what the generator drew (the readers' jitter is a few % of the box)
    for index, (image_id, findings) in enumerate(vindr_cxr._plan(N, SEED)):
        for cls, truth in _truth(index, findings).boxes:
            side = max(truth[2] - truth[0], truth[3] - truth[1])
            assert np.abs(got[image_id, cls] - truth).max() <= 0.12 * side + 1.0, (image_id, cls)
    with contextlib.redirect_stdout(io.StringIO()):
        from pycocotools.coco import COCO
        coco = COCO(str(ds.annotation_file("train")))
    assert len(coco.getImgIds()) == len(ds.split("train"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == vindr_cxr.CLASSES


def test_split_is_lvmmed_csv_order(raw, prepared):
    """convert_to_coco.py, re-done with pandas: class 14 dropped, unique() keeps csv order, and the
    seed-1 shuffle of `indices` is never applied to the paths it slices."""
    df = pd.read_csv(raw / "train.csv")
    ids = df[df.class_id != 14]["image_id"].unique()
    n = len(ids)
    lvm = {**{i: "train" for i in ids[:int(0.7 * n)]}, **{i: "val" for i in ids[int(0.7 * n):int((0.7 + 0.1) * n)]},
           **{i: "test" for i in ids[int((0.7 + 0.1) * n):]}}
    ours = {row["id"]: row["split"] for row in prepared.rows}
    assert {i: ours[i] for i in lvm} == lvm
    negatives = [i for i in df["image_id"].unique() if i not in lvm]
    assert [ours[i] for i in negatives] == vindr_cxr.lvmmed_split(negatives)


def test_dicom_display_monochrome1_inverted(raw, prepared):
    by_id = {row["id"]: row for row in prepared.rows}
    seen = set()
    for index, (image_id, findings) in enumerate(vindr_cxr._plan(N, SEED)[:8]):
        case = _truth(index, findings)
        ds = pydicom.dcmread(raw / "train" / f"{image_id}.dicom")
        mono1 = ds.PhotometricInterpretation == "MONOCHROME1"
        seen.add(mono1)
        stored = ds.pixel_array.astype(np.int64)
        values = 4095 - stored if mono1 else stored  # attenuation, bright = dense
        assert np.array_equal(values, case.image)
        center = 4095 - float(ds.WindowCenter) if mono1 else float(ds.WindowCenter)
        lo, width = center - float(ds.WindowWidth) / 2, float(ds.WindowWidth)
        expected = np.clip(np.rint((values - lo) * 255 / width), 0, 255)
        png = np.asarray(Image.open(by_id[image_id]["image"])).astype(np.int64)
        assert np.abs(png - expected).max() <= 1, image_id  # not 255 - expected: MONOCHROME1 was inverted
        assert np.corrcoef(png.ravel(), case.image.ravel())[0, 1] > 0.95
    assert seen == {True, False}


def test_png512_variant_scales_boxes(tmp_path):
    raw = vindr_cxr.synthesize(tmp_path / "kaggle", n=24, seed=2, size=64, variant="png512")
    header, rows = _table(raw / "vinbigdata" / "train.csv")
    assert header[-2:] == ["width", "height"] and {r[-1] for r in rows} == {"64", "80"}
    ds = load_detection_dataset(vindr_cxr.prepare(raw, tmp_path / "out"))
    assert ds.meta["source"]["variant"] == "png"
    expected = _mean_boxes(header, rows, scale=512)
    got = {(row["id"], label): box for row in ds.rows for box, label in zip(row["boxes"], row["labels"])}
    assert got.keys() == expected.keys() and all(row["width"] == row["height"] == 512 for row in ds.rows)
    for key, box in got.items():
        np.testing.assert_allclose(box, expected[key], atol=2e-3)
    for row in ds.rows:  # PNGs are linked as they are
        assert Path(row["image"]).read_bytes() == (raw / "vinbigdata" / "train" / f"{row['id']}.png").read_bytes()
    _write(raw / "vinbigdata" / "train.csv", header[:-2], [r[:-2] for r in rows])
    raises(lambda: vindr_cxr.prepare(raw, tmp_path / "bad"), "train.csv", "lacks column(s) width,height")
    assert not (tmp_path / "bad" / "vindr_cxr").exists()


def test_wbf_fuses_three_jittered_boxes():
    b1, b2, b3 = [100, 200, 300, 420], [104, 196, 310, 430], [99, 207, 296, 419]
    boxes, labels = vindr_cxr.fuse([(np.array(b1, float), 3), (np.array(b2, float), 3), (np.array(b3, float), 3),
                                    (np.array([600., 50, 640, 90]), 3), (np.array([101., 199, 302, 425]), 10)],
                                   1000, 800)
    assert labels == [3, 3, 10]
    # equal scores and weights: the fused box is the plain mean (101, 201, 302, 423)
    np.testing.assert_allclose(boxes[0], [101, 201, 302, 423], atol=1e-3)
    np.testing.assert_allclose(boxes[1], [600, 50, 640, 90], atol=1e-3)  # far apart: kept separate
    np.testing.assert_allclose(boxes[2], [101, 199, 302, 425], atol=1e-3)  # other class: never fused
    assert vindr_cxr.fuse([], 10, 10)[0].shape == (0, 4)


def test_image_with_findings_and_no_finding_rows(src, tmp_path):
    """One reader says "No finding", the others box a nodule: the fused nodule is kept."""
    header, rows = _table(src / "train.csv")
    neg = next(i for i in dict.fromkeys(r[0] for r in rows) if all(r[2] == "14" for r in rows if r[0] == i))
    mine = [r for r in rows if r[0] == neg]
    mine[0][1:3], mine[0][4:] = ["Nodule/Mass", "8"], ["10", "12", "30", "34"]
    mine[1][1:3], mine[1][4:] = ["Nodule/Mass", "8"], ["12", "10", "32", "30"]
    _write(src / "train.csv", header, rows)
    ds = load_detection_dataset(vindr_cxr.prepare(src, tmp_path / "out"))
    row = next(r for r in ds.rows if r["id"] == neg)
    assert row["labels"] == [8]
    np.testing.assert_allclose(row["boxes"][0], [11, 11, 31, 32], atol=1e-3)


def test_box_rows_clipped_or_dropped_and_counted(src, tmp_path):
    header, rows = _table(src / "train.csv")
    found = [k for k, r in enumerate(rows) if r[2] != "14"][:3]
    rows[found[0]][4:] = ["50", "10", "40", "30"]  # x_max < x_min: degenerate
    rows[found[1]][6] = "5000"  # crosses the right border: clipped
    rows[found[2]][4:] = ["4000", "10", "4100", "30"]  # wholly outside: dropped
    _write(src / "train.csv", header, rows)
    meta = load_detection_dataset(vindr_cxr.prepare(src, tmp_path / "out")).meta
    reasons = {reason.split(":")[0].split(" (")[0]: v for reason, v in meta["box_rows"].items()}
    assert reasons["degenerate box"] == {"count": 1, "examples": [f"train.csv row {found[0] + 2}"]}
    assert reasons["box crosses the image border"] == {"count": 1, "examples": [f"train.csv row {found[1] + 2}"]}
    assert reasons["box wholly outside the image"] == {"count": 1, "examples": [f"train.csv row {found[2] + 2}"]}
    assert len(meta["warnings"]) == 3 and meta["conversion"]["raw boxes"] == sum(r[2] != "14" for r in rows)


@pytest.mark.parametrize("change, fragments", [
    (lambda h, r: r[3].__setitem__(2, "15"), ["row 5", "unknown class_id '15'"]),
    (lambda h, r: r[3].__setitem__(1, "Pneumonia"), ["row 5", "class_name 'Pneumonia' does not match class_id"]),
    (lambda h, r: r[3].__setitem__(5, "abc"), ["row 5", "y_min 'abc' is not a number"]),
    (lambda h, r: r[3].append("x"), ["row 5", "9 fields, the header has 8"]),
    (lambda h, r: h.__setitem__(4, "xmin"), ["lacks column(s) x_min"]),
])
def test_bad_csv(src, tmp_path, change, fragments):
    header, rows = _table(src / "train.csv")
    change(header, rows)
    _write(src / "train.csv", header, rows)
    raises(lambda: vindr_cxr.prepare(src, tmp_path / "out"), str(src / "train.csv"), *fragments)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_missing_and_unlisted_image_files(src, tmp_path):
    image_id = vindr_cxr._plan(N, SEED)[3][0]
    (src / "train" / f"{image_id}.dicom").rename(tmp_path / "moved.dicom")
    row = _row_of(src / "train.csv", lambda r: r["image_id"] == image_id)
    raises(lambda: vindr_cxr.prepare(src, tmp_path / "out"), "train.csv", f"row {row}: image {image_id}",
           f"no file train/{image_id}.dicom")
    assert not (tmp_path / "out" / "vindr_cxr").exists()
    (tmp_path / "moved.dicom").rename(src / "train" / f"{image_id}.dicom")
    shutil.copy(src / "train" / f"{image_id}.dicom", src / "train" / "0123456789abcdef0123456789abcdef.dicom")
    (src / "train" / "notes.txt").write_text("stray")
    meta = load_detection_dataset(vindr_cxr.prepare(src, tmp_path / "out")).meta
    assert meta["ignored_files"] == {"images_without_rows": 1, "other_files": 1} and meta["n_samples"] == N
    shutil.copy(src / "train" / f"{image_id}.dicom", src / "train" / f"{image_id}.png")
    raises(lambda: vindr_cxr.prepare(src, tmp_path / "out2"), "mixes DICOM", "and PNG")


def test_physionet_layout(raw, prepared, tmp_path):
    """annotations/annotations_train.csv: no class_id column, classes by name; the rarer PhysioNet
    local labels are skipped and counted, a name outside all of them rejects the file."""
    src = Path(shutil.copytree(raw / "train", tmp_path / "physionet" / "train")).parent
    header, rows = _table(raw / "train.csv")
    keep = [header.index(c) for c in ("image_id", "rad_id", "class_name", *vindr_cxr.COORDS)]
    rows = [[r[k] for k in keep] for r in rows] + [[rows[0][0], "R8", "Rib fracture", "1", "2", "9", "9"]]
    _write(src / "annotations" / "annotations_train.csv", [header[k] for k in keep], rows)
    ds = load_detection_dataset(vindr_cxr.prepare(tmp_path, tmp_path / "out"))  # found one level down
    assert ds.meta["skipped_rows"] == {"label outside the 14 classes (Rib fracture)": 1}
    boxes = lambda d: {(r["id"], tuple(r["labels"])): np.round(r["boxes"], 3).tolist() for r in d.rows}  # noqa: E731
    assert boxes(ds) == boxes(prepared)
    rows[-1][2] = "Broken heart"
    _write(src / "annotations" / "annotations_train.csv", [header[k] for k in keep], rows)
    raises(lambda: vindr_cxr.prepare(src, tmp_path / "bad"), "annotations_train.csv", f"row {len(rows) + 1}",
           "unknown class_name 'Broken heart'")


def test_other_seed_and_requests(raw, tmp_path):
    other = vindr_cxr.synthesize(tmp_path / "other", n=N, seed=SEED + 1, size=SIZE)
    assert (other / "train.csv").read_bytes() != (raw / "train.csv").read_bytes()
    raises(lambda: vindr_cxr.synthesize(tmp_path / "x", n=5), "n=5 is too small")
    raises(lambda: vindr_cxr.synthesize(tmp_path / "y", n=N, variant="jpeg"), "variant='jpeg'")
    raises(lambda: vindr_cxr.prepare(tmp_path / "nowhere", tmp_path / "out"), "does not exist")
    raises(lambda: vindr_cxr.prepare(raw / "train", tmp_path / "out"), "no train/ image folder")
    meta = json.loads((raw / ".bench-synthetic.json").read_text())
    assert meta["seed"] == SEED and meta["variant"] == "dicom"


def test_wbf_input_order_is_lvmmeds_per_class_csv_order(src, tmp_path):
    """Four nodule boxes of one image whose fusion depends on WBF's input order (issue 18). Same y
    range (10..60), so IoU is the x overlap / x union. csv rows: P [0, 36] (reader a), Q [0, 45] (b),
    R [9, 90] (a), S [45, 81] (b). WBF scores them all 1 and visits equal scores in reverse input
    order, joining a box to the cluster whose running mean overlaps it most if IoU > 0.2.
    LVM-Med's order (one list: P, Q, R, S) visits S, R, Q, P: R-S IoU 36/81 -> mean [27, 85.5];
    Q vs it 18/85.5 = 0.21 -> mean [18, 72]; P vs it 18/72 = 0.25 -> all four, the plain mean
    [13.5, 10, 63, 60]. Grouped by reader ([P, R], [Q, S]) it visits S, Q, R, P: Q-S IoU 0 -> two
    clusters; R joins S (36/81 > 36/90) -> [27, 85.5]; P joins Q (36/45) -> [0, 40.5]: two boxes."""
    header, rows = _table(src / "train.csv")
    neg = next(i for i in dict.fromkeys(r[0] for r in rows) if all(r[2] == "14" for r in rows if r[0] == i))
    mine = [r for r in rows if r[0] == neg]
    xs = {"P": (0, 36), "Q": (0, 45), "R": (9, 90), "S": (45, 81)}
    boxes = [(r, xs[k]) for r, k in zip(["Ra", "Rb", "Ra"], "PQR")] + [("Rb", xs["S"])]
    for row, (rad, (x0, x1)) in zip(mine, boxes[:3]):
        row[1:] = ["Nodule/Mass", "8", rad, str(x0), "10", str(x1), "60"]
    at = rows.index(mine[2]) + 1
    rows.insert(at, [neg, "Nodule/Mass", "8", "Rb", str(xs["S"][0]), "10", str(xs["S"][1]), "60"])
    _write(src / "train.csv", header, rows)
    ds = load_detection_dataset(vindr_cxr.prepare(src, tmp_path / "out"))
    row = next(r for r in ds.rows if r["id"] == neg)
    assert row["labels"] == [8]
    np.testing.assert_allclose(row["boxes"], [[13.5, 10, 63, 60]], atol=1e-3)
    # the fixture is order-sensitive: the reader-grouped input (bench before issue 18) gives two boxes
    from ensemble_boxes import weighted_boxes_fusion
    width, height = row["width"], row["height"]
    norm = lambda k: [xs[k][0] / width, 10 / height, xs[k][1] / width, 60 / height]  # noqa: E731
    grouped, _, _ = weighted_boxes_fusion([[norm("P"), norm("R")], [norm("Q"), norm("S")]], [[1, 1], [1, 1]],
                                          [[8, 8], [8, 8]], iou_thr=0.2, skip_box_thr=1e-4)
    grouped = sorted((np.asarray(grouped) * [width, height, width, height]).round(3).tolist())
    np.testing.assert_allclose(grouped, [[0, 10, 40.5, 60], [27, 10, 85.5, 60]], atol=1e-3)


def test_dicom_larger_than_the_cap_is_downscaled_with_its_boxes(tmp_path):
    """prepare(max_side=40) of 64-px-wide DICOMs (some 80 tall): the stored image's longer side is 40,
    every fused box is the full-size one times stored/original width and height, sizes recorded."""
    raw = vindr_cxr.synthesize(tmp_path / "raw", n=24, seed=3, size=64)
    full = load_detection_dataset(vindr_cxr.prepare(raw, tmp_path / "full", max_side=None))
    small = load_detection_dataset(vindr_cxr.prepare(raw, tmp_path / "small", max_side=40))
    assert full.meta["downscale"]["max_side"] is None and small.meta["downscale"]["max_side"] == 40
    by_id = {r["id"]: r for r in full.rows}
    assert {(r["width"], r["height"]) for r in full.rows} == {(64, 64), (64, 80)}
    for row in small.rows:
        orig = by_id[row["id"]]
        dicom = pydicom.dcmread(raw / "train" / f"{row['id']}.dicom")
        assert small.meta["downscale"]["original_size"][row["id"]] == [dicom.Columns, dicom.Rows] \
            == [orig["width"], orig["height"]]
        assert max(row["width"], row["height"]) == 40 and Image.open(row["image"]).size == (row["width"], row["height"])
        assert row["width"] == round(40 * orig["width"] / max(orig["width"], orig["height"]))
        assert row["labels"] == orig["labels"]
        scale = [row["width"] / orig["width"], row["height"] / orig["height"]] * 2
        np.testing.assert_allclose(np.reshape(row["boxes"], (-1, 4)), np.reshape(orig["boxes"], (-1, 4)) * scale,
                                   atol=2e-3)
    assert small.meta["conversion"]["downscaled images"] == 24 and sum(len(r["labels"]) for r in small.rows) > 0
