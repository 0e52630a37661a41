"""Kvasir-SEG polyp segmentation (docs/datasets.md): raw reader and synthetic writer.

Layout (the Simula zip; the Kvasir-SEG/ folder itself or its parent may be given):
    Kvasir-SEG/images/<25-char id>.jpg    RGB JPEG, variable size (about 332x487 .. 1920x1072)
    Kvasir-SEG/masks/<id>.jpg             same stem; JPEG 3-channel 0/255 with compression noise
    Kvasir-SEG/kavsir_bboxes.json         (sic) {"<id>": {"height", "width", "bbox": [{"label":
                                          "polyp", "xmin", "ymin", "xmax", "ymax"}, ...]}, ...}
Masks are binarised at the midpoint, gray >= 128 -> polyp. LVM-Med maps < 50 -> 0 and > 200 -> 1
and leaves 50..200 undefined; these are JPEG ringing pixels on the polyp border, so the midpoint
rule agrees with LVM-Med wherever LVM-Med defines a value (their count is in dataset.json,
`ambiguous_mask_pixels`). The box JSON is not needed for segmentation: it may be absent; when
present it is only checked (a problem becomes a warning, not a failure).
Split: no official split exists; by default seeded 64/16/20 train/val/test over the sorted ids (the
proportions of LVM-Med's 640/160/200). `--split-file .../LVM-Med/files_split/Kvasir.json` reproduces
LVM-Med's published membership exactly (downstream.datasets.splits; its `_labels` masks are the same
names, read here from masks/). `--exclude-from LIST` moves listed test images to train.
Classes: background, polyp; the paper scores Dice of the polyp (target class 1).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets import splits as published
from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import child, find_root
from medssl_bench.downstream.datasets.canonical import (
    check_synth_request, files_by_stem, is_synthetic, synthetic_output)
from medssl_bench.downstream.datasets.canonical_seg import SegItem, read_mask_gray, write_segmentation_dataset
from medssl_bench.downstream.phantoms.seg_kvasir import kvasir_sample
from medssl_bench.harness.errors import UserError

NAME = "kvasir_seg"
KIND = "2d"
CLASSES = ["background", "polyp"]
TARGET_CLASSES = [1]
LAYOUT = ("Kvasir-SEG/images/<id>.jpg + Kvasir-SEG/masks/<id>.jpg (JPEG 0/255 masks) "
          "+ optional Kvasir-SEG/kavsir_bboxes.json")
DEFAULT_N = 60
BOX_JSON = "kavsir_bboxes.json"
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
THRESHOLD = 128  # gray >= 128 is polyp (see the module docstring)
LVMMED_LOW, LVMMED_HIGH = 50, 200  # LVM-Med's rule: < 50 -> 0, > 200 -> 1, between undefined
FRACTIONS = {"val": 0.16, "test": 0.2}  # rest train: 640/160/200 of 1,000
LABEL_CODES = {"background": [0], "polyp": [255]}  # nominal; noisy JPEG values split at THRESHOLD
ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_TAG = 0x4B5A


def read_mask(path: Path) -> tuple[np.ndarray, int]:
    """A (JPEG-noisy) mask -> 0/1 uint8, and its number of pixels LVM-Med's rule leaves undefined."""
    gray = read_mask_gray(path)
    ambiguous = int(np.count_nonzero((gray >= LVMMED_LOW) & (gray <= LVMMED_HIGH)))
    return (gray >= THRESHOLD).astype(np.uint8), ambiguous


def find_box_json(root: Path) -> Path | None:
    """The box file beside images/: the release's misspelt name, or the corrected spelling."""
    for name in (BOX_JSON, "kvasir_bboxes.json"):
        if (root / name).is_file():
            return root / name
    return None


def parse_bboxes(path: Path) -> dict[str, dict]:
    """kavsir_bboxes.json as {id: {"height", "width", "bbox": [{label, xmin, ymin, xmax, ymax}]}},
    its structure checked (a box list per id, numeric corners, label "polyp") but not the boxes'
    geometry: detection clips or drops a box that does not fit (BoxLedger). Errors name file and id."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"unreadable ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(data, dict):
        raise UserError(f"expected a JSON object keyed by image id, got {type(data).__name__}", path)
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("bbox"), list):
            raise UserError(f"entry {key!r} has no 'bbox' list", path)
        for box in entry["bbox"]:
            if not isinstance(box, dict):
                raise UserError(f"entry {key!r}: box {box!r} is not an object", path)
            if box.get("label", "polyp") != "polyp":
                raise UserError(f"entry {key!r}: unknown class {box.get('label')!r} (expected 'polyp')", path)
            if not all(isinstance(box.get(c), (int, float)) and not isinstance(box.get(c), bool) for c in BOX_KEYS):
                raise UserError(f"entry {key!r}: box {box} lacks numeric xmin/ymin/xmax/ymax", path)
    return data


def read_bboxes(path: Path) -> dict[str, dict]:
    """kavsir_bboxes.json parsed (parse_bboxes) and every box checked to lie inside its image;
    every problem is a UserError naming the file and the id."""
    data = parse_bboxes(path)
    for key, entry in data.items():
        size = [entry.get("height"), entry.get("width")]
        if not all(isinstance(v, int) and v > 0 for v in size):
            raise UserError(f"entry {key!r}: height/width {size} are not positive integers", path)
        for box in entry["bbox"]:
            coords = [box[k] for k in BOX_KEYS]
            if not (0 <= coords[0] < coords[2] <= size[1] and 0 <= coords[1] < coords[3] <= size[0]):
                raise UserError(f"entry {key!r}: box {box} is empty or outside the "
                                f"{size[1]}x{size[0]} image", path)
    return data


def _seeded_splits(n: int, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(np.floor(n * FRACTIONS["test"] + 0.5))
    n_val = min(int(np.floor(n * FRACTIONS["val"] + 0.5)), max(n - n_test - 1, 0))
    labels = np.full(n, "train", dtype=object)
    labels[order[:n_test]] = "test"
    labels[order[n_test:n_test + n_val]] = "val"
    return labels


SEEDED_METHOD = (f"no official split: seeded permutation of the sorted ids, {1 - sum(FRACTIONS.values()):.0%}"
                 f"/{FRACTIONS['val']:.0%}/{FRACTIONS['test']:.0%} train/val/test (LVM-Med's 640/160/200 "
                 "proportions; --split-file files_split/Kvasir.json reproduces its membership)")


def choose_splits(names: list[str], seed: int, options: PrepareOptions) -> tuple[list, str, dict]:
    """(split per image - None: not in the split file, left out -, the method text, the fields for
    dataset.json's split record) for the images `names` (file names, sorted by stem); shared with
    kvasir_det so that segmentation and detection test the same images."""
    return published.published_or_seeded(names, options, NAME, lambda: _seeded_splits(len(names), seed),
                                         SEEDED_METHOD)


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a Kvasir-SEG download and write `out_root/kvasir_seg/` in the canonical form."""
    options = supported(options, NAME, split_file=True, exclude_from=True)
    root = find_root(src, ("images", "masks"), label="Kvasir-SEG", layout=LAYOUT)  # src or Kvasir-SEG/
    image_dir, mask_dir = child(root, "images"), child(root, "masks")
    images, ignored_images = files_by_stem(image_dir)
    masks, ignored_masks = files_by_stem(mask_dir)
    for stem, p in images.items():
        if stem not in masks:
            raise UserError(f"image without mask (expected masks/{stem}.jpg)", p)
    for stem, p in masks.items():
        if stem not in images:
            raise UserError(f"mask without image (expected images/{stem}.jpg)", p)
    if not images:
        raise UserError(f"no images; expected {LAYOUT}", image_dir)
    stems = sorted(images)
    splits, method, split_fields = choose_splits([images[s].name for s in stems], seed, options)
    kept = [(stem, split) for stem, split in zip(stems, splits) if split is not None]
    warnings, boxes = [], None
    if (box_path := find_box_json(root)) is not None:
        try:
            boxes = read_bboxes(box_path)
        except UserError as err:
            warnings.append(f"{box_path.name} ignored (segmentation does not use it): {err}")
    if boxes is not None and (absent := [s for s in stems if s not in boxes]):
        warnings.append(f"{box_path.name} has no boxes for {len(absent)} image(s), e.g. {absent[0]}")
    marker = is_synthetic(Path(src), root, root.parent)
    extra = {"ignored_files": {"images": ignored_images, "masks": ignored_masks},
             "mask_threshold": THRESHOLD, "ambiguous_mask_pixels": 0,  # summed while streaming
             "box_json": box_path.name if boxes is not None else None}

    def items():
        for stem, split in kept:
            mask, n_ambiguous = read_mask(masks[stem])
            extra["ambiguous_mask_pixels"] += n_ambiguous
            yield SegItem(stem, images[stem], mask, str(split), source=masks[stem])

    folder = write_segmentation_dataset(
        out_root, NAME, KIND, CLASSES, items(),
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "synthetic_marker": marker},
        split_method=method, seed=None if options.split_file is not None else seed,
        synthetic=marker is not None, label_codes=LABEL_CODES, target_classes=TARGET_CLASSES,
        total=len(kept), extra=extra, warnings=warnings,
        notes=[f"masks binarised at gray >= {THRESHOLD}; LVM-Med's <{LVMMED_LOW}/>{LVMMED_HIGH} rule leaves "
               "the JPEG ringing pixels between undefined"], progress=progress)
    return published.record_split(folder, **split_fields)


# ----------------------------------------------------------------------------- synthetic
def _ids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct Kvasir-style ids: 'cj' + 23 lowercase alphanumerics (25 characters)."""
    ids: list[str] = []
    while len(ids) < n:
        key = "cj" + "".join(ID_ALPHABET[i] for i in rng.integers(0, len(ID_ALPHABET), 23))
        if key not in ids:
            ids.append(key)
    return ids


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 96) -> Path:
    """Write a synthetic Kvasir-SEG download under `out`: Kvasir-SEG/images/<id>.jpg (RGB,
    `size`..1.5*`size` per side, 1-3 polyps), masks/<id>.jpg (3-channel 0/255 with grey
    antialiased borders, saved as JPEG, so with compression noise) and kavsir_bboxes.json from
    the mask's connected components (downstream.phantoms.seg_kvasir). Same seed -> same bytes."""
    check_synth_request(n, size, len(CLASSES))
    seed = int(seed) % 2 ** 63
    ids = _ids(np.random.default_rng([seed, _TAG, 0]), int(n))
    marker = {"generator": "bench.datasets.kvasir_seg", "version": 1, "seed": seed, "n": int(n), "size": int(size)}
    with synthetic_output(Path(out), marker) as tmp:
        root = tmp / "Kvasir-SEG"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        boxes = {}
        for index, key in enumerate(ids):
            shape = np.random.default_rng([seed, _TAG, 1, index]).integers(int(size), int(size * 1.5) + 1, 2)
            height, width = int(shape[0]), int(shape[1]) + int(shape[0] == shape[1])  # never square
            frame = kvasir_sample([seed, _TAG, 2, index], height, width)
            Image.fromarray(frame.image).save(root / "images" / f"{key}.jpg", format="JPEG", quality=90)
            rgb_mask = np.repeat(frame.soft[..., None], 3, axis=2)  # 3-channel like the real masks
            Image.fromarray(rgb_mask).save(root / "masks" / f"{key}.jpg", format="JPEG", quality=75)
            boxes[key] = {"height": height, "width": width, "bbox": frame.boxes}
        (root / BOX_JSON).write_text(json.dumps(boxes, indent=4) + "\n")
    return Path(out)
