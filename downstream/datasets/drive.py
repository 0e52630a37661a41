"""DRIVE retinal vessel segmentation (docs/datasets.md): raw reader and synthetic writer.

Layout (Staal et al. 2004; the DRIVE download):
    DRIVE/training/images/21_training.tif ... 40_training.tif    RGB TIFF 565x584 (W x H)
    DRIVE/training/1st_manual/21_manual1.gif                     vessel annotation, GIF 0/255
    DRIVE/training/mask/21_training_mask.gif                     field-of-view (FOV) mask, GIF 0/255
    DRIVE/test/images/01_test.tif ... 20_test.tif, DRIVE/test/mask/01_test_mask.gif
    DRIVE/test/1st_manual/01_manual1.gif, test/2nd_manual/01_manual2.gif
        (original release only: the current grand-challenge download withholds the test labels)
`src` may be the DRIVE folder, its parent or a wrapper one level further up. GIFs are read
with convert("L") then thresholded (palette and gray GIF flavours, docs/datasets.md).

Classes: background, vessel (1st_manual, the usual reference; 2nd_manual is not read).
Every image's FOV mask is checked (present, same size as the image) and its path recorded in
dataset.json ("fov_masks", relative to the DRIVE folder), but not used for scoring: the paper
(LVM-Med) reports whole-image Dice; FOV-restricted metrics can be computed from the record.

Split: with test labels (test/1st_manual present) the official 20/20 split: test = the test
images; val = a seeded 20 % (4 of 20) of the training images, the rest train. Without test
labels the 20 labelled training images are split seeded 60/20/20 (12/4/4) and the unlabelled
test images are left out; dataset.json warns about it.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import child, find_root
from medssl_bench.downstream.datasets.canonical import check_synth_request, is_synthetic, synthetic_output
from medssl_bench.downstream.datasets.canonical_seg import SegItem, binarise, read_mask_gray, write_segmentation_dataset
from medssl_bench.downstream.phantoms.modalities import fundus
from medssl_bench.harness.errors import UserError

NAME = "drive"
KIND = "2d"
CLASSES = ["background", "vessel"]
TARGET_CLASSES = [1]
LAYOUT = ("DRIVE/training/{images/NN_training.tif, 1st_manual/NN_manual1.gif, mask/NN_training_mask.gif} "
          "+ DRIVE/test/{images/NN_test.tif, mask/NN_test_mask.gif, 1st_manual/NN_manual1.gif (optional)}")
DEFAULT_N = 40
PARTS = ("training", "test")
VAL_FRACTION = 0.2  # 4 of the 20 training images
FALLBACK_TEST_FRACTION = 0.2  # no test labels: 12/4/4 of the 20 training images
ASPECT = 565 / 584  # real DRIVE width / height
VESSEL_LEVEL = 0.5  # phantom vessel map -> annotation: the pixels painted at >= half strength
_TAG = 0xD21E


def _files(folder: Path) -> dict[str, Path]:
    """{lower-case file name: path} of the files in `folder`."""
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}


def _require(part: Path, name: str, what: str) -> Path:
    folder = child(part, name)
    if folder is None:
        raise UserError(f"{what} folder is missing; expected {LAYOUT}", part / name)
    return folder


def scan_part(root: Path, part: str, labelled: bool) -> tuple[list[tuple[str, Path, Path | None, Path]], int]:
    """[(id, image, manual or None, fov mask)] of one part (training/test), and the number of
    ignored files. Errors name the image without annotation/FOV mask or the annotation without image."""
    folder = child(root, part)
    images = _files(_require(folder, "images", "image"))
    fovs = _files(_require(folder, "mask", "field-of-view mask"))
    manual_dir = _require(folder, "1st_manual", "vessel annotation") if labelled else None
    manuals = _files(manual_dir) if manual_dir else {}
    pattern = re.compile(rf"(\d+)_{part}\.tiff?")
    rows, ignored = [], 0
    for name, path in images.items():
        match = pattern.fullmatch(name)
        if match is None:
            ignored += 1  # Thumbs.db, .DS_Store, ...
            continue
        num = match.group(1)
        manual = manuals.get(f"{num}_manual1.gif")
        if labelled and manual is None:
            raise UserError(f"image has no vessel annotation (expected {manual_dir / f'{num}_manual1.gif'})", path)
        fov = fovs.get(f"{num}_{part}_mask.gif")
        if fov is None:
            raise UserError(f"field-of-view mask of {path.name} is missing", folder / "mask" / f"{num}_{part}_mask.gif")
        rows.append((f"{num}_{part}", path, manual, fov))
    numbers = {key.split("_")[0] for key, *_ in rows}
    for name, path in manuals.items():
        match = re.fullmatch(r"(\d+)_manual1\.gif", name)
        if match is None:
            ignored += 1
        elif match.group(1) not in numbers:
            raise UserError(f"vessel annotation has no image {match.group(1)}_{part}.tif in {folder / 'images'}", path)
    if not rows:
        raise UserError(f"no images named NN_{part}.tif; expected {LAYOUT}", folder / "images")
    return sorted(rows, key=lambda r: (int(r[0].split("_")[0]), r[0])), ignored


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header (the canonical writer decodes it fully)."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"unreadable image ({type(exc).__name__}: {exc})", path) from None


def _binary(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    mask = binarise(read_mask_gray(path))
    if mask.shape != shape:
        raise UserError(f"{what} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]} "
                        "(width x height)", path)
    return mask


def _seeded_pick(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.permutation(n)[:k])


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a DRIVE download and write `out_root/drive/` in the canonical segmentation form."""
    options = supported(options, NAME)
    root = find_root(src, PARTS, required=("training",), label="DRIVE", depth=2, layout=LAYOUT)
    train_rows, ignored = scan_part(root, "training", labelled=True)
    test_dir = child(root, "test")
    manual_dir = child(test_dir, "1st_manual") if test_dir else None
    has_test_labels = manual_dir is not None and any(p.suffix.lower() == ".gif" for p in manual_dir.iterdir())
    test_rows, unlabelled = [], 0
    if test_dir is not None and has_test_labels:
        test_rows, more = scan_part(root, "test", labelled=True)
        ignored += more
    elif test_dir is not None and child(test_dir, "images"):
        unlabelled = sum(1 for p in child(test_dir, "images").iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    rng = np.random.default_rng([seed, _TAG])
    n = len(train_rows)
    split = np.full(n, "train", dtype=object)
    warnings, notes = [], []
    if has_test_labels:
        split[_seeded_pick(n, max(1, round(n * VAL_FRACTION)) if n > 1 else 0, rng)] = "val"
        method = (f"official DRIVE split: test = test/ images (1st_manual); val = seeded "
                  f"{VAL_FRACTION:.0%} of training/ (4 of 20), the rest train")
    else:
        k = round(n * FALLBACK_TEST_FRACTION) if n > 2 else 0  # as many test as val images
        order = rng.permutation(n)
        split[order[:k]] = "test"
        split[order[k:2 * k]] = "val"
        method = ("no test labels (test/1st_manual absent): the labelled training/ images split seeded "
                  f"{1 - 2 * FALLBACK_TEST_FRACTION:.0%}/{FALLBACK_TEST_FRACTION:.0%}/"
                  f"{FALLBACK_TEST_FRACTION:.0%} train/val/test (12/4/4 for the 20)")
        warnings.append("this DRIVE download has no test labels (the current release withholds them): "
                        f"{unlabelled} unlabelled test image(s) left out, and the test split is a seeded part "
                        "of training/, not the official test set; results are not comparable to the paper's")
    rows = [(r, str(s)) for r, s in zip(train_rows, split)] + [(r, "test") for r in test_rows]

    def items():
        for (key, image, manual, fov), part in rows:
            shape = _image_size(image)
            _binary(fov, shape, "field-of-view mask")
            yield SegItem(key, image, _binary(manual, shape, "vessel annotation"), part, source=manual)

    has_second = bool(test_dir and child(test_dir, "2nd_manual"))
    notes += ["vessel = 1st_manual annotation (GIF, convert('L') >= 128)"
              + ("; 2nd_manual (second observer) not used" if has_second else ""),
              "field-of-view masks validated and recorded in fov_masks, not applied: LVM-Med scores "
              "whole-image Dice"]
    if ignored:
        notes.append(f"ignored {ignored} stray file(s) in the image/annotation folders")
    marker = is_synthetic(Path(src), root, root.parent)
    return write_segmentation_dataset(
        out_root, NAME, KIND, CLASSES, items(),
        source={"src": str(Path(src).resolve()), "root": str(root.resolve()), "layout": LAYOUT,
                "test_labels": has_test_labels, "synthetic_marker": marker},
        split_method=method, seed=seed, synthetic=marker is not None,
        label_codes={"vessel": "1st_manual GIF >= 128"}, target_classes=TARGET_CLASSES, total=len(rows),
        extra={"ignored_files": ignored, "unlabelled_test_images": unlabelled,
               "fov_masks": {r[0]: r[3].relative_to(root).as_posix() for r, _ in rows}},
        notes=notes, warnings=warnings, progress=progress)


# ----------------------------------------------------------------------------- synthetic
def _save_gif(mask: np.ndarray, path: Path, palette_variant: bool) -> None:
    """Both GIF flavours of B.12: Pillow's default save opens as 'P' with indices 0/1,
    optimize=False as 'L' with 0/255."""
    Image.fromarray(mask).save(path, format="GIF", **({} if palette_variant else {"optimize": False}))


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 96) -> Path:
    """Write a synthetic DRIVE download under `out`: fundus phantoms `size` px high and
    round(size * 565/584) wide as RGB TIFF, half of them (the lower ids, 01..) in test/ and the
    rest in training/ (20/20 for n=40), vessel annotations (the phantom's vessel tree where it is
    painted at >= half strength inside the FOV: mostly 1-2 px wide, hundreds of branch pixels),
    a second observer's annotation for test (a lower level: slightly wider vessels) and FOV masks,
    GIFs alternating between the palette and gray flavours."""
    check_synth_request(n, size, len(CLASSES))
    size, seed = int(size), int(seed) % 2 ** 63
    width = int(round(size * ASPECT))
    left = (size - width) // 2
    n_test = n // 2
    marker = {"generator": "bench.datasets.drive", "version": 1, "seed": seed, "n": int(n), "size": size}
    with synthetic_output(Path(out), marker) as tmp:
        root = tmp / "DRIVE"
        for part in PARTS:
            for sub in ("images", "mask", "1st_manual") + (("2nd_manual",) if part == "test" else ()):
                (root / part / sub).mkdir(parents=True)
        for num in range(1, n + 1):
            part = "test" if num <= n_test else "training"
            masks: dict = {}
            img = fundus(np.random.default_rng([seed, _TAG, num]), size, masks=masks)
            crop = np.s_[:, left:left + width]
            fov = masks["fov"][crop] >= 0.5
            vessels = masks["vessels"][crop]
            tag, folder = f"{num:02d}", root / part
            Image.fromarray(np.ascontiguousarray(img[crop]), "RGB").save(folder / "images" / f"{tag}_{part}.tif",
                                                                         format="TIFF")
            flavour = num % 2 == 0
            _save_gif(np.where(fov, 255, 0).astype(np.uint8), folder / "mask" / f"{tag}_{part}_mask.gif", flavour)
            first = np.where((vessels >= VESSEL_LEVEL) & fov, 255, 0).astype(np.uint8)
            _save_gif(first, folder / "1st_manual" / f"{tag}_manual1.gif", not flavour)
            if part == "test":
                second = np.where((vessels >= 0.8 * VESSEL_LEVEL) & fov, 255, 0).astype(np.uint8)
                _save_gif(second, folder / "2nd_manual" / f"{tag}_manual2.gif", flavour)
    return Path(out)
