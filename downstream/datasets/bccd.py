"""BCCD blood-cell detection (docs/datasets.md): raw reader and synthetic writer.

Layout (Shenggan/BCCD_Dataset; the BCCD/ folder itself or its parent, e.g. the clone, may be given):
    BCCD/JPEGImages/BloodImage_<5 digits>.jpg      640x480 RGB, ids with gaps
    BCCD/Annotations/BloodImage_<5 digits>.xml     Pascal VOC: <size><width><height>, per <object>
                                                   <name>WBC|RBC|Platelets</name> <truncated>
                                                   <difficult> <bndbox> xmin ymin xmax ymax
    BCCD/ImageSets/Main/{train,val,trainval,test}.txt   one stem per line
Classes (COCO category ids 1..3 in this order): WBC, RBC, Platelets; a name is compared after
stripping surrounding white space, anything else rejects the XML (naming the object's index).

Coordinates. VOC corners are 1-based inclusive pixel indices: a box from xmin to xmax covers the
pixel columns xmin..xmax, i.e. [xmin - 1, xmax) in the 0-based continuous pixel coordinates of
COCO. So x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax, COCO width = xmax - xmin + 1 (a
box touching the right border of a 640-wide image has xmax = 640 and ends at x1 = 640).
A box with xmax <= xmin or ymax <= ymin spans at most one pixel: an annotation slip (the release
has one, BloodImage_00338) and is dropped as degenerate; one crossing the border (e.g. xmin = 0)
is clipped to the image (both counted with the XML and object index, BoxLedger). `difficult`
objects are kept (their count is in dataset.json), `truncated` is informational.

Pairing and split. Every XML needs its JPEG and every JPEG its XML: the release annotates
every image, so a lone file means an incomplete download and rejects it (UserError naming the
file); a <size> disagreeing with the decoded JPEG rejects the XML, a missing <size> is not
checked (counted). The split is the release's ImageSets/Main/{train,val,test}.txt; a stem
listed there without an annotation, listed twice or in two splits rejects the list (file and
line); annotated images listed in none are left out (counted, warning); trainval.txt, if present,
is only compared with train + val (warning). Without ImageSets/Main at all, a seeded permutation
of the sorted stems gives 70/10/20 train/val/test, recorded as such, with a warning.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import child, find_root
from medssl_bench.downstream.datasets.canonical import (
    SPLITS, check_synth_request, files_by_stem, is_synthetic, synthetic_output)
from medssl_bench.downstream.datasets.canonical_det import BoxLedger, DetItem, write_detection_dataset
from medssl_bench.downstream.phantoms.det_bccd import Smear, smear_sample, smear_size
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.imageio import read_pixels

NAME = "bccd"
CLASSES = ["WBC", "RBC", "Platelets"]
LAYOUT = ("BCCD/JPEGImages/BloodImage_<id>.jpg + BCCD/Annotations/BloodImage_<id>.xml (Pascal VOC) "
          "+ BCCD/ImageSets/Main/{train,val,test}.txt")
DEFAULT_N = 48
FALLBACK = {"val": 0.1, "test": 0.2}  # no ImageSets: seeded 70/10/20
SYNTH_FRACTIONS = {"val": 0.24, "test": 0.2}  # the release's lists are about 205/87/72
COORDINATES = "VOC 1-based inclusive corners -> x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax"
_TAG = 0xBCCD


class VocObject(NamedTuple):
    index: int  # 1-based position among the XML's <object>s
    label: int  # index into CLASSES
    corners: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written (1-based inclusive)
    truncated: int
    difficult: int


def _number(text: str | None, what: str, path: Path) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{what} is {text!r}, not a number", path)
    return value


def read_voc(path: Path) -> tuple[tuple[int, int] | None, list[VocObject]]:
    """Parse one VOC XML: ((width, height) from <size>, or None if absent; its objects). Every
    problem (malformed XML, unknown class, a <bndbox> without numbers) is a UserError naming it."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise UserError(f"malformed XML ({type(exc).__name__}: {exc})", path) from None
    if root.tag != "annotation":
        raise UserError(f"root element is <{root.tag}>, expected a Pascal VOC <annotation>", path)
    size = None
    if (node := root.find("size")) is not None:
        dims = [_number(node.findtext(k), f"<size><{k}>", path) for k in ("width", "height")]
        if not all(v == int(v) and v > 0 for v in dims):
            raise UserError(f"<size> {dims} is not two positive integers", path)
        size = (int(dims[0]), int(dims[1]))
    objects = []
    for k, obj in enumerate(root.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASSES:
            raise UserError(f"object {k}: unknown class {name!r} (expected {', '.join(CLASSES)})", path)
        if obj.find("bndbox") is None:
            raise UserError(f"object {k} ({name}) has no <bndbox>", path)
        corners = tuple(_number(obj.findtext(f"bndbox/{c}"), f"object {k} <{c}>", path)
                        for c in ("xmin", "ymin", "xmax", "ymax"))
        flags = [int(_number(obj.findtext(f) or "0", f"object {k} <{f}>", path)) for f in ("truncated", "difficult")]
        objects.append(VocObject(k, CLASSES.index(name), corners, *flags))
    return size, objects


def voc_to_pixels(corners) -> tuple[float, float, float, float]:
    """VOC (xmin, ymin, xmax, ymax), 1-based inclusive -> pixel box (x0, y0, x1, y1). A box at most
    one pixel wide or high keeps its raw corners, which a BoxLedger drops as degenerate."""
    xmin, ymin, xmax, ymax = corners
    return (xmin - 1, ymin - 1, xmax, ymax) if xmax > xmin and ymax > ymin else (xmin, ymin, xmax, ymax)


def _seeded_splits(stems: list[str], seed: int) -> dict[str, str]:
    n = len(stems)
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(np.floor(n * FALLBACK["test"] + 0.5))
    n_val = min(int(np.floor(n * FALLBACK["val"] + 0.5)), max(n - n_test - 1, 0))
    labels = np.full(n, "train", dtype=object)
    labels[order[:n_test]] = "test"
    labels[order[n_test:n_test + n_val]] = "val"
    return {stem: str(label) for stem, label in zip(stems, labels)}


def _read_list(path: Path) -> list[tuple[int, str]]:
    """(line number, stem) of a VOC image-set file; blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"unreadable ({type(exc).__name__}: {exc})", path) from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if len(line.split()) != 1:
            raise UserError(f"line {n}: expected one image id, got {line.strip()!r}", path)
        rows.append((n, line.strip()))
    return rows


def official_splits(root: Path, annotated: set[str]) -> tuple[dict[str, str], list[str]] | None:
    """{stem: split} from ImageSets/Main/{train,val,test}.txt and warnings; None without ImageSets/Main."""
    sets = child(root, "ImageSets")
    main = child(sets, "Main") if sets else None
    if main is None:
        return None
    split_of, where, warnings = {}, {}, []
    for split in SPLITS:
        path = main / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"missing: ImageSets/Main/ has no {split}.txt; expected {LAYOUT}", path)
        for n, stem in _read_list(path):
            if stem in where:
                raise UserError(f"line {n}: {stem} is already listed ({where[stem]})", path)
            if stem not in annotated:
                raise UserError(f"line {n}: {stem} is listed but Annotations/{stem}.xml is missing", path)
            split_of[stem], where[stem] = split, f"{path.name} line {n}"
    trainval = main / "trainval.txt"
    if trainval.is_file():
        listed = {stem for _, stem in _read_list(trainval)}
        if listed != {s for s, split in split_of.items() if split in ("train", "val")}:
            warnings.append(f"{trainval.name} differs from train.txt + val.txt; train.txt and val.txt were used")
    if left := sorted(annotated - set(split_of)):
        warnings.append(f"{len(left)} annotated image(s) are in none of train/val/test.txt and were "
                        f"left out, e.g. {left[0]}")
    return split_of, warnings


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a BCCD download (VOC) and write `out_root/bccd/` in the canonical COCO form."""
    options = supported(options, NAME)
    root = find_root(src, ("JPEGImages", "Annotations"), label="BCCD", layout=LAYOUT)  # src or BCCD/
    image_dir, xml_dir = child(root, "JPEGImages"), child(root, "Annotations")
    images, ignored_images = files_by_stem(image_dir)
    xmls, ignored_xmls = files_by_stem(xml_dir, (".xml",))
    for stem, p in sorted(xmls.items()):
        if stem not in images:
            raise UserError(f"annotation without image (expected JPEGImages/{stem}.jpg)", p)
    for stem, p in sorted(images.items()):
        if stem not in xmls:
            raise UserError(f"image without annotation (expected Annotations/{stem}.xml; BCCD "
                            "annotates every image)", p)
    if not xmls:
        raise UserError(f"no annotated images; expected {LAYOUT}", xml_dir)
    official = official_splits(root, set(xmls))
    if official is None:
        split_of, warnings = _seeded_splits(sorted(xmls), seed), [
            "no ImageSets/Main/ folder: a seeded 70/10/20 split replaced BCCD's official one "
            "(results are not comparable with published BCCD numbers)"]
        method, split_seed = ("no ImageSets/Main/ in the download: seeded permutation of the sorted ids, "
                              "70%/10%/20% train/val/test"), seed
    else:
        (split_of, warnings), split_seed = official, None
        method = "official: BCCD's ImageSets/Main/{train,val,test}.txt"
    stems = sorted(split_of)
    parsed = {stem: read_voc(xmls[stem]) for stem in stems}  # every XML checked before writing
    ledger, tally = BoxLedger(), Counter()
    extra = {"ignored_files": {"JPEGImages": ignored_images, "Annotations": ignored_xmls},
             "unlisted_images": len(xmls) - len(stems), "coordinates": COORDINATES,
             "difficult_boxes": 0, "truncated_boxes": 0, "size_unchecked": 0}

    def items():
        for stem in stems:
            size, objects = parsed[stem]
            height, width = read_pixels(images[stem]).shape[:2]
            if size is None:
                extra["size_unchecked"] += 1
            elif size != (width, height):
                raise UserError(f"<size> says {size[0]}x{size[1]} but JPEGImages/{images[stem].name} is "
                                f"{width}x{height} (width x height)", xmls[stem])
            boxes, labels = [], []
            for obj in objects:
                kept = ledger.admit(voc_to_pixels(obj.corners), width, height, f"{xmls[stem].name} object {obj.index}")
                if kept is not None:
                    boxes.append(kept)
                    labels.append(obj.label)
                    tally["difficult"] += obj.difficult > 0
                    tally["truncated"] += obj.truncated > 0
            extra["difficult_boxes"], extra["truncated_boxes"] = tally["difficult"], tally["truncated"]
            yield DetItem(stem, images[stem], np.array(boxes).reshape(-1, 4), labels, split_of[stem], source=xmls[stem])

    marker = is_synthetic(Path(src), root, root.parent)
    return write_detection_dataset(
        out_root, NAME, CLASSES, items(),
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "synthetic_marker": marker},
        split_method=method, seed=split_seed, synthetic=marker is not None, ledger=ledger, total=len(stems),
        extra=extra, warnings=warnings, progress=progress,
        notes=[f"boxes: {COORDINATES} (COCO width = xmax - xmin + 1); difficult objects kept"])


# ----------------------------------------------------------------------------- synthetic
def voc_xml(filename: str, width: int, height: int, smear: Smear) -> bytes:
    """A VOC annotation as BCCD's files are laid out (tab-indented, no XML declaration)."""
    ann = ET.Element("annotation")

    def sub(parent, tag, text=None):
        node = ET.SubElement(parent, tag)
        if text is not None:
            node.text = str(text)
        return node

    sub(ann, "folder", "JPEGImages")
    sub(ann, "filename", filename)
    sub(sub(ann, "source"), "database", "Unknown")
    size = sub(ann, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        sub(size, tag, value)
    sub(ann, "segmented", 0)
    for o in smear.objects:
        obj = sub(ann, "object")
        for tag, value in (("name", o.name), ("pose", "Unspecified"), ("truncated", o.truncated),
                           ("difficult", o.difficult)):
            sub(obj, tag, value)
        box = sub(obj, "bndbox")
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            sub(box, tag, getattr(o, tag))
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="unicode").encode() + b"\n"


def synthetic_ids(n: int, seed: int) -> list[int]:
    """n sorted image numbers with gaps (the release's run 0..410 holds 364)."""
    return sorted(int(v) for v in np.random.default_rng([seed, _TAG, 0]).choice(n + n // 8 + 2, n, replace=False))


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 128) -> Path:
    """Write a synthetic BCCD download under `out`: BCCD/JPEGImages/BloodImage_%05d.jpg (`size`
    wide, 4:3), Annotations/*.xml (VOC, boxes clipped to the image with truncated = 1 where a cell
    crosses the border) and ImageSets/Main/{train,val,trainval,test}.txt (a seeded 56/24/20 like
    the release's lists). Ids have gaps. Same seed -> same bytes (downstream.phantoms.det_bccd)."""
    check_synth_request(n, size, len(CLASSES))
    seed = int(seed) % 2 ** 63
    numbers = synthetic_ids(int(n), seed)
    stems = [f"BloodImage_{k:05d}" for k in numbers]
    order = np.random.default_rng([seed, _TAG, 2]).permutation(len(stems))
    n_test = int(np.floor(len(stems) * SYNTH_FRACTIONS["test"] + 0.5))
    n_val = int(np.floor(len(stems) * SYNTH_FRACTIONS["val"] + 0.5))
    lists = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    lists["trainval"] = np.concatenate([lists["train"], lists["val"]])
    marker = {"generator": "bench.datasets.bccd", "version": 1, "seed": seed, "n": int(n), "size": int(size)}
    height, width = smear_size(int(size))
    with synthetic_output(Path(out), marker) as tmp:
        root = tmp / "BCCD"
        for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (root / folder).mkdir(parents=True)
        for number, stem in zip(numbers, stems):
            smear = smear_sample([seed, _TAG, 1, number], width)
            Image.fromarray(smear.image).save(root / "JPEGImages" / f"{stem}.jpg", format="JPEG", quality=90)
            (root / "Annotations" / f"{stem}.xml").write_bytes(voc_xml(f"{stem}.jpg", width, height, smear))
        for name, index in lists.items():
            (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{stems[i]}\n" for i in sorted(index)))
    return Path(out)
