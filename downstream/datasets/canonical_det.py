"""The canonical on-disk form of a prepared detection dataset: COCO JSON, which mmdet reads natively.

    <out_root>/<name>/dataset.json                 format "bench-dataset/1", family "detection":
                                                   classes (COCO category ids 1..K in this order),
                                                   split rule and counts (images, boxes, negatives),
                                                   rows dropped or clipped in conversion (reason,
                                                   count, first examples), content hash, synthetic flag
    <out_root>/<name>/samples.csv                  id,image,split,width,height,boxes
    <out_root>/<name>/annotations/<split>.json     COCO: images (file_name relative to the dataset
                                                   folder), annotations (bbox [x, y, w, h], pixels),
                                                   categories; images without boxes are negatives
    <out_root>/<name>/images/...                   hard links to the download where it decodes as
                                                   is, else PNG (e.g. DICOM after VOI LUT)

Adapters read the raw boxes row by row; `BoxLedger.admit` is the one policy for a bad row: a box
crossing the image border is clipped to it, one that is degenerate or wholly outside is dropped;
both are counted with the file and row of the first examples (dataset.json, and a warning). An
unknown class or an annotation whose image is missing rejects the file (UserError naming file
and row): those mean a wrong or incomplete download, not a noisy box.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from medssl_bench.downstream.datasets.canonical import FORMAT, SPLITS, read_dataset_meta, staged_folder, unique_id
from medssl_bench.downstream.datasets.canonical_seg import place_image
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import ensure_writable_dir, sha256_bytes, write_json_atomic

CSV_HEADER = ["id", "image", "split", "width", "height", "boxes"]
Progress = Callable[[int, int], None]
MAX_EXAMPLES = 5


class DetItem(NamedTuple):
    """One image as an adapter hands it over. image: a file that decodes as is (linked) or a uint8 /
    uint16 array (PNG); boxes: (N, 4) x_min, y_min, x_max, y_max in pixels of that image (already
    admitted by a BoxLedger); labels: class index (0-based into `classes`) per box; N may be 0."""

    key: str
    image: Path | np.ndarray
    boxes: np.ndarray
    labels: Sequence[int]
    split: str
    source: Path | None = None


class BoxLedger:
    """Counts the rows a conversion clipped or dropped, with where the first few came from."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def note(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < MAX_EXAMPLES:
            self.examples[reason].append(where)

    def admit(self, box, width: int, height: int, where: str) -> np.ndarray | None:
        """The box (x_min, y_min, x_max, y_max) clipped to a width x height image, or None when it
        is dropped (non-finite, degenerate, or wholly outside the image). `where`: file and row."""
        box = np.asarray(box, dtype=np.float64)
        if box.shape != (4,) or not np.all(np.isfinite(box)):
            self.note("box coordinates missing or not finite (dropped)", where)
            return None
        if box[2] <= box[0] or box[3] <= box[1]:
            self.note("degenerate box: x_max <= x_min or y_max <= y_min (dropped)", where)
            return None
        clipped = np.array([np.clip(box[0], 0, width), np.clip(box[1], 0, height),
                            np.clip(box[2], 0, width), np.clip(box[3], 0, height)])
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            self.note("box wholly outside the image (dropped)", where)
            return None
        if not np.array_equal(clipped, box):
            self.note("box crosses the image border (clipped to it)", where)
        return clipped

    def summary(self) -> dict:
        return {reason: {"count": n, "examples": self.examples[reason]} for reason, n in sorted(self.counts.items())}

    def warnings(self) -> list[str]:
        return [f"{n} box row(s): {reason}; first at {', '.join(self.examples[reason])}"
                for reason, n in sorted(self.counts.items())]


@dataclass
class DetectionDataset:
    name: str
    classes: list[str]
    meta: dict
    root: Path
    rows: list[dict] = field(default_factory=list, compare=False)

    def split(self, name: str) -> list[dict]:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r} (choose from {', '.join(SPLITS)})", self.root)
        return [r for r in self.rows if r["split"] == name]

    def annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"{split}.json"


def _coco(split_rows: list[dict], classes: list[str]) -> dict:
    images, annotations = [], []
    for image_id, row in enumerate(split_rows, 1):
        images.append({"id": image_id, "file_name": row["image"], "width": row["width"], "height": row["height"],
                       "bench_id": row["id"]})
        for (x0, y0, x1, y1), label in zip(row["boxes"], row["labels"]):
            w, h = float(x1 - x0), float(y1 - y0)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [float(x0), float(y0), w, h], "area": w * h, "iscrowd": 0})
    return {"info": {"description": "bench canonical detection split"}, "images": images,
            "annotations": annotations, "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}


def write_detection_dataset(out_root: Path, name: str, classes: Sequence[str], items: Iterable[DetItem], *,
                            source: dict, split_method: str, seed: int | None, synthetic: bool,
                            ledger: BoxLedger | None = None, total: int | None = None, extra: dict | None = None,
                            notes: Sequence[str] = (), warnings: Sequence[str] = (),
                            progress: Progress | None = None) -> Path:
    """Write `out_root/<name>/` from a stream of items and return that folder (nothing is left
    behind on error). Every box must lie inside its image and name a known class: the adapter's
    BoxLedger has clipped or dropped the others (a box that still does not fit is an error)."""
    classes = [str(c) for c in classes]
    src = source.get("src")
    out_root = ensure_writable_dir(Path(out_root))
    rows, hash_rows, seen = [], [], set()
    with staged_folder(out_root / name) as tmp:
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
        if progress:
            progress(0, total or 0)
        for done, item in enumerate(items, 1):
            if item.split not in SPLITS:
                raise ValueError(f"bad split in {item.key}")  # adapter bug
            where = item.source or (item.image if isinstance(item.image, Path) else item.key)
            sid = unique_id(item.key, seen)
            rel, (height, width), digest = place_image(item, tmp, sid)
            boxes = np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
            labels = [int(v) for v in item.labels]
            if len(labels) != len(boxes):
                raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels for {item.key}")  # adapter bug
            if any(not 0 <= v < len(classes) for v in labels):
                raise UserError(f"class index {max(labels)} outside the {len(classes)} classes", where)
            bad = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height) \
                | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                raise UserError(f"box {boxes[bad][0].round(2).tolist()} is empty or outside the {width}x{height} image",
                                where)
            rows.append({"id": sid, "image": rel, "split": item.split, "width": int(width), "height": int(height),
                         "boxes": boxes.round(3).tolist(), "labels": labels})
            hash_rows.append(f"{item.split}\t{digest}\t{sha256_bytes(json.dumps([rows[-1]['boxes'], labels]).encode())}\n")
            if progress:
                progress(done, max(total or 0, done))
        counts = {s: {"images": 0, "boxes": 0, "negatives": 0, "per_class": [0] * len(classes)} for s in SPLITS}
        for row in rows:
            c = counts[row["split"]]
            c["images"] += 1
            c["boxes"] += len(row["labels"])
            c["negatives"] += int(not row["labels"])
            for label in row["labels"]:
                c["per_class"][label] += 1
        if counts["train"]["boxes"] == 0:
            raise UserError("no boxes in the training split: nothing to train a detector on", src)
        for split in SPLITS:
            write_json_atomic(tmp / "annotations" / f"{split}.json", _coco([r for r in rows if r["split"] == split], classes))
        with open(tmp / "samples.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            for row in rows:
                writer.writerow([row["id"], row["image"], row["split"], row["width"], row["height"], len(row["labels"])])
        ledger = ledger or BoxLedger()
        meta = {
            "format": FORMAT, "dataset": name, "family": "detection", "classes": classes,
            "synthetic": bool(synthetic), "content_hash": sha256_bytes("".join(sorted(hash_rows)).encode()),
            "source": dict(source), "split": {"method": split_method, "seed": seed, "counts": counts},
            "n_samples": len(rows), "box_rows": ledger.summary(), "notes": list(notes),
            "warnings": list(warnings) + ledger.warnings(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {}),
        }
        write_json_atomic(tmp / "dataset.json", meta)
    return out_root / name


def load_detection_dataset(folder: Path) -> DetectionDataset:
    """Read and validate a prepared detection folder (each split's COCO file loads in pycocotools
    and agrees with samples.csv); every problem is a UserError naming a file."""
    from pycocotools.coco import COCO

    folder = Path(folder)
    meta, csv_path = read_dataset_meta(folder, "detection")
    classes = meta["classes"]
    rows = []
    for split in SPLITS:
        path = folder / "annotations" / f"{split}.json"
        if not path.is_file():
            raise UserError("missing: the COCO annotations of this split are gone", path)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco = COCO(str(path))
        except Exception as exc:  # pycocotools asserts / raises KeyError on malformed files
            raise UserError(f"not a valid COCO file ({type(exc).__name__}: {exc})", path) from None
        if [c["name"] for c in coco.loadCats(coco.getCatIds())] != classes:
            raise UserError(f"categories differ from dataset.json's classes {classes}", path)
        for image in coco.loadImgs(coco.getImgIds()):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            file = folder / image["file_name"]
            if not file.is_file():
                raise UserError(f"image {image['file_name']} is missing", path)
            rows.append({"id": image.get("bench_id", str(image["id"])), "image": file, "split": split,
                         "width": image["width"], "height": image["height"], "coco_id": image["id"],
                         "boxes": [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                   for a in anns], "labels": [a["category_id"] - 1 for a in anns]})
    with open(csv_path, newline="") as handle:
        listed = sum(1 for _ in csv.reader(handle)) - 1
    if listed != len(rows):
        raise UserError(f"lists {listed} images but the COCO files hold {len(rows)}", csv_path)
    return DetectionDataset(str(meta.get("dataset", folder.name)), classes, meta, folder, rows)
