"""VinDr-CXR lesion detection, 14 classes (docs/datasets.md, docs/tasks.md): raw reader and synthetic writer.

Layouts (found in `src` or a folder up to two levels below it; the variant from the files present):
    Kaggle "VinBigData" DICOM:  train/<image_id>.dicom (or .dcm) + train.csv
        image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max   boxes in DICOM pixels
    PhysioNet release:          train/<image_id>.dicom + annotations/annotations_train.csv
        image_id,rad_id,class_name,x_min,y_min,x_max,y_max   (no class_id: classes by name)
    LVM-Med's 512-PNG variant:  vinbigdata/train/<image_id>.png + vinbigdata/train.csv with extra
        width,height columns (the original DICOM size): boxes are scaled by PNG width / width and
        PNG height / height (512/width, 512/height for the awsaf49 512x512 set)
When a folder holds both csv files, train.csv is read.
DICOM is decoded by harness.imageio (modality LUT, VOI LUT or window, MONOCHROME1 inverted),
downscaled (area average) so its longer side is at most MAX_SIDE (1024; `prepare(max_side=None)`
keeps the full size) and stored as 8-bit PNG; its boxes are scaled by stored / original width and
height, and every image's original DICOM size is recorded in dataset.json ("downscale":
"original_size"). PNGs are linked as they are. test/ (no boxes) is not read.

Classes: class_id 0..13 (CLASSES); 14 "No finding" rows have empty coordinates. An unknown or
inconsistent class_id/class_name, a malformed row or header, an image_id without an image file
reject the download (UserError naming the csv and row; row N counts the header as row 1). An
image file without csv rows is ignored (counted). In the PhysioNet file, rows of the eight rarer
local labels outside the 14 Kaggle classes (RARE_LABELS) are skipped and counted.

Boxes: every raw row goes through `BoxLedger.admit` first (clipped to the (stored) image or
dropped, with "<csv> row N"); then the three radiologists' boxes are fused with Weighted Boxes
Fusion (`ensemble_boxes.weighted_boxes_fusion`) exactly as LVM-Med's convert_to_coco.py feeds it:
iou_thr 0.2, skip_box_thr 1e-4, boxes normalised to [0, 1] by the image size, one list per class
that has several boxes (classes in order of first appearance in the csv, each list's boxes in csv
order), scores 1, equal weights; a class with a single box skips WBF. Same-class boxes overlapping
by IoU > 0.2 become their coordinate mean. WBF clusters greedily in its input order, so the order
matters: grouping the boxes by reader instead (bench before issue 18) changed the fused boxes of
111 of the 4,394 images with findings of the real csv. LVM-Med rounds fused boxes to 0.1 px;
bench keeps them unrounded (3 decimals in the COCO files).

"No finding": images whose rows are all class 14 are KEPT as negatives (no boxes); LVM-Med
dropped them. An image with finding rows and "No finding" rows (readers disagreeing) keeps its
fused findings.

Split: LVM-Med's rule reproduced exactly. convert_to_coco.py takes the images with at least one
finding row (class 0..13) in order of first appearance in train.csv, calls np.random.seed(1) and
shuffles an index array that it then never uses, so the split is that csv order: the first
int(0.7 n) train, up to int((0.7 + 0.1) n) val (float arithmetic as written there), the rest test.
The kept negatives are split by the same rule in their own first-appearance order. No seed is
involved: `prepare`'s seed argument is not used. Only the same csv file (awsaf49's train.csv)
gives LVM-Med's very split.
"""
from __future__ import annotations

import csv
import hashlib
import warnings
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import candidate_roots, child
from medssl_bench.downstream.datasets.canonical import check_synth_request, is_synthetic, synthetic_output
from medssl_bench.downstream.datasets.canonical_det import BoxLedger, DetItem, write_detection_dataset
from medssl_bench.downstream.phantoms import det_vindr
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.imageio import read_pixels

NAME = "vindr_cxr"
CLASSES = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
           "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
           "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis"]
NO_FINDING_ID, NO_FINDING = 14, "No finding"
RARE_LABELS = ("Clavicle fracture", "Edema", "Emphysema", "Enlarged PA", "Lung cavity", "Lung cyst",
               "Mediastinal shift", "Rib fracture")
LAYOUT = ("train/<image_id>.dicom + train.csv (Kaggle) or annotations/annotations_train.csv (PhysioNet), "
          "or vinbigdata/train/<image_id>.png + train.csv with width,height columns (512-PNG variant)")
DEFAULT_N = 48
MAX_SIDE = 1024  # DICOMs are stored at most this wide/tall (LVM-Med trained at 512; originals ~2000-3000 px)
IOU_THR, SKIP_BOX_THR = 0.2, 1e-4
FRACTIONS = (0.7, 0.1)
COORDS = ("x_min", "y_min", "x_max", "y_max")
REQUIRED = ("image_id", "rad_id", "class_name") + COORDS
CSV_NAMES = ("train.csv", "annotations/annotations_train.csv")
DICOM_SUFFIXES, PNG_SUFFIXES = (".dicom", ".dcm"), (".png",)
_KEY = {" ".join(c.lower().replace("_", " ").split()): k for k, c in enumerate(CLASSES + [NO_FINDING])}
_RARE = {" ".join(c.lower().split()) for c in RARE_LABELS}


class Row(NamedTuple):
    line: int
    rad: str
    cls: int  # 0..13, or 14 = No finding
    box: tuple  # x_min, y_min, x_max, y_max (nan where empty)


def _key(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").split())


def _find(src: Path) -> tuple[Path, Path]:
    """(annotation csv, image folder): `src` or a sub-folder up to two levels down holding train/."""
    for folder in candidate_roots(src, depth=2):
        images = child(folder, "train")
        for name in CSV_NAMES:
            if images is not None and (folder / name).is_file():
                return folder / name, images
    raise UserError(f"no train/ image folder with train.csv (or annotations/annotations_train.csv); "
                    f"expected {LAYOUT}", src)


def _listing(folder: Path) -> tuple[dict[str, Path], str, int]:
    """({image_id: file}, variant 'dicom' or 'png', number of other files) of train/."""
    found: dict[str, dict[str, Path]] = {"dicom": {}, "png": {}}
    other = 0
    for p in sorted(folder.iterdir()):
        suffix = p.suffix.lower()
        kind = "dicom" if suffix in DICOM_SUFFIXES else "png" if suffix in PNG_SUFFIXES else None
        if kind is None or not p.is_file() or p.name.startswith("."):
            other += 1
            continue
        if p.stem in found[kind]:
            raise UserError(f"two files for image {p.stem} (also {found[kind][p.stem].name})", p)
        found[kind][p.stem] = p
    if found["dicom"] and found["png"]:
        raise UserError(f"mixes DICOM ({len(found['dicom'])}) and PNG ({len(found['png'])}) images: "
                        "use one download variant per folder", folder)
    variant = "png" if found["png"] else "dicom"
    if not found[variant]:
        raise UserError(f"no .dicom/.dcm or .png images; expected {LAYOUT}", folder)
    return found[variant], variant, other


def _number(text: str, what: str, where: str, path: Path) -> float:
    if not text.strip():
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: {what} {text!r} is not a number", path) from None


def read_rows(path: Path, variant: str) -> tuple[dict[str, list[Row]], dict[str, tuple[float, float]], Counter]:
    """The csv as {image_id: rows} in order of first appearance, {image_id: (width, height)} (PNG
    variant) and counts of skipped rows; every malformed row is a UserError naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"unreadable ({type(exc).__name__}: {exc})", path) from None
    header = [h.strip().lower() for h in (table[0] if table else [])]
    need = REQUIRED + (("width", "height") if variant == "png" else ())
    missing = [c for c in need if c not in header]
    if missing:
        extra = " (PNG images need the original DICOM size to scale the boxes)" if variant == "png" else ""
        raise UserError(f"header {','.join(header) or '(empty)'} lacks column(s) {','.join(missing)}{extra}; "
                        f"expected image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max", path)
    col = {c: header.index(c) for c in header}
    rows: dict[str, list[Row]] = {}
    sizes: dict[str, tuple[float, float]] = {}
    skipped: Counter = Counter()
    for n, fields in enumerate(table[1:], 2):
        where = f"row {n}"
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise UserError(f"{where}: {len(fields)} fields, the header has {len(header)}", path)
        image_id, name = fields[col["image_id"]].strip(), fields[col["class_name"]]
        if not image_id:
            raise UserError(f"{where}: empty image_id", path)
        cls = _KEY.get(_key(name))
        if "class_id" in col:
            text = fields[col["class_id"]].strip()
            if not text.isdigit() or int(text) > NO_FINDING_ID:
                raise UserError(f"{where}: unknown class_id {text!r} (expected 0..14)", path)
            if cls != int(text):
                expected = (CLASSES + [NO_FINDING])[int(text)]
                raise UserError(f"{where}: class_name {name!r} does not match class_id {text} ({expected!r})", path)
        elif cls is None:
            if _key(name) in _RARE:
                skipped[f"label outside the 14 classes ({name.strip()})"] += 1
                rows.setdefault(image_id, [])
                continue
            raise UserError(f"{where}: unknown class_name {name!r} (expected one of the 14 VinDr-CXR classes "
                            f"or {NO_FINDING!r})", path)
        box = tuple(_number(fields[col[c]], c, where, path) for c in COORDS)
        if variant == "png":
            size = tuple(_number(fields[col[c]], c, where, path) for c in ("width", "height"))
            if not all(np.isfinite(size)) or min(size) <= 0:
                raise UserError(f"{where}: width,height {size} must be positive numbers", path)
            if sizes.setdefault(image_id, size) != size:
                raise UserError(f"{where}: width,height {size} differ from {sizes[image_id]} in an "
                                f"earlier row of image {image_id}", path)
        rows.setdefault(image_id, []).append(Row(n, fields[col["rad_id"]].strip(), cls, box))
    if not rows:
        raise UserError("no annotation rows", path)
    return rows, sizes, skipped


def fuse(boxes: list, width: int, height: int) -> tuple[np.ndarray, list[int]]:
    """Weighted Boxes Fusion of one image's [(box in pixels, class)] in csv order, as LVM-Med's
    convert_to_coco.py feeds it: one WBF list per class that has several boxes (classes in order of
    first appearance, each list in csv order, scores 1, weights 1, boxes normalised by the image size
    and clipped to [0, 1]); a class with a single box skips WBF and is kept as it is. WBF clusters
    greedily in its input order, so this order (not one list per reader) is what reproduces
    LVM-Med's boxes. Returns (N, 4) pixel boxes sorted by (class, x_min, y_min, ...) and their classes."""
    by_class: dict[int, list[np.ndarray]] = {}
    for box, cls in boxes:
        by_class.setdefault(int(cls), []).append(np.asarray(box, dtype=np.float64))
    if not by_class:
        return np.zeros((0, 4)), []
    scale = np.array([width, height, width, height], dtype=np.float64)
    multi = [c for c in by_class if len(by_class[c]) > 1]
    out, labels = [by_class[c][0] for c in by_class if c not in multi], [c for c in by_class if c not in multi]
    if multi:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ensemble_boxes import weighted_boxes_fusion
            fused, _, fused_labels = weighted_boxes_fusion(
                [np.clip(np.stack(by_class[c]) / scale, 0, 1).tolist() for c in multi],
                [[1.0] * len(by_class[c]) for c in multi], [[c] * len(by_class[c]) for c in multi],
                weights=[1] * len(multi), iou_thr=IOU_THR, skip_box_thr=SKIP_BOX_THR)
        out += list(np.asarray(fused, dtype=np.float64).reshape(-1, 4) * scale)
        labels += np.asarray(fused_labels).astype(int).tolist()
    result = np.clip(np.asarray(out, dtype=np.float64).reshape(-1, 4), 0, scale)
    labels = np.asarray(labels, dtype=int)
    order = np.lexsort((result[:, 3], result[:, 2], result[:, 1], result[:, 0], labels))
    return result[order], labels[order].tolist()


def downscale(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """`pixels` resized (area-averaging, PIL's BOX filter) so its longer side is `max_side`, the
    aspect kept (each side rounded to whole pixels); unchanged when it already fits or max_side is None."""
    height, width = pixels.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return pixels
    ratio = max_side / max(height, width)
    size = (max(1, int(round(width * ratio))), max(1, int(round(height * ratio))))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BOX))


def lvmmed_split(ids: list[str]) -> list[str]:
    """convert_to_coco.py's split of ids in csv order: [:int(.7n)] train, [:int((.7+.1)n)] val, rest test."""
    n = len(ids)
    a, b = int(FRACTIONS[0] * n), int((FRACTIONS[0] + FRACTIONS[1]) * n)
    return ["train"] * a + ["val"] * (b - a) + ["test"] * (n - b)


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None, max_side: int | None = MAX_SIDE) -> Path:
    """Read a VinDr-CXR / VinBigData download; write `out_root/vindr_cxr/` (COCO). `seed` is unused:
    the split is LVM-Med's csv-order rule (module docstring). DICOM images are downscaled to
    `max_side` on their longer side (None: full size), boxes with them; PNGs are linked as they are."""
    if max_side is not None and int(max_side) < 1:
        raise UserError(f"max_side={max_side!r}: give a positive number of pixels, or None for full size")
    options = supported(options, NAME)
    csv_path, image_dir = _find(Path(src))
    files, variant, other_files = _listing(image_dir)
    rows, sizes, skipped = read_rows(csv_path, variant)
    for image_id, image_rows in rows.items():
        if image_id not in files:
            ext = ".png" if variant == "png" else ".dicom"
            first = f"row {image_rows[0].line}" if image_rows else "a row"
            raise UserError(f"{first}: image {image_id} has no file {image_dir.name}/{image_id}{ext}", csv_path)
    first_finding = {i: min(row.line for row in r if row.cls < NO_FINDING_ID)
                     for i, r in rows.items() if any(row.cls < NO_FINDING_ID for row in r)}
    positives = sorted(first_finding, key=first_finding.get)  # LVM-Med: unique() after dropping class 14
    negatives = [i for i in rows if i not in first_finding]
    order = positives + negatives
    split = dict(zip(order, lvmmed_split(positives) + lvmmed_split(negatives)))
    ledger, tally, original = BoxLedger(), Counter(), {}
    label = f"{csv_path.parent.name}/{csv_path.name}" if csv_path.parent.name == "annotations" else csv_path.name

    def items():
        for image_id in order:
            path = files[image_id]
            pixels = read_pixels(path)
            if variant == "png":
                height, width = pixels.shape[:2]
                sx, sy = width / sizes[image_id][0], height / sizes[image_id][1]
            else:
                full_height, full_width = pixels.shape[:2]
                pixels = downscale(pixels, max_side)
                height, width = pixels.shape[:2]
                sx, sy = width / full_width, height / full_height
                original[image_id] = [full_width, full_height]
                tally["downscaled images"] += int((height, width) != (full_height, full_width))
            found: list = []  # (box, class) in csv order: LVM-Med's WBF input order
            for row in rows[image_id]:
                if row.cls == NO_FINDING_ID:
                    continue
                tally["raw boxes"] += 1
                box = np.asarray(row.box, dtype=np.float64) * [sx, sy, sx, sy]
                kept = ledger.admit(box, width, height, f"{label} row {row.line}")
                if kept is not None:
                    found.append((kept, row.cls))
            boxes, labels = fuse(found, width, height)
            tally["fused boxes"] += len(labels)
            tally["images with boxes" if labels else "negative images"] += 1
            yield DetItem(image_id, pixels if variant == "dicom" else path, boxes, labels, split[image_id],
                          source=path)

    marker = is_synthetic(Path(src), csv_path.parent, image_dir.parent)
    notes = [
        "'No finding' images (all rows class 14) are kept as negatives; LVM-Med dropped them",
        f"boxes of the radiologists fused with Weighted Boxes Fusion (ensemble-boxes, iou_thr {IOU_THR}, "
        f"skip_box_thr {SKIP_BOX_THR}, scores 1) as LVM-Med's convert_to_coco.py feeds it: one list per class "
        "with several boxes, classes in order of first appearance, boxes in csv order; a lone box of its class "
        "kept as is; after clipping/dropping each raw row",
        "split: LVM-Med convert_to_coco.py; its np.random.seed(1) shuffle is never applied, so the split is "
        "the csv order; prepare's seed argument is not used",
    ]
    if variant == "png":
        notes.append("PNG variant: boxes scaled from the original DICOM size (csv width,height) to the PNG size")
    else:
        notes.append("DICOM decoded by harness.imageio (modality LUT, VOI LUT/window, MONOCHROME1 inverted), "
                     + (f"downscaled (PIL BOX filter) to at most {max_side} px on the longer side and stored as "
                        "8-bit PNG; boxes scaled by stored/original width and height; original sizes in "
                        "dataset.json 'downscale'" if max_side is not None else
                        "stored as 8-bit PNG at full size; boxes in DICOM pixels"))
    unused = sorted(set(files) - set(rows))
    return write_detection_dataset(
        out_root, NAME, CLASSES, items(),
        source={"layout": LAYOUT, "variant": variant, "csv": str(csv_path.resolve()),
                "src": str(Path(src).resolve()), "synthetic_marker": marker},
        split_method=("LVM-Med (convert_to_coco.py): images with a finding row in order of first appearance "
                      "in the csv, first int(0.7n) train, up to int((0.7+0.1)n) val, rest test (its "
                      "np.random.seed(1) shuffle is unused there); 'No finding' images split the same way "
                      "in their own csv order"),
        seed=None, synthetic=marker is not None, ledger=ledger, total=len(order),
        extra={"ignored_files": {"images_without_rows": len(unused), "other_files": other_files},
               "skipped_rows": dict(skipped), "box_fusion": {"method": "weighted_boxes_fusion",
                                                            "iou_thr": IOU_THR, "skip_box_thr": SKIP_BOX_THR},
               "csv_images": {"with a finding row": len(positives), "without": len(negatives)},
               "conversion": tally,
               "downscale": {"max_side": max_side if variant == "dicom" else None,
                             "filter": "PIL BOX (area average)", "boxes": "scaled by stored/original width, height",
                             "original_size": original}},  # {image_id: [width, height]} of the DICOM  # filled while the writer consumes items(), before it writes dataset.json
        notes=notes, progress=progress)


# ----------------------------------------------------------------------------- synthetic
def _plan(n: int, seed: int) -> list[tuple[str, list[int]]]:
    """(image_id, findings) per image: a quarter "No finding"; each positive image gets one drawn
    class in turn (all five appear) and sometimes one or two more."""
    rng = np.random.default_rng([seed, 1])
    n_neg = int(round(0.25 * n))
    negative = set(rng.permutation(n)[:n_neg].tolist())
    plan, k = [], 0
    for i in range(n):
        image_id = hashlib.md5(f"bench-vindr-{seed}-{i}".encode()).hexdigest()
        findings = []
        if i not in negative:
            first = det_vindr.DRAWN[k % len(det_vindr.DRAWN)]
            k += 1
            more = [c for c in det_vindr.DRAWN if c != first and rng.random() < 0.2]
            findings = [first] + more
        plan.append((image_id, findings))
    return plan


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 128, variant: str = "dicom") -> Path:
    """Write a synthetic VinBigData download under `out`: `variant` "dicom" gives train/<id>.dicom
    (12-bit, MONOCHROME1/2 mixed, window centre/width; `size` wide, some 1.25x taller) + train.csv;
    "png512" gives vinbigdata/train/<id>.png (512x512, LVM-Med's source) + vinbigdata/train.csv
    with width,height. Three readers per image (det_vindr.annotate), rows in shuffled order."""
    check_synth_request(n, size, len(det_vindr.DRAWN) + 1)
    if variant not in ("dicom", "png512"):
        raise UserError(f"variant={variant!r}: choose 'dicom' or 'png512'")
    size, seed = int(size), int(seed) % 2 ** 63
    marker = {"generator": "bench.datasets.vindr_cxr", "version": 1, "seed": seed, "n": int(n), "size": size,
              "variant": variant}
    header = ["image_id", "class_name", "class_id", "rad_id", *COORDS]
    header += ["width", "height"] if variant == "png512" else []
    with synthetic_output(Path(out), marker) as tmp:
        root = tmp / "vinbigdata" if variant == "png512" else tmp
        (root / "train").mkdir(parents=True)
        lines = []
        for i, (image_id, findings) in enumerate(_plan(n, seed)):
            rng = np.random.default_rng([seed, 2, i])
            height = size if rng.random() < 0.5 else int(round(size * 1.25))
            case = det_vindr.chest_case([seed, 3, i], size, findings, height)
            rads = [f"R{k + 1}" for k in rng.choice(17, 3, replace=False)]
            if variant == "dicom":
                det_vindr.dicom_dataset(case.image, bool(rng.random() < 0.5), [seed, i]).save_as(
                    root / "train" / f"{image_id}.dicom", enforce_file_format=True)
            else:
                shown = Image.fromarray(det_vindr.display(case.image, *det_vindr.window_of(case.image)))
                shown.resize((512, 512), Image.BILINEAR).save(root / "train" / f"{image_id}.png", compress_level=1)
            for rad, cls, box in det_vindr.annotate(rng, case.boxes, size, height, rads):
                coords = [f"{v:.1f}" for v in box] if box is not None else [""] * 4
                lines.append([image_id, (CLASSES + [NO_FINDING])[cls], str(cls), rad, *coords]
                             + ([str(size), str(height)] if variant == "png512" else []))
        order = np.random.default_rng([seed, 4]).permutation(len(lines))
        with open(root / "train.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(lines[k] for k in order)
    return Path(out)
