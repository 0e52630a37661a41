"""JSRT chest radiographs + SCR lung masks (docs/datasets.md): raw reader and synthetic writer.

Layout (JSRT, Shiraishi et al. 2000; SCR, van Ginneken et al. 2006):
    All247images/JPCLN001.IMG ... JPCLN154.IMG, JPCNN001.IMG ... JPCNN093.IMG
        headerless big-endian uint16 ('>u2'), 12-bit, square; the side is inferred from the size
        (sqrt(bytes / 2): 8,388,608 B -> 2048x2048); display = 1 - v / 4096
    All247images/CLNDAT_EN.txt, CNNDAT_EN.txt   clinical tables (ignored, counted)
    scratch/fold1/masks/{left lung,right lung,heart,left clavicle,right clavicle}/<stem>.gif
    scratch/fold2/masks/...      GIF 0/255 at half resolution (1024 for 2048 images);
                                 fold1 = odd-numbered cases, fold2 = even-numbered
The SCR folder may be named anything ("scratch", "SCR", ...) as long as it holds fold1/ and/or
fold2/, and either part may sit inside one or two wrapper folders.

Classes: background, lung (= left lung OR right lung, the paper's lung segmentation); heart and
clavicle masks are not read. A half-resolution mask is resized to its image with nearest
neighbour (exact 2x pixel repetition), so labels stay binary; a mask of any size other than the
image's or half of it is an error naming the mask.

Split: LVM-Med's JSRT split file is not published, so the split is seeded: a stratified (nodule
JPCLN vs non-nodule JPCNN) 20 % test, then 12.5 % of the rest val (= 10 % of all), the rest train
(70/10/20). The official SCR protocol is 2-fold cross-validation (fold1 odd / fold2 even cases);
it is not used because the benchmark needs one train/val/test split.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import candidate_roots, child
from medssl_bench.downstream.datasets.canonical import (
    check_synth_request, is_synthetic, stratified_split, synthetic_output,
)
from medssl_bench.downstream.datasets.canonical_seg import SegItem, binarise, read_mask_gray, write_segmentation_dataset
from medssl_bench.downstream.phantoms.modalities import xray
from medssl_bench.harness.errors import UserError

NAME = "jsrt"
KIND = "2d"
CLASSES = ["background", "lung"]
TARGET_CLASSES = [1]
LAYOUT = ("All247images/JPC{LN,NN}NNN.IMG (headerless big-endian uint16, 12-bit, square) + SCR "
          "scratch/fold{1,2}/masks/{left lung,right lung,...}/<stem>.gif (GIF 0/255, half resolution)")
DEFAULT_N = 40
IMAGE_DIR = "All247images"
STRUCTURES = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")
LUNGS = ("left lung", "right lung")
FOLDS = ("fold1", "fold2")
TEST_FRACTION = 0.2
VAL_FRACTION = 0.125  # of the non-test rest: 0.8 * 0.125 = 10 % of all images
MAX_VALUE = 4095  # 12-bit
N_NODULE, N_NON_NODULE = 154, 93  # the real release: synthetic sets keep this mix
_TAG = 0x75A7


def _is_raw(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == ".img" and not p.name.startswith(".")


def find_parts(src: Path) -> tuple[Path, Path]:
    """(folder holding the .IMG files, SCR folder holding fold1/fold2) under `src`."""
    src = Path(src)
    folders = candidate_roots(src, depth=3)  # breadth first: the shallowest match wins
    images = (next((p for p in folders if p.name.lower() == IMAGE_DIR.lower()), None)
              or next((p for p in folders if any(_is_raw(f) for f in p.iterdir())), None))
    if images is None:
        raise UserError(f"no JSRT images (*.IMG) found; expected {LAYOUT}", src)
    scr = next((p for p in folders if any(child(p, f) for f in FOLDS)), None)
    if scr is None:
        raise UserError(f"no SCR mask folder (scratch/fold1, scratch/fold2) found; expected {LAYOUT}", src)
    return images, scr


def index_masks(scr: Path) -> tuple[dict[str, dict[str, Path]], int]:
    """({lung structure: {stem: gif}} over both folds, number of ignored files)."""
    found: dict[str, dict[str, Path]] = {lung: {} for lung in LUNGS}
    ignored = 0
    for fold in filter(None, (child(scr, f) for f in FOLDS)):
        masks = child(fold, "masks")
        if masks is None:
            raise UserError("SCR fold has no masks/ folder", fold / "masks")
        for lung in LUNGS:
            folder = child(masks, lung)
            if folder is None:
                raise UserError(f"SCR '{lung}' mask folder is missing", masks / lung)
            for p in sorted(folder.iterdir()):
                if not p.is_file() or p.suffix.lower() != ".gif" or p.name.startswith("."):
                    ignored += p.is_file()
                    continue
                stem = p.stem.upper()
                if stem in found[lung]:
                    raise UserError(f"second '{lung}' mask for {stem} (also {found[lung][stem]})", p)
                found[lung][stem] = p
    return found, ignored


def read_raw(path: Path) -> np.ndarray:
    """A JSRT .IMG file as a (side, side) uint16 array of 12-bit values."""
    try:
        nbytes = path.stat().st_size
    except OSError as exc:
        raise UserError(f"unreadable ({type(exc).__name__})", path) from None
    side = math.isqrt(nbytes // 2)
    if nbytes == 0 or 2 * side * side != nbytes:
        raise UserError(f"{nbytes} bytes is not a square 16-bit raw image (2 * side^2 bytes, "
                        "8,388,608 for 2048x2048)", path)
    try:
        values = np.fromfile(path, dtype=">u2").reshape(side, side)
    except (OSError, ValueError) as exc:
        raise UserError(f"unreadable ({type(exc).__name__}: {exc})", path) from None
    if int(values.max()) > MAX_VALUE:
        raise UserError(f"pixel values up to {int(values.max())} exceed 12 bits: not a big-endian JSRT "
                        "raw (a little-endian or converted copy?)", path)
    return values.astype(np.uint16)


def to_display(values: np.ndarray) -> np.ndarray:
    """JSRT values -> 8-bit display image (display = 1 - v / 4096: high values are dark)."""
    return np.clip(np.rint((1.0 - values.astype(np.float32) / 4096.0) * 255.0), 0, 255).astype(np.uint8)


def _lung_mask(paths: list[Path], shape: tuple[int, int]) -> np.ndarray:
    """Union of the lung GIFs, brought to the image size (same size, or half: nearest neighbour)."""
    union = None
    for path in paths:
        m = binarise(read_mask_gray(path))
        if m.shape != shape:
            if (2 * m.shape[0], 2 * m.shape[1]) != shape:
                raise UserError(f"mask is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}: "
                                "expected the same size or half (SCR: 1024 for 2048)", path)
            m = np.asarray(Image.fromarray(m).resize((shape[1], shape[0]), Image.NEAREST))
        union = m if union is None else union | m
    return union


def _case_number(stem: str) -> int:
    match = re.search(r"(\d+)$", stem)
    return int(match.group(1)) if match else 0


def split_cases(stems: list[str], seed: int) -> list[str]:
    """Seeded 70/10/20 split, stratified by nodule (JPCLN) vs non-nodule (JPCNN) cases."""
    labels = np.array([0 if s.startswith("JPCLN") else 1 for s in stems])
    split = np.full(len(stems), "train", dtype=object)
    pool, test = stratified_split(labels, TEST_FRACTION, [seed, 1])
    split[test] = "test"
    _, val = stratified_split(labels[pool], VAL_FRACTION, [seed, 2])
    split[pool[val]] = "val"
    return split.tolist()


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a JSRT + SCR download and write `out_root/jsrt/` in the canonical segmentation form."""
    options = supported(options, NAME)
    image_dir, scr = find_parts(src)
    files = [p for p in sorted(image_dir.iterdir()) if p.is_file()]
    raws = {p.stem.upper(): p for p in files if _is_raw(p)}
    ignored = len(files) - len(raws)
    masks, ignored_masks = index_masks(scr)
    for lung in LUNGS:
        for stem, path in masks[lung].items():
            if stem not in raws:
                raise UserError(f"'{lung}' mask has no JSRT image {stem}.IMG in {image_dir}", path)
    for stem, path in raws.items():
        for lung in LUNGS:
            if stem not in masks[lung]:
                fold = FOLDS[1 - _case_number(stem) % 2]
                raise UserError(f"image has no SCR '{lung}' mask (expected {scr.name}/{fold}/masks/"
                                f"{lung}/{stem}.gif)", path)
    stems = sorted(raws, key=lambda s: (not s.startswith("JPCLN"), _case_number(s), s))
    splits = split_cases(stems, seed)

    def items():
        for stem, split in zip(stems, splits):
            values = read_raw(raws[stem])
            mask = _lung_mask([masks[side][stem] for side in LUNGS], values.shape)
            yield SegItem(stem, to_display(values), mask, split, source=raws[stem])

    marker = is_synthetic(Path(src), image_dir.parent, scr.parent, scr)
    notes = ["lung = SCR left lung OR right lung; heart and clavicle masks are not used",
             "masks at half the image resolution are resized with nearest neighbour (2x pixel repetition)",
             "images: display = 1 - v/4096 as 8-bit PNG",
             "the official SCR protocol is 2-fold (fold1 odd / fold2 even cases); LVM-Med's split is "
             "unpublished, so a seeded 70/10/20 split is used"]
    if ignored or ignored_masks:
        notes.append(f"ignored {ignored} non-image file(s) in {image_dir.name}/ (clinical tables, ...) "
                     f"and {ignored_masks} non-GIF file(s) in the SCR lung mask folders")
    return write_segmentation_dataset(
        out_root, NAME, KIND, CLASSES, items(),
        source={"src": str(Path(src).resolve()), "layout": LAYOUT, "images": str(image_dir.resolve()),
                "masks": str(scr.resolve()), "synthetic_marker": marker},
        split_method=(f"seeded split stratified by nodule/non-nodule: {TEST_FRACTION:.0%} test, "
                      f"{VAL_FRACTION:.1%} of the rest val, the rest train (70/10/20); LVM-Med's JSRT "
                      "split is not published"),
        seed=seed, synthetic=marker is not None,
        label_codes={"lung": "SCR 'left lung' or 'right lung' GIF >= 128"},
        target_classes=TARGET_CLASSES, total=len(stems),
        extra={"ignored_files": ignored + ignored_masks},
        notes=notes, progress=progress)


# ----------------------------------------------------------------------------- synthetic
def _half(soft: np.ndarray) -> np.ndarray:
    """A soft full-resolution mask -> binary 0/255 at half resolution (area average, then >= 0.5)."""
    h, w = soft.shape
    small = soft.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return np.where(small >= 0.5, 255, 0).astype(np.uint8)


def _save_gif(mask: np.ndarray, path: Path, palette_variant: bool) -> None:
    """Both GIF flavours of B.12: Pillow's default save opens as 'P' with indices 0/1,
    optimize=False as 'L' with 0/255."""
    Image.fromarray(mask).save(path, format="GIF", **({} if palette_variant else {"optimize": False}))


def _clinical_rows(rng: np.random.Generator, stems: list[str]) -> tuple[str, str]:
    """CLNDAT_EN.txt / CNNDAT_EN.txt look-alikes (comma-separated, as in the release)."""
    nodule, other = [], []
    for stem in stems:
        age, sex = int(rng.integers(20, 90)), ("male", "female")[int(rng.integers(2))]
        if stem.startswith("JPCLN"):
            x, y = rng.integers(300, 1800, 2)
            nodule.append(f"{stem}.IMG, {int(rng.integers(1, 6))}, {int(rng.integers(6, 60))}, {age}, {sex}, "
                          f"{x} {y}, {('malignant', 'benign')[int(rng.integers(2))]}\n")
        else:
            other.append(f"{stem}.IMG, {age}, {sex}, non-nodule\n")
    return "".join(nodule), "".join(other)


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 128) -> Path:
    """Write a synthetic JSRT + SCR download under `out` (raw layout, quirks included): xray
    phantoms as headerless big-endian 12-bit raw files (`size` x `size`), SCR lung/heart GIF masks
    at half resolution in both GIF flavours, clavicle masks blank (the phantom does not record
    them; the adapter does not read them), clinical tables beside the images."""
    check_synth_request(n, size, len(CLASSES))
    if int(size) % 2:
        raise UserError(f"size={size} must be even (SCR masks are written at half resolution)")
    size, seed = int(size), int(seed) % 2 ** 63
    n_nodule = max(1, min(n - 1, int(round(n * N_NODULE / (N_NODULE + N_NON_NODULE)))))
    stems = [f"JPCLN{k:03d}" for k in range(1, n_nodule + 1)] + [f"JPCNN{k:03d}" for k in range(1, n - n_nodule + 1)]
    marker = {"generator": "bench.datasets.jsrt", "version": 1, "seed": seed, "n": int(n), "size": size}
    with synthetic_output(Path(out), marker) as tmp:
        image_dir = tmp / IMAGE_DIR
        image_dir.mkdir()
        for fold in FOLDS:
            for struct in STRUCTURES:
                (tmp / "scratch" / fold / "masks" / struct).mkdir(parents=True)
        for i, stem in enumerate(stems):
            masks: dict = {}
            kind = 0 if stem.startswith("JPCLN") else 1
            picture = xray(np.random.default_rng([seed, _TAG, kind, _case_number(stem)]), size, masks=masks)
            (MAX_VALUE - picture.astype(np.int32)).astype(">u2").tofile(image_dir / f"{stem}.IMG")
            lung, left_half = masks["lung"], np.arange(size) >= size // 2
            # PA view: the patient's right lung is on the image's left side
            drawn = {"right lung": lung * ~left_half, "left lung": lung * left_half, "heart": masks["heart"],
                     "left clavicle": np.zeros_like(lung), "right clavicle": np.zeros_like(lung)}
            fold = FOLDS[1 - _case_number(stem) % 2]
            for j, struct in enumerate(STRUCTURES):
                _save_gif(_half(drawn[struct]), tmp / "scratch" / fold / "masks" / struct / f"{stem}.gif",
                          palette_variant=(i + j) % 2 == 0)
        nodule, other = _clinical_rows(np.random.default_rng([seed, _TAG, 9]), stems)
        (image_dir / "CLNDAT_EN.txt").write_text(nodule)
        (image_dir / "CNNDAT_EN.txt").write_text(other)
    return Path(out)
