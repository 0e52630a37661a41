"""Brain Tumor MRI classification, both Kaggle releases (docs/datasets.md): reader and synthetic writer.

Sartaj Bhuvaji's "Brain Tumor Classification (MRI)" (LVM-Med's BRAIN) and Masoud Nickparvar's
"Brain Tumor MRI Dataset" share `Training/<class>/`, `Testing/<class>/` and differ in class
folder names. Split: the official Testing folder is test; val = a seeded stratified 30 % of
Training (LVM-Med: valid_rate 0.3, random_state 42 -> default seed 42).
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import SKIP_DIRS, child, find_root, subfolders
from medssl_bench.downstream.datasets.canonical import (
    SourceItem, allocate, check_synth_request, is_synthetic, stratified_split, synthetic_output,
    write_classification_dataset)
from medssl_bench.downstream.phantoms.classification import brain_slice
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.imageio import PIL_SUFFIXES

NAME = "brain_tumor"
CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
LAYOUT = ("Training/<class>/*.jpg + Testing/<class>/*.jpg, classes glioma_tumor, meningioma_tumor, "
          "no_tumor, pituitary_tumor (Sartaj Bhuvaji) or glioma, meningioma, notumor, pituitary "
          "(Masoud Nickparvar)")
DEFAULT_N = 120
VARIANTS = {  # raw class folder name -> canonical class
    "sartaj": {"glioma_tumor": "glioma", "meningioma_tumor": "meningioma", "no_tumor": "no_tumor",
               "pituitary_tumor": "pituitary"},
    "masoud": {"glioma": "glioma", "meningioma": "meningioma", "notumor": "no_tumor",
               "pituitary": "pituitary"},
}
PUBLISHED = {"sartaj": (2870, 394), "masoud": (5712, 1311)}  # Training, Testing image totals
VAL_FRACTION = 0.3
SYNTH_TEST_FRACTION = 0.2
SYNTH_WEIGHTS = (0.26, 0.26, 0.22, 0.26)
_SPLIT_DIRS = ("Training", "Testing")
_TAG = 0xB8A1


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    """{raw class name: folder}; rejects unknown names, saying which are accepted."""
    accepted = {name for names in VARIANTS.values() for name in names}
    found = subfolders(split_dir)
    for name, p in found.items():
        if name not in accepted:
            raise UserError(f"unknown class folder {p.name!r}; accepted names: "
                            + "; ".join(f"{v}: {', '.join(n)}" for v, n in VARIANTS.items()), p)
    return found


def _variant(found: dict[str, dict[str, Path]], root: Path) -> str:
    """Which release the class folders come from; mixing the two is refused."""
    seen: dict[str, Path] = {}
    for classes in found.values():
        for raw, path in classes.items():
            variant = next(v for v, names in VARIANTS.items() if raw in names)
            seen.setdefault(variant, path)
    if len(seen) > 1:
        (v1, p1), (v2, p2) = list(seen.items())[:2]
        raise UserError(f"mixes the class names of both Kaggle releases: {p1.parent.name}/{p1.name} is "
                        f"{v1}, {p2.parent.name}/{p2.name} is {v2}; use one release", p2)
    if not seen:
        raise UserError(f"no class folders in Training/ or Testing/; expected {LAYOUT}", root)
    return next(iter(seen))


def _images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, ignored non-image files) under a class folder, recursively, in a fixed order."""
    images, ignored = [], []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if not p.is_file() or any(part.startswith(".") or part in SKIP_DIRS for part in rel[:-1]):
            continue
        (images if p.name.lower().endswith(PIL_SUFFIXES) and not p.name.startswith(".") else ignored).append(p)
    return images, ignored


def published_count_notes(variant: str, n_train: int, n_test: int) -> list[str]:
    """Warning-level note when a folder the size of a full release differs from its counts."""
    train, test = PUBLISHED[variant]
    if n_train + n_test < 0.8 * (train + test) or (n_train, n_test) == (train, test):
        return []
    return [f"looks like the full {variant} release but has {n_train}/{n_test} Training/Testing "
            f"images, published {train}/{test}"]


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a Kaggle brain-tumour download (either release) and write `out_root/brain_tumor/`."""
    options = supported(options, NAME)
    root = find_root(src, _SPLIT_DIRS, layout=LAYOUT)
    split_dirs = {d: child(root, d) for d in _SPLIT_DIRS}
    found = {d: _class_dirs(p) for d, p in split_dirs.items()}
    variant = _variant(found, root)
    mapping = VARIANTS[variant]
    paths, labels, is_test, ignored = [], [], [], []
    stray = [p for d in split_dirs.values() for p in d.iterdir() if p.is_file()]  # .DS_Store, LICENSE
    ignored += stray
    for d, classes in found.items():
        for raw, folder in classes.items():
            images, skipped = _images(folder)
            ignored += skipped
            if not images and d == "Training":
                raise UserError("class folder contains no images", folder)
            for p in images:
                paths.append(p)
                labels.append(CLASSES.index(mapping[raw]))
                is_test.append(d == "Testing")
    labels, is_test = np.array(labels, dtype=np.int64), np.array(is_test)
    pool = np.flatnonzero(~is_test)
    _, val = stratified_split(labels[pool], VAL_FRACTION, seed)
    split = np.where(is_test, "test", "train").astype(object)
    split[pool[val]] = "val"
    items = [SourceItem(str(p.relative_to(root).with_suffix("")), p, int(y), str(s))
             for p, y, s in zip(paths, labels, split)]
    marker = is_synthetic(Path(src), root)
    warnings = [] if marker else published_count_notes(variant, int((~is_test).sum()), int(is_test.sum()))
    notes = []
    if ignored:
        notes.append(f"ignored {len(ignored)} non-image file(s), e.g. "
                     + ", ".join(str(p.relative_to(root)) for p in ignored[:3]))
    return write_classification_dataset(
        out_root, NAME, CLASSES, items,
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "variant": variant,
                "class_folders": {raw: mapping[raw] for raw in sorted({r for c in found.values() for r in c})},
                "synthetic_marker": marker},
        split_method=(f"official Testing/ folder = test; val = seeded stratified {VAL_FRACTION:.0%} "
                      "of Training/ (LVM-Med valid_rate 0.3), the rest train"),
        seed=seed, synthetic=marker is not None, extra={"ignored_files": len(ignored)},
        notes=notes, warnings=warnings, progress=progress)


# ----------------------------------------------------------------------------- synthetic
def _file_name(variant: str, split: str, cls: str, k: int) -> str:
    """Names as in the releases: Sartaj 'gg (1).jpg' / Testing 'image(1).jpg', Masoud 'Tr-gl_0001.jpg'."""
    if variant == "masoud":
        return f"{'Tr' if split == 'Training' else 'Te'}-{cls[:2]}_{k:04d}.jpg"
    if split == "Testing":
        return f"image({k}).jpg"
    return {"glioma": "gg", "meningioma": "m", "no_tumor": "image", "pituitary": "p"}[cls] + f" ({k}).jpg"


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 96, variant: str = "sartaj") -> Path:
    """Write a synthetic Kaggle brain-tumour folder (raw layout of `variant`) under `out`.
    Classes differ by tumour location/shape (downstream.phantoms.classification.brain_slice)."""
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    check_synth_request(n, size, len(CLASSES))
    seed = int(seed) % 2 ** 63
    plan = np.random.default_rng([seed, _TAG, 0])
    folder_of = {c: raw for raw, c in VARIANTS[variant].items()}
    n_test = int(round(n * SYNTH_TEST_FRACTION))
    marker = {"generator": "bench.datasets.brain_tumor", "version": 2, "seed": seed, "n": int(n),
              "size": int(size), "variant": variant}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with synthetic_output(Path(out), marker) as tmp:
            index = 0
            for split, total, minimum in (("Training", n - n_test, 3), ("Testing", n_test, 2)):
                counts = allocate(total, SYNTH_WEIGHTS, minimum)
                for c, cls in enumerate(CLASSES):
                    folder = tmp / split / folder_of[cls]
                    folder.mkdir(parents=True)
                    for k in range(1, counts[c] + 1):
                        img = brain_slice(np.random.default_rng([seed, _TAG, 1, index]), int(size), cls)
                        buf = io.BytesIO()  # Kaggle JPEGs: 3 equal channels, varying quality
                        Image.fromarray(img).convert("RGB").save(buf, format="JPEG",
                                                                 quality=int(plan.integers(80, 96)))
                        (folder / _file_name(variant, split, cls, k)).write_bytes(buf.getvalue())
                        index += 1
            (tmp / "Training" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(26))  # macOS stray
    finally:
        cv2.setNumThreads(threads)
    return Path(out)
