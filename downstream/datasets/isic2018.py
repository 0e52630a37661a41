"""ISIC 2018 Task 1, skin lesion boundary segmentation (docs/datasets.md): raw reader and synthetic writer.

Layout (the challenge zips, each unpacked to its folder; one extra wrapper folder is tolerated):
    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg            RGB JPEG, variable size
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png   0/255 PNG, same size
    ... the same pair of folders for Validation and Test; LICENSE.txt / ATTRIBUTION.txt and other
    non-matching files in these folders are ignored (counted in dataset.json `ignored_files`).
Split: each official split (Training -> train, Validation -> val, Test -> test) whose folder
pair is present is used as is; a missing Validation or Test pair is carved out of Training by a
seeded draw (val 10 %, test 20 % of Training), so a Training-only download is split 70/10/20.
LVM-Med's own split is not published (its name "isiconlytrain" suggests a re-split of Training).
Classes: background, lesion; the paper scores Dice of the lesion (target class 1). A mask value
other than 0/255 (or 0/1) becomes background, counted (dataset.json `unknown_label_codes`) and
warned about, as the public loaders do; with `strict` it is an error naming the mask. Masks are
turned by their EXIF orientation, as images are.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import child, find_root
from medssl_bench.downstream.datasets.canonical import allocate, check_synth_request, is_synthetic, synthetic_output
from medssl_bench.downstream.datasets.canonical_seg import (
    SegItem, UnknownCodes, map_codes, read_mask_gray, write_segmentation_dataset,
)
from medssl_bench.downstream.phantoms.seg_isic import isic_sample
from medssl_bench.harness.errors import UserError

NAME = "isic2018"
KIND = "2d"
CLASSES = ["background", "lesion"]
TARGET_CLASSES = [1]
LAYOUT = ("ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_<7 digits>.jpg + "
          "ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_<7 digits>_segmentation.png (0/255)")
DEFAULT_N = 60
PARTS = {"train": "Training", "val": "Validation", "test": "Test"}  # split -> folder word
CARVE = {"val": 0.1, "test": 0.2}  # fraction of Training drawn for a split without its folders
LABEL_CODES = {"background": [0], "lesion": [255]}
IMAGE_RE = re.compile(r"(ISIC_\d+)\.jpe?g", re.IGNORECASE)
MASK_RE = re.compile(r"(ISIC_\d+)_segmentation\.png", re.IGNORECASE)
SYNTH_FRACTIONS = (0.7, 0.1, 0.2)  # train/val/test share of a synthetic set (all three folder pairs)
_TAG = 0x1518  # keeps synthetic ISIC streams apart from other generators with the same seed


def input_dir(part: str) -> str:
    return f"ISIC2018_Task1-2_{part}_Input"


def truth_dir(part: str) -> str:
    return f"ISIC2018_Task1_{part}_GroundTruth"


def _pairs(image_dir: Path, mask_dir: Path) -> tuple[list[tuple[str, Path, Path]], int]:
    """[(ISIC id, image, mask)] sorted by id, and the number of ignored files in both folders."""
    images, masks, ignored = {}, {}, 0
    for folder, pattern, found in ((image_dir, IMAGE_RE, images), (mask_dir, MASK_RE, masks)):
        for p in sorted(folder.iterdir()):
            match = pattern.fullmatch(p.name) if p.is_file() else None
            if match is None:
                ignored += 1  # LICENSE.txt, ATTRIBUTION.txt, .DS_Store, sub-folders
                continue
            key = match.group(1).upper()
            if key in found:
                raise UserError(f"two files for {key}: {found[key].name} and {p.name}", p)
            found[key] = p
    for key, p in images.items():
        if key not in masks:
            raise UserError(f"image without mask (expected {mask_dir / (key + '_segmentation.png')})", p)
    for key, p in masks.items():
        if key not in images:
            raise UserError(f"mask without image (expected {image_dir / (key + '.jpg')})", p)
    if not images:
        raise UserError(f"no ISIC_*.jpg images; expected {LAYOUT}", image_dir)
    return [(k, images[k], masks[k]) for k in sorted(images)], ignored


def read_mask(path: Path, *, strict: bool = True, unknown: UnknownCodes | None = None) -> np.ndarray:
    """A 0/255 (or already 0/1) ground-truth PNG -> 0/1; any other value is an error naming it
    (`strict`) or background, counted in `unknown`."""
    gray = read_mask_gray(path)
    codebook = {0: 0, 1: 1} if gray.size and gray.max() <= 1 else {0: 0, 255: 1}
    return map_codes(gray, codebook, path, strict=strict, unknown=unknown)


def _seeded_parts(n: int, missing: list[str], seed: int) -> np.ndarray:
    """Split labels for the n Training images when `missing` official splits must be carved out."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    labels = np.full(n, "train", dtype=object)
    start = 0
    for split in ("val", "test"):
        if split in missing:
            k = min(int(np.floor(n * CARVE[split] + 0.5)), max(n - start - 1, 0))
            labels[order[start:start + k]] = split
            start += k
    return labels


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read an ISIC 2018 Task 1 download and write `out_root/isic2018/` in the canonical form."""
    options = supported(options, NAME)
    train = (input_dir(PARTS["train"]), truth_dir(PARTS["train"]))
    root = find_root(src, train, required=(), layout=LAYOUT)  # a missing half: below
    found, missing = {}, []
    for split, part in PARTS.items():
        dirs = [child(root, input_dir(part), nested=True), child(root, truth_dir(part), nested=True)]
        if all(d is None for d in dirs) and split != "train":
            missing.append(split)
            continue
        for d, name in zip(dirs, (input_dir(part), truth_dir(part))):
            if d is None:
                raise UserError(f"missing folder {name}/ (ISIC folders come in input/ground-truth pairs"
                                + ("" if split == "train" else f"; remove the other {part} folder to "
                                   "carve this split out of Training") + ")", root / name)
        found[split] = dirs
    plan: list[tuple[str, Path, Path, str]] = []
    ignored = {}
    for split, (image_dir, mask_dir) in found.items():
        pairs, ignored[PARTS[split]] = _pairs(image_dir, mask_dir)
        labels = _seeded_parts(len(pairs), missing, seed) if split == "train" else [split] * len(pairs)
        plan += [(key, image, mask, str(s)) for (key, image, mask), s in zip(pairs, labels)]
    if missing:
        method = ("official " + "/".join(PARTS[s] for s in found) + " folders; "
                  + ", ".join(f"{s} = seeded {CARVE[s]:.0%} of Training" for s in missing)
                  + " (a Training-only download is split 70/10/20)")
    else:
        method = "official ISIC 2018 split: Training -> train, Validation -> val, Test -> test"
    marker = is_synthetic(Path(src), root)
    unknown, warnings = UnknownCodes("pixel"), []

    def items():
        for key, image, mask_path, split in plan:
            yield SegItem(key, image, read_mask(mask_path, strict=options.strict, unknown=unknown), split,
                          source=mask_path)
        warnings.extend(unknown.warnings())  # read by the writer after the stream ends

    return write_segmentation_dataset(
        out_root, NAME, KIND, CLASSES, items(),
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "synthetic_marker": marker},
        split_method=method, seed=seed if missing else None, synthetic=marker is not None,
        label_codes=LABEL_CODES, target_classes=TARGET_CLASSES, total=len(plan),
        extra={"ignored_files": ignored, "official_splits": list(found), "unknown_label_codes": unknown.record},
        warnings=warnings,
        notes=[f"{sum(ignored.values())} non-ISIC file(s) (LICENSE/ATTRIBUTION...) ignored"] if any(
            ignored.values()) else [],
        progress=progress)


# ----------------------------------------------------------------------------- synthetic
def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 96) -> Path:
    """Write a synthetic ISIC 2018 Task 1 download under `out`: all three folder pairs (70/10/20),
    rectangular RGB JPEGs of `size`..1.5*`size` per side, 0/255 PNG masks, LICENSE/ATTRIBUTION
    strays, increasing ids with gaps as in the real release. Same seed -> same bytes."""
    check_synth_request(n, size, len(CLASSES))
    seed = int(seed) % 2 ** 63
    plan = np.random.default_rng([seed, _TAG, 0])
    counts = allocate(int(n), SYNTH_FRACTIONS, minimum=2)
    ids = np.cumsum(plan.integers(1, 4, int(n)))  # unique across splits, gaps like the real ids
    marker = {"generator": "bench.datasets.isic2018", "version": 1, "seed": seed, "n": int(n), "size": int(size)}
    with synthetic_output(Path(out), marker) as tmp:
        index = 0
        for part, count in zip(PARTS.values(), counts):
            image_dir, mask_dir = tmp / input_dir(part), tmp / truth_dir(part)
            for folder in (image_dir, mask_dir):
                folder.mkdir()
                (folder / "LICENSE.txt").write_text("Creative Commons Attribution-NonCommercial 4.0 (synthetic)\n")
                (folder / "ATTRIBUTION.txt").write_text("Synthetic stand-in; no real patient data.\n")
            for _ in range(count):
                rng = np.random.default_rng([seed, _TAG, 1, index])
                height, width = (int(v) for v in rng.integers(int(size), int(size * 1.5) + 1, 2))
                if height == width:
                    width += 1  # real dermoscopy images are rectangular
                img, mask = isic_sample(rng, height, width)
                key = f"ISIC_{int(ids[index]):07d}"
                Image.fromarray(img).save(image_dir / f"{key}.jpg", format="JPEG", quality=90)
                Image.fromarray(mask * np.uint8(255)).save(mask_dir / f"{key}_segmentation.png")
                index += 1
    return Path(out)
