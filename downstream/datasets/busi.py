"""BUSI breast-ultrasound lesion segmentation ("BUID" in LVM-Med; docs/datasets.md): reader and
synthetic writer.

Layout: Dataset_BUSI_with_GT/{benign,malignant,normal}/"<class> (i).png" with "<class> (i)_mask.png"
and, for an image with several lesions, "<class> (i)_mask_1.png", "_mask_2.png" ...; PNGs are
stored RGB though gray, names hold spaces and parentheses. The masks of one image are ORed into
one binary lesion mask.
Split (LVM-Med, docs/tasks.md): `normal` (no lesion) is dropped and the 647 benign + malignant
images are split 413/104/130. By default a seeded split stratified by benign/malignant with the same
proportions (test = 130/647 of each class, val = 104/517 of the rest), which gives exactly
413/104/130 on the full release but other members; `--split-file .../LVM-Med/files_split/BUID.json`
reproduces LVM-Med's membership exactly (its `_labels` name LVM-Med's merged masks; the release's
own `_mask*.png` files are ORed as always). `--exclude-from LIST` moves listed test images to train.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets import splits as published
from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import find_root, natural_key, subfolders
from medssl_bench.downstream.datasets.canonical import (
    SYNTHETIC_MARKER, allocate, check_synth_request, is_synthetic, stratified_split, synthetic_output,
)
from medssl_bench.downstream.datasets.canonical_seg import SegItem, binarise, read_mask_gray, write_segmentation_dataset
from medssl_bench.downstream.phantoms.seg_busi import busi_scan
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.imageio import PIL_SUFFIXES

NAME = "busi"
CLASSES = ["background", "lesion"]
TARGET_CLASSES = [1]
LAYOUT = ("Dataset_BUSI_with_GT/{benign,malignant,normal}/'<class> (i).png' + '<class> (i)_mask.png' "
          "[+ '_mask_1.png', '_mask_2.png' ... for further lesions, ORed]")
DEFAULT_N = 60
ROOT_DIR = "Dataset_BUSI_with_GT"
LESION_TYPES = ("benign", "malignant")  # kept; the lesion type is not a segmentation class
DROPPED = "normal"  # LVM-Med drops the lesion-free images
TEST_FRACTION = 130 / 647
VAL_FRACTION = 104 / 517  # of what is left after the test part
PUBLISHED = {"benign": 437, "malignant": 210, "normal": 133}
SYNTH_WEIGHTS = (0.54, 0.26, 0.20)  # benign, malignant, normal: about the release's mix
SECOND_LESION_P = 0.25
_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?\.png$", re.IGNORECASE)
_TAG = 0xB051


def _class_dirs(folder: Path) -> dict[str, Path]:
    """{class: sub-folder} for the class folders in `folder`, matched ignoring case."""
    return {name: p for name, p in subfolders(folder).items() if name in (*LESION_TYPES, DROPPED)}


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; an unreadable file is an error naming it."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"unreadable image ({type(exc).__name__}: {exc})", path) from None


def scan_class(folder: Path) -> tuple[list[tuple[Path, list[Path]]], list[Path]]:
    """([(image, [its masks in order _mask, _mask_1, ...])], ignored files) of one class folder.
    A mask whose image is missing, or an image without any mask, is an error naming the file."""
    images, masks, ignored = {}, {}, []
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        match = _MASK.match(p.name)
        if p.name.startswith("."):  # .DS_Store, macOS '._benign (1).png' resource forks
            ignored.append(p)
        elif match:
            masks.setdefault(match.group("stem"), []).append((int(match.group("k") or 0), p))
        elif p.name.lower().endswith(PIL_SUFFIXES):
            images[p.stem] = p
        else:
            ignored.append(p)  # .DS_Store, Thumbs.db, notes
    for stem, found in masks.items():
        if stem not in images:
            raise UserError(f"mask without its image (expected '{stem}.png' beside it)", found[0][1])
    pairs = []
    for stem, image in sorted(images.items(), key=lambda kv: natural_key(kv[0])):
        if stem not in masks:
            raise UserError(f"image without any mask (expected '{stem}_mask.png' beside it)", image)
        pairs.append((image, [p for _, p in sorted(masks[stem])]))
    return pairs, ignored


def read_lesion_mask(image: Path, masks: list[Path]) -> np.ndarray:
    """The OR of an image's lesion masks as 0/1 uint8; every mask must match the image size."""
    width, height = _size(image)
    out = np.zeros((height, width), np.uint8)
    for path in masks:
        gray = read_mask_gray(path)
        if gray.shape != (height, width):
            raise UserError(f"mask is {gray.shape[1]}x{gray.shape[0]} but its image {image.name} is "
                            f"{width}x{height} (width x height)", path)
        out |= binarise(gray)
    return out


def assign_splits(types: np.ndarray, seed: int) -> np.ndarray:
    """'train'/'val'/'test' per image, stratified by lesion type (0 benign, 1 malignant):
    413/104/130 for the release's 437 + 210 images."""
    keep, test = stratified_split(types, TEST_FRACTION, [seed, 1])
    _, val = stratified_split(types[keep], VAL_FRACTION, seed)
    split = np.full(len(types), "train", dtype=object)
    split[test] = "test"
    split[keep[val]] = "val"
    return split


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a BUSI download and write `out_root/busi/` (benign + malignant, normal dropped)."""
    options = supported(options, NAME, split_file=True, exclude_from=True)
    # src, its Dataset_BUSI_with_GT/, or either inside one extra wrapper folder
    root = find_root(src, LESION_TYPES, depth=2, layout=LAYOUT)
    found = _class_dirs(root)
    pairs, types, ignored = [], [], [p for p in root.iterdir() if p.is_file() and p.name != SYNTHETIC_MARKER]
    for t, cls in enumerate(LESION_TYPES):
        got, skipped = scan_class(found[cls])
        if not got:
            raise UserError("class folder contains no images", found[cls])
        pairs += got
        types += [t] * len(got)
        ignored += skipped
    n_normal = 0
    if DROPPED in found:
        n_normal = sum(1 for p in found[DROPPED].iterdir() if p.is_file() and not _MASK.match(p.name)
                       and p.name.lower().endswith(PIL_SUFFIXES) and not p.name.startswith("."))
    types = np.array(types, dtype=np.int64)
    counts = {"benign": int((types == 0).sum()), "malignant": int((types == 1).sum()), "normal": n_normal}
    n_download = len(pairs)
    names = [image.name for image, _ in pairs]
    seeded_method = (f"seeded split stratified by benign/malignant: test {TEST_FRACTION:.1%} of each, val "
                     f"{VAL_FRACTION:.1%} of the rest (LVM-Med's 413/104/130 of 647 proportions), the rest train")
    chosen, method, split_fields = published.published_or_seeded(
        names, options, NAME, lambda: assign_splits(types, seed), seeded_method)
    method = f"normal dropped; {method}"
    keep = [i for i, s in enumerate(chosen) if s is not None]
    pairs, types = [pairs[i] for i in keep], types[keep]
    split = np.array([chosen[i] for i in keep], dtype=object)
    per_split = {s: {c: int(((split == s) & (types == t)).sum()) for t, c in enumerate(LESION_TYPES)}
                 for s in ("train", "val", "test")}
    empty: list[str] = []

    def items():
        for (image, masks), s in zip(pairs, split):
            mask = read_lesion_mask(image, masks)
            if not mask.any():
                empty.append(image.name)
            yield SegItem(image.stem, image, mask, str(s), source=image)
        if empty:
            warnings.append(f"{len(empty)} benign/malignant image(s) have all-zero masks, e.g. {empty[0]}")

    marker = is_synthetic(Path(src), root, root.parent)
    warnings = []
    if marker is None and n_download >= 0.8 * 647 and counts != PUBLISHED:
        warnings.append(f"looks like the full BUSI release but counts {counts}, published {PUBLISHED}")
    notes = [f"dropped {n_normal} lesion-free 'normal' image(s) (as LVM-Med)",
             f"lesion types per split (not a class here): {per_split}",
             f"{sum(len(m) > 1 for _, m in pairs)} image(s) have several mask files (ORed)"]
    if ignored:
        notes.append(f"ignored {len(ignored)} non-image file(s), e.g. "
                     + ", ".join(str(p.relative_to(root)) for p in ignored[:3]))
    # `empty` and `warnings` fill while the writer streams items(); it writes dataset.json after.
    folder = write_segmentation_dataset(
        out_root, NAME, "2d", CLASSES, items(),
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "synthetic_marker": marker},
        split_method=method, seed=None if options.split_file is not None else seed, synthetic=marker is not None, label_codes={"background": [0], "lesion": [255]},
        target_classes=TARGET_CLASSES, total=len(pairs), notes=notes, warnings=warnings,
        extra={"ignored_files": len(ignored), "dropped_normal": n_normal, "image_counts": counts,
               "lesion_types_per_split": per_split, "empty_lesion_masks": empty},
        progress=progress)
    return published.record_split(folder, **split_fields)


# ----------------------------------------------------------------------------- synthetic
def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 96) -> Path:
    """Write a synthetic BUSI download under `out` (raw layout, Dataset_BUSI_with_GT/...):
    about 54 % benign, 26 % malignant, 20 % normal (all-zero mask); a quarter of the lesion
    images get a second lesion in '_mask_1.png'. Images are RGB PNGs of gray content, masks
    0/255 PNGs, mostly RGB, some L (downstream.phantoms.seg_busi.busi_scan)."""
    check_synth_request(n, size, len(SYNTH_WEIGHTS))
    seed = int(seed) % 2 ** 63
    counts = allocate(int(n), SYNTH_WEIGHTS, 4)
    marker = {"generator": "bench.datasets.busi", "version": 1, "seed": seed, "n": int(n), "size": int(size)}
    with synthetic_output(Path(out), marker) as tmp:
        root = tmp / ROOT_DIR
        for c, (cls, count) in enumerate(zip((*LESION_TYPES, DROPPED), counts)):
            folder = root / cls
            folder.mkdir(parents=True)
            for i in range(1, count + 1):
                rng = np.random.default_rng([seed, _TAG, c, i])
                n_lesions = 2 if rng.random() < SECOND_LESION_P else 1
                img, masks = busi_scan(rng, int(size), cls, n_lesions)
                stem = f"{cls} ({i})"
                Image.fromarray(img).convert("RGB").save(folder / f"{stem}.png")
                mode = "L" if rng.random() < 0.3 else "RGB"
                for k, m in enumerate(masks or [np.zeros_like(img)]):
                    name = f"{stem}_mask.png" if k == 0 else f"{stem}_mask_{k}.png"
                    Image.fromarray(m * np.uint8(255)).convert(mode).save(folder / name)
        (root / "benign" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(26))  # macOS stray
    return Path(out)
