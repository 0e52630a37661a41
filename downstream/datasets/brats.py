"""BraTS brain-tumour segmentation, 3D (docs/datasets.md): raw reader and synthetic writer.

Layout (BraTS 2018, the release LVM-Med names): MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/
<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz (+ a stray survival_data.csv). Later releases are
read too: BraTS2021 flat <case>/ folders (same suffixes and labels) and BraTS 2023
<case>/<case>-{t1c,t1n,t2f,t2w,seg}.nii.gz, whose enhancing tumour is labelled 3 instead of 4.
Case folders are found by their seg file and files are keyed on the suffixes, never on the year
prefix. Input: one modality per run, as LVM-Med's loader: FLAIR (2023: t2f), the contrast that
shows the whole tumour; windowed once per volume, one sample per axial slice.
Classes: background, necrotic_core (label 1), edema (2), enhancing (4; 2023: 3). Scored
foreground: the whole tumour {1, 2, 3} - the paper reports one 3D IoU for BraTS without naming
the region; whole tumour is BraTS' standard region and what one foreground IoU over a tumour means.
Split: LVM-Med publishes none for BraTS, so a seeded split by case, 70/10/20 (train/val/test),
recorded in dataset.json; slices of one case never straddle splits. `--exclude-from LIST` (LVM-Med's
lvm-med-training-data list of BraTS cases) moves listed test cases to train, counted in dataset.json.
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets.splits import exclude_from_test, record_split
from medssl_bench.downstream.datasets._paths import SKIP_DIRS
from medssl_bench.downstream.datasets.canonical import SYNTHETIC_MARKER, allocate, is_synthetic, synthetic_output
from medssl_bench.downstream.datasets.canonical_seg import (
    SegItem, UnknownCodes, map_codes, nifti_header, read_nifti, seeded_case_split, volume_to_uint8, write_segmentation_dataset,
)
from medssl_bench.downstream.phantoms.seg_brats import brats_case, depth_range, nifti_gz_bytes
from medssl_bench.harness.errors import UserError

NAME = "brats"
KIND = "3d"
CLASSES = ["background", "necrotic_core", "edema", "enhancing"]
TARGET_CLASSES = [1, 2, 3]  # whole tumour
LAYOUT = ("MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz "
          "(also BraTS2021 <case>/ folders, BraTS 2023 <case>-{t1c,t1n,t2f,t2w,seg}.nii.gz)")
DEFAULT_N = 8
DEFAULT_SIZE = 64
MODALITY = "flair"  # the input contrast (one per run, as LVM-Med); BraTS 2023 calls it t2f
NAMINGS = {  # naming -> (modalities, input modality, raw code -> class index)
    "2018/2021": (("flair", "t1", "t1ce", "t2"), "flair", {0: 0, 1: 1, 2: 2, 4: 3}),
    "2023": (("t1c", "t1n", "t2f", "t2w"), "t2f", {0: 0, 1: 1, 2: 2, 3: 3}),
}
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
_FILE = re.compile(r"^(?P<case>.+)[_-](?P<mod>flair|t1ce|t1|t2|t1c|t1n|t2f|t2w|seg)\.nii(?:\.gz)?$", re.I)
_MAX_DEPTH = 5  # folders below src searched for case folders
_TAG = 0xB4A7


def _find_cases(src: Path) -> tuple[dict[str, dict], list[Path]]:
    """{case id: {"folder", "files": {modality: path}, "naming", "grade"}} and the ignored files."""
    src = Path(src)
    if not src.is_dir():
        raise UserError("does not exist" if not src.exists() else "is not a folder", src)
    cases, ignored, base = {}, [], len(src.parts)
    for folder, dirs, files in os.walk(src):
        folder = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and len(folder.parts) - base < _MAX_DEPTH)
        matched = {}
        for name in sorted(files):
            m = None if name.startswith(".") else _FILE.match(name)  # "._x.nii.gz": macOS zip residue
            if m is None:
                if name != SYNTHETIC_MARKER:
                    ignored.append(folder / name)  # survival_data.csv, name_mapping.csv, .DS_Store, ...
                continue
            path, mod = folder / name, m["mod"].lower()
            if m["case"] != folder.name:
                raise UserError(f"file carries case id {m['case']!r} but sits in case folder "
                                f"{folder.name!r}: image and label volumes must share the case id", path)
            if mod in matched:
                raise UserError(f"two {mod} volumes in one case folder ({matched[mod].name} and {name})", path)
            matched[mod] = path
        if not matched:
            continue
        namings = {n for n, (mods, _, _) in NAMINGS.items() if (set(matched) - {"seg"}) & set(mods)}
        if len(namings) > 1:
            raise UserError("mixes BraTS 2018/2021 suffixes (flair, t1, t1ce, t2) with 2023 ones "
                            f"(t1c, t1n, t2f, t2w): {', '.join(sorted(p.name for p in matched.values()))}", folder)
        naming = namings.pop() if namings else "2018/2021"
        sep = "-" if naming == "2023" else "_"
        input_mod = NAMINGS[naming][1]
        for needed, what in (("seg", "segmentation"), (input_mod, f"input modality ({input_mod})")):
            if needed not in matched:
                raise UserError(f"case {folder.name} has no {what} volume (expected "
                                f"{folder.name}{sep}{needed}.nii.gz; BraTS validation cases carry no "
                                "labels: point at the training folder)", folder / f"{folder.name}{sep}{needed}.nii.gz")
        if folder.name in cases:
            raise UserError(f"case {folder.name} appears twice (also in {cases[folder.name]['folder']})", folder)
        grade = folder.parent.name.upper() if folder.parent.name.upper() in ("HGG", "LGG") else ""
        cases[folder.name] = {"folder": folder, "files": matched, "naming": naming, "grade": grade}
    if not cases:
        raise UserError(f"no BraTS case folders (<case>/<case>_seg.nii.gz) found; expected {LAYOUT}", src)
    by_naming = {}
    for case, info in cases.items():
        by_naming.setdefault(info["naming"], case)
    if len(by_naming) > 1:
        (n1, c1), (n2, c2) = sorted(by_naming.items())
        raise UserError(f"mixes releases: case {c1} uses {n1} names, case {c2} uses {n2} names (their "
                        "enhancing-tumour labels differ); prepare one release at a time", src)
    return cases, ignored


def _slices(cases: dict[str, dict], split: dict[str, str], warnings: list[str], strict: bool, unknown: UnknownCodes):
    """SegItems, one per axial slice, case by case; every bad volume raises a UserError."""
    empty_tumour = []
    for case in sorted(cases):
        info = cases[case]
        _, input_mod, codebook = NAMINGS[info["naming"]]
        img_path, seg_path = info["files"][input_mod], info["files"]["seg"]
        image, seg = read_nifti(img_path), read_nifti(seg_path, label=True)
        if image.shape != seg.shape:
            raise UserError(f"image volume is {image.shape} but its segmentation {seg_path.name} is "
                            f"{seg.shape}: they must be voxel-aligned", img_path)
        if not np.all(np.isfinite(image)):
            raise UserError("image volume holds NaN or infinite values", img_path)
        if float(image.max()) == float(image.min()):
            raise UserError(f"image volume is empty (every voxel is {float(image.max()):g})", img_path)
        _refuse_other_release_codes(seg, info["naming"], seg_path)
        mask = map_codes(seg, codebook, seg_path, strict=strict, unknown=unknown)
        if not mask.any():
            empty_tumour.append(case)
        pixels = volume_to_uint8(image)
        for z in range(pixels.shape[2]):
            yield SegItem(f"{case}_{z:03d}", pixels[:, :, z], mask[:, :, z], split[case], case, z, "", img_path)
    warnings.extend(unknown.warnings())  # read by the writer after the stream ends
    if empty_tumour:
        warnings.append(f"{len(empty_tumour)} case(s) have no tumour voxels: {', '.join(empty_tumour[:5])}")


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a BraTS training download (2018, 2021 or 2023 naming) and write `out_root/brats/`."""
    options = supported(options, NAME, exclude_from=True)
    src = Path(src)
    cases, ignored = _find_cases(src)
    naming = next(iter(cases.values()))["naming"]
    mods, input_mod, codebook = NAMINGS[naming]
    split = seeded_case_split(cases, SPLIT_FRACTIONS, seed)
    # LVM-Med pretrained on 56 BraTS volumes (its lvm-med-training-data list): --exclude-from keeps
    # listed cases out of test, moved to train, so its released checkpoint is not scored on them.
    names = sorted(cases)
    labels = [split[case] for case in names]
    excluded = exclude_from_test(names, labels, options)
    split = dict(zip(names, labels))
    total = sum(nifti_header(info["files"][input_mod])[0][2] for info in cases.values())
    unused = sum(len(info["files"]) - 2 for info in cases.values())
    grades = {g: sum(1 for i in cases.values() if i["grade"] == g) for g in ("HGG", "LGG", "")}
    marker = is_synthetic(src, *[p for p in sorted(src.iterdir()) if p.is_dir()])
    warnings: list[str] = []
    if len(cases) < 3:
        warnings.append(f"only {len(cases)} case(s): the val and test splits cannot all be filled")
    notes = [f"input modality {input_mod} (one per run, as LVM-Med); other modalities ignored",
             "scored foreground = whole tumour (classes 1-3): the paper's BraTS 3D IoU names no region",
             f"split by case, seeded {SPLIT_FRACTIONS[0]:.0%}/{SPLIT_FRACTIONS[1]:.0%}/{SPLIT_FRACTIONS[2]:.0%}"
             " (LVM-Med publishes no BraTS split)"]
    if ignored:
        notes.append(f"ignored {len(ignored)} non-volume file(s), e.g. "
                     + ", ".join(str(p.relative_to(src)) for p in ignored[:3]))
    code_of = {index: code for code, index in codebook.items()}
    unknown = UnknownCodes()
    folder = write_segmentation_dataset(
        out_root, NAME, KIND, CLASSES, _slices(cases, split, warnings, options.strict, unknown),
        source={"layout": LAYOUT, "src": str(src.resolve()), "naming": naming, "modality": input_mod,
                "synthetic_marker": marker},
        split_method=(f"seeded by case {SPLIT_FRACTIONS[0]:.0%}/{SPLIT_FRACTIONS[1]:.0%}/"
                      f"{SPLIT_FRACTIONS[2]:.0%} train/val/test (paper's split not published)"),
        seed=seed, synthetic=marker is not None,
        label_codes={name: [code_of[i]] for i, name in enumerate(CLASSES)},
        target_classes=TARGET_CLASSES, total=total,
        extra={"input_modality": input_mod, "ignored_files": len(ignored), "unused_modality_files": unused,
               "grades": {k or "none": v for k, v in grades.items() if v}, "n_cases": len(cases),
               "unknown_label_codes": unknown.record},
        notes=notes, warnings=warnings, progress=progress)
    return record_split(folder, exclude_from=excluded)


def _refuse_other_release_codes(seg: np.ndarray, naming: str, seg_path: Path) -> None:
    """The enhancing-tumour code of the other BraTS release (4 in a 2023-named case, 3 in a 2018/2021
    one) is not stray noise to map to background: it means the labels follow the other release, and
    background would drop enhancing tumour from the scored whole tumour. Refused even without --strict."""
    other = {code for name, (_, _, book) in NAMINGS.items() if name != naming for code in book} - \
        set(NAMINGS[naming][2])
    found = sorted(int(c) for c in np.unique(seg) if int(c) in other)
    if found:
        raise UserError(f"label value(s) {', '.join(map(str, found))} outside the codebook "
                        f"{sorted(NAMINGS[naming][2])}: the enhancing-tumour code of the other BraTS release, "
                        f"in a case with {naming} names; prepare the release as it was published", seg_path)


# ----------------------------------------------------------------------------- synthetic
def _case_name(high_grade: bool, k: int, plan: np.random.Generator) -> str:
    """BraTS 2018 style ids: Brats18_2013_<n>_1, Brats18_CBICA_<AAA>_1, Brats18_TCIA<nn>_<nnn>_1."""
    site = int(plan.integers(3)) if high_grade else 2 * int(plan.integers(2))
    if site == 0:
        return f"Brats18_2013_{k}_1"
    if site == 1:
        letters = "".join(chr(65 + (k // 26 ** i) % 26) for i in (2, 1, 0))
        return f"Brats18_CBICA_{letters}_1"
    return f"Brats18_TCIA{int(plan.integers(1, 11)):02d}_{100 + k}_1"


def synthetic_volume(seed: int, index: int, size: int, high_grade: bool):
    """The phantom for case `index` (as synthesize writes it): (images, seg codes, depth)."""
    rng = np.random.default_rng([int(seed) % 2 ** 63, _TAG, 1, index])
    lo, hi = depth_range(size)
    depth = int(rng.integers(lo, hi + 1))
    images, seg = brats_case(rng, size, depth, high_grade)
    return images, seg, depth


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
    """Write a synthetic MICCAI_BraTS_2018_Data_Training folder (HGG/ and LGG/ case folders, five
    NIfTI files per case with one shared affine, survival_data.csv) at `out`."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise UserError(f"n={n} is too small (minimum 3 volumes: one per split)")
    if int(size) < 32:
        raise UserError(f"size={size} is too small (minimum 32 px)")
    seed, size = int(seed) % 2 ** 63, int(size)
    plan = np.random.default_rng([seed, _TAG, 0])
    n_hgg = allocate(int(n), (0.74, 0.26), minimum=1)[0]  # BraTS 2018: 210 HGG / 75 LGG
    marker = {"generator": "bench.datasets.brats", "version": 1, "seed": seed, "n": int(n), "size": size}
    survival = io.StringIO()
    rows = csv.writer(survival, lineterminator="\n")
    rows.writerow(["BraTS18ID", "Age", "Survival"])
    with synthetic_output(Path(out), marker) as tmp:
        for index in range(int(n)):
            high_grade = index < n_hgg
            case = _case_name(high_grade, index, plan)
            folder = tmp / ("HGG" if high_grade else "LGG") / case
            folder.mkdir(parents=True)
            images, seg, depth = synthetic_volume(seed, index, size, high_grade)
            spacing = (240.0 / size, 240.0 / size, 120.0 / max(depth - 1, 1))
            for mod, vol in images.items():
                (folder / f"{case}_{mod}.nii.gz").write_bytes(nifti_gz_bytes(vol, spacing, np.int16))
            (folder / f"{case}_seg.nii.gz").write_bytes(nifti_gz_bytes(seg, spacing, np.uint8))
            if high_grade:  # survival data exists for (some) HGG cases only
                rows.writerow([case, f"{plan.uniform(30, 80):.3f}", int(plan.integers(50, 1500))])
        (tmp / "survival_data.csv").write_text(survival.getvalue())
    return Path(out)
