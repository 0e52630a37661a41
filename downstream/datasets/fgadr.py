"""FGADR Seg-set, diabetic-retinopathy grading (docs/datasets.md): raw reader and synthetic writer.

Split (LVM-Med paper): image ids 0001-1500 train, 1501+ test; validation = a seeded stratified
20 % of train (LVM-Med's training script carves val from train with valid_rate 0.2,
train_R50_classification.py; its released pickle's `val` list equals its `test` list and is not used
here). `--split-file .../LVM-Med/files_split/fgadr_pkl_file.pkl` takes train/test membership from the
pickle itself, read without running pickled code (downstream.datasets.splits); `--exclude-from LIST`
moves listed test images to train. Images without a grade are allowed and counted.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets import splits as published
from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import child, subfolders
from medssl_bench.downstream.datasets.canonical import (
    SourceItem, allocate, check_synth_request, is_synthetic, stratified_split, synthetic_output,
    write_classification_dataset,
)
from medssl_bench.downstream.phantoms.classification import dr_fundus
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.imageio import PIL_SUFFIXES

NAME = "fgadr"
CLASSES = ["0", "1", "2", "3", "4"]
LAYOUT = ("FGADR-Seg-set_Release/Seg-set/Original_Images/<id>_<k>.png + "
          "Seg-set/DR_Seg_Grading_Label.csv (no header; rows 'image,grade', grade 0-4)")
DEFAULT_N = 120
CSV_NAME = "DR_Seg_Grading_Label.csv"
IMAGES_DIR = "Original_Images"
PAPER_TRAIN_MAX_ID = 1500
VAL_FRACTION = 0.2
FALLBACK_TEST_FRACTION = 0.2
# Published per-grade counts of the paper split (LVM-Med's split pickle), train / test.
PUBLISHED = {"train": [85, 168, 487, 535, 225], "test": [16, 44, 107, 112, 62]}
SYNTH_WEIGHTS = (0.14, 0.17, 0.25, 0.26, 0.18)  # mild version of the real imbalance
_TAG = 0xF6AD  # keeps synthetic FGADR streams apart from other generators with the same seed


def find_seg_set(src: Path) -> Path:
    """The Seg-set folder, given it, the release folder or the release's parent."""
    src = Path(src)
    if not src.is_dir():
        raise UserError("does not exist" if not src.exists() else "is not a folder", src)
    candidates = [src, child(src, "Seg-set"), *(child(d, "Seg-set") for d in subfolders(src).values())]
    candidates = [folder for folder in candidates if folder is not None]
    for folder in candidates:
        if (folder / CSV_NAME).is_file():
            return folder
    for folder in candidates:
        if child(folder, IMAGES_DIR) is not None:
            raise UserError(f"grading CSV is missing (expected beside {IMAGES_DIR}/)", folder / CSV_NAME)
    raise UserError(f"no FGADR Seg-set found here; expected {LAYOUT}", src)


def read_grades(csv_path: Path, image_dir: Path) -> dict[str, int]:
    """{image file name: grade} from the header-less CSV, validated row by row."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"unreadable ({type(exc).__name__})", csv_path) from None
    grades, first_row = {}, {}
    reader = csv.reader(io.StringIO(text, newline=""))
    for row in reader:
        where = f"row {reader.line_num}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise UserError(f"{where}: expected 2 columns 'image,grade', got {len(row)}: {row}", csv_path)
        name, grade = row[0].strip(), row[1].strip()
        if not re.fullmatch(r"\d+", grade) or int(grade) > 4:
            if not grades and not name.lower().endswith(PIL_SUFFIXES):
                continue  # a header line someone added ("image,grade"): tolerated on the first row
            raise UserError(f"{where}: grade {grade!r} for {name} is not an integer 0-4", csv_path)
        if name in grades:
            raise UserError(f"{where}: {name} is graded twice (also on row {first_row[name]})", csv_path)
        if not (image_dir / name).is_file():
            raise UserError(f"{where}: image {name} does not exist in {image_dir}", csv_path)
        grades[name], first_row[name] = int(grade), reader.line_num
    if not grades:
        raise UserError("contains no graded images", csv_path)
    return grades


def _image_id(name: str) -> int | None:
    match = re.match(r"(\d+)", name)
    return int(match.group(1)) if match else None


def published_count_notes(train: list[int], test: list[int]) -> list[str]:
    """Warning-level notes when a full release's per-grade counts differ from the published."""
    notes = []
    for part, got in (("train", train), ("test", test)):
        if list(got) != PUBLISHED[part]:
            notes.append(f"looks like the full FGADR release but its {part} grades 0-4 count "
                         f"{list(got)}, published {PUBLISHED[part]}")
    return notes


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a FGADR Seg-set download and write `out_root/fgadr/` in the canonical form."""
    options = supported(options, NAME, split_file=True, exclude_from=True)
    seg = find_seg_set(src)
    image_dir = child(seg, IMAGES_DIR)
    if image_dir is None:
        raise UserError(f"image folder {IMAGES_DIR}/ is missing", seg / IMAGES_DIR)
    grades = read_grades(seg / CSV_NAME, image_dir)
    files = sorted(p for p in image_dir.iterdir() if p.is_file())
    images = [p for p in files if p.name.lower().endswith(PIL_SUFFIXES) and not p.name.startswith(".")]
    ignored = len(files) - len(images)
    unlabeled = sum(p.name not in grades for p in images)
    names = sorted(grades, key=lambda n: (_image_id(n) is None, _image_id(n) or 0, n))
    labels = np.array([grades[n] for n in names])
    ids = [_image_id(n) for n in names]
    marker = is_synthetic(Path(src), seg.parent, seg)
    notes: list[str] = []
    warnings: list[str] = []
    split_fields: dict = {}
    file_val = None
    if options.split_file is not None:
        split_file = published.read_split_file(options.split_file, NAME)
        chosen, split_fields["source"] = published.assign_published(split_file, names)
        keep = [i for i, c in enumerate(chosen) if c is not None]
        names, labels, chosen = [names[i] for i in keep], labels[keep], [chosen[i] for i in keep]
        is_test = np.array([c == "test" for c in chosen])
        file_val = np.array([c == "val" for c in chosen])
        disagree = [n for n, g in zip(names, labels) if split_file.grades.get(n.lower(), g) != g]
        if disagree:
            warnings.append(f"{len(disagree)} image(s) have another grade in {split_file.path.name} than in "
                            f"{CSV_NAME} (the CSV's is used), e.g. {disagree[0]}")
        method = (f"published split file {split_file.path.name} (LVM-Med files_split format): its train/test "
                  "membership; val = " + ("the file's val list" if file_val.any() else
                                          f"seeded stratified {VAL_FRACTION:.0%} of train"))
        notes += split_file.notes
    elif all(i is not None for i in ids) and max(ids) > PAPER_TRAIN_MAX_ID:
        is_test = np.array([i > PAPER_TRAIN_MAX_ID for i in ids])
        method = (f"paper split (LVM-Med): image ids <= {PAPER_TRAIN_MAX_ID} train, larger ids test; "
                  f"val = seeded stratified {VAL_FRACTION:.0%} of train")
        if marker is None and len(images) > PAPER_TRAIN_MAX_ID:
            count = lambda mask: np.bincount(labels[mask], minlength=5).tolist()  # noqa: E731
            warnings += published_count_notes(count(~is_test), count(is_test))
    else:
        _, held = stratified_split(labels, FALLBACK_TEST_FRACTION, [seed, 1])
        is_test = np.isin(np.arange(len(names)), held)
        method = (f"no image id above {PAPER_TRAIN_MAX_ID} (or ids not numeric): seeded stratified "
                  f"{FALLBACK_TEST_FRACTION:.0%} test; val = seeded stratified {VAL_FRACTION:.0%} of train")
        notes.append("paper split not applicable: " + method)
    split = np.where(is_test, "test", "train").astype(object)
    if file_val is not None and file_val.any():
        split[file_val] = "val"
    else:
        pool = np.flatnonzero(~is_test)
        _, val = stratified_split(labels[pool], VAL_FRACTION, seed)
        split[pool[val]] = "val"
    split = list(split)
    split_fields["exclude_from"] = published.exclude_from_test(names, split, options,
                                                               published=options.split_file is not None)
    items = [SourceItem(Path(n).stem, image_dir / n, int(g), str(s)) for n, g, s in zip(names, labels, split)]
    if unlabeled:
        notes.append(f"{unlabeled} image(s) in {IMAGES_DIR}/ have no grade and were left out")
    folder = write_classification_dataset(
        out_root, NAME, CLASSES, items,
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "variant": "seg-set",
                "synthetic_marker": marker},
        split_method=method, seed=seed, synthetic=marker is not None,
        extra={"unlabeled_images": int(unlabeled), "ignored_files": ignored},
        notes=notes, warnings=warnings, progress=progress)
    return published.record_split(folder, **split_fields)


# ----------------------------------------------------------------------------- synthetic
def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 96) -> Path:
    """Write a synthetic FGADR Seg-set under `out` (raw layout): ~80 % of the images get ids
    0001.., the rest ids 1501.., so the paper split rule applies as to the real release.
    Grades set lesion counts/types (downstream.phantoms.classification.dr_fundus)."""
    check_synth_request(n, size, len(CLASSES))
    seed = int(seed) % 2 ** 63
    plan = np.random.default_rng([seed, _TAG, 0])
    n_test = int(round(n * FALLBACK_TEST_FRACTION))
    n_train = n - n_test
    labels = []
    for part, total, minimum in (("train", n_train, 3), ("test", n_test, 2)):
        counts = allocate(total, SYNTH_WEIGHTS, minimum)
        labels.append(plan.permutation(np.repeat(np.arange(len(CLASSES)), counts)))
    if n_train <= PAPER_TRAIN_MAX_ID:
        ids = list(range(1, n_train + 1)) + list(range(PAPER_TRAIN_MAX_ID + 1, PAPER_TRAIN_MAX_ID + 1 + n_test))
    else:  # more than the paper's train size: plain numbering, the rule splits at 1500
        ids = list(range(1, n + 1))
    grades = np.concatenate(labels).tolist()
    suffixes = plan.integers(1, 4, n).tolist()  # the second number of real names ("0001_2")
    marker = {"generator": "bench.datasets.fgadr", "version": 1, "seed": seed, "n": int(n), "size": int(size)}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # small images: OpenCV's thread pool costs more than it saves
    try:
        with synthetic_output(Path(out), marker) as tmp:
            image_dir = tmp / "Seg-set" / IMAGES_DIR
            image_dir.mkdir(parents=True)
            lines = []
            for image_id, grade, k in zip(ids, grades, suffixes):
                name = f"{image_id:04d}_{k}.png"
                img = dr_fundus(np.random.default_rng([seed, _TAG, 1, image_id]), int(size), grade)
                Image.fromarray(img, "RGB").save(image_dir / name, format="PNG")
                lines.append(f"{name},{grade}\n")
            (tmp / "Seg-set" / CSV_NAME).write_text("".join(lines))
    finally:
        cv2.setNumThreads(threads)
    return Path(out)
