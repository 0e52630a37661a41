"""MM-WHS 2017 whole-heart segmentation, CT and MRI (docs/datasets.md): one reader and synthetic
writer, two adapters (`CT` = dataset mmwhs_ct, `MRI` = mmwhs_mri; modality prefixes "ct" / "mr").

Layout: <p>_train/<p>_train_10NN_image.nii.gz + <p>_train_10NN_label.nii.gz (20 labelled
volumes, 1001-1020) and <p>_test/<p>_test_20NN_image.nii.gz (no labels: counted, not used),
p = ct or mr; both modalities may sit side by side in one download folder.
Labels: 205 LV myocardium, 420 left atrium, 500 LV blood, 550 right atrium, 600 right ventricle,
820 ascending aorta, 850 pulmonary artery -> classes 1..7 in sorted code order (LVM-Med's remap);
the stray code 421 reported in one MR label becomes background with a warning; any other code
also becomes background, counted (dataset.json `unknown_label_codes`) and warned about, as the
public loaders do (LVM-Med maps unknown labels to background), or with `strict` is an error. Scored foreground: class 2 = code 420 = left atrium (LVM-Med's eval_class 2, tasks
"las_ct"/"las_mri"); the other structures are kept for all-structure scoring.
Split: LVM-Med's published volume ids (files_split/MMWHS_*_Heart.json, same for CT and MR) when
the labelled ids are exactly 1001-1020; otherwise a seeded split by volume, 65/15/20.
Intensities (options.normalisation, recorded in dataset.json `normalisation`): "window" (default),
one percentile window (0.5-99.5) per volume mapped to 0-255; "lvmmed", LVM-Med's preprocessing
(datasets_split/MMWHS_{CT,MR}_Heart_split.py `__itensity_normalize_one_volume__`, per volume: clip
to the 0.5-99.5 percentiles, z-score with the clipped volume's mean and std, /10, clip to [0, 1],
then `(x * 255).astype(uint8)`, i.e. truncated). One sample per axial slice.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import candidate_roots, child
from medssl_bench.downstream.datasets.canonical import SYNTHETIC_MARKER, is_synthetic, synthetic_output
from medssl_bench.downstream.datasets.canonical_seg import (
    SegItem, UnknownCodes, map_codes, nifti_header, read_nifti, seeded_case_split, volume_to_uint8, write_segmentation_dataset,
)
from medssl_bench.downstream.phantoms.seg_brats import depth_range, nifti_gz_bytes
from medssl_bench.downstream.phantoms.seg_heart import heart_case
from medssl_bench.harness.errors import UserError

KIND = "3d"
MODALITIES = ("ct", "mr")  # file-name prefixes
CLASSES = ["background", "lv_myocardium", "left_atrium", "lv_blood", "right_atrium", "right_ventricle",
           "ascending_aorta", "pulmonary_artery"]
CODEBOOK = {0: 0, 205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
STRAY_CODE = 421  # reported in one real MR label; read as background
TARGET_CLASSES = [2]  # left atrium
PUBLISHED_SPLIT = {  # LVM-Med's volume ids (identical for CT and MR)
    "train": (1001, 1003, 1005, 1006, 1008, 1009, 1011, 1014, 1015, 1016, 1017, 1018, 1020),
    "val": (1004, 1007, 1013),
    "test": (1002, 1010, 1012, 1019),
}
SEEDED_FRACTIONS = (0.65, 0.15, 0.2)
NORMALISATIONS = {
    "window": "0.5-99.5 percentile window per volume, mapped linearly to 0-255 (bench's default)",
    "lvmmed": ("LVM-Med's MMWHS preprocessing (datasets_split/MMWHS_*_Heart_split.py), per volume: clip to the "
               "0.5-99.5 percentiles, z-score (mean, std of the clipped volume), /10, clip to [0, 1], x255 truncated "
               "to uint8"),
}
DEFAULT_N = 8
DEFAULT_SIZE = 64
SYNTH_TEST_VOLUMES = 2
_TAG = {"ct": 0x3C71, "mr": 0x3E72}


def layout(modality: str) -> str:
    p = modality
    return (f"{p}_train/{p}_train_10NN_image.nii.gz + {p}_train_10NN_label.nii.gz (labelled), "
            f"{p}_test/{p}_test_20NN_image.nii.gz (unlabelled, ignored)")


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return modality


def find_folders(src: Path, modality: str) -> tuple[Path, Path | None]:
    """(<p>_train folder, <p>_test folder or None) in `src`, `src`'s single wrapper folder, or
    `src` itself when it is the <p>_train folder."""
    src, p = Path(src), _check_modality(modality)
    folders = candidate_roots(src)
    if src.name.lower() == f"{p}_train":
        return src, child(src.parent, f"{p}_test")
    for folder in folders:
        train = child(folder, f"{p}_train")
        if train is not None:
            return train, child(folder, f"{p}_test")
    other = next(m for m in MODALITIES if m != p)
    hint = f" (it has {other}_train/: use the {'mmwhs_mri' if other == 'mr' else 'mmwhs_ct'} dataset)" \
        if any(child(f, f"{other}_train") for f in folders) else ""
    raise UserError(f"no {p}_train/ folder found{hint}; expected {layout(p)}", src)


def _pairs(train: Path, modality: str) -> tuple[dict[int, dict[str, Path]], list[Path]]:
    """{volume id: {"image": path, "label": path}} of the train folder, and the ignored files."""
    p = modality
    pattern = re.compile(r"^(?P<mod>ct|mr)_train_(?P<id>\d+)_(?P<kind>image|label)\.nii(?:\.gz)?$", re.I)
    found: dict[int, dict[str, Path]] = {}
    ignored = []
    for path in sorted(train.iterdir()):
        m = pattern.match(path.name)
        if m is None or not path.is_file():
            if path.name != SYNTHETIC_MARKER:
                ignored.append(path)
            continue
        if m["mod"].lower() != p:
            raise UserError(f"a {m['mod'].upper()} volume in the {p.upper()} folder {train.name}/: image and "
                            "label volumes of one case must share the modality and case id", path)
        vid, kind = int(m["id"]), m["kind"].lower()
        if kind in found.setdefault(vid, {}):
            raise UserError(f"volume {vid} has two {kind} files ({found[vid][kind].name} and {path.name})", path)
        found[vid][kind] = path
    for vid, files in sorted(found.items()):
        for have, missing in (("image", "label"), ("label", "image")):
            if missing not in files:
                name = re.sub(rf"_{have}\.", f"_{missing}.", files[have].name, flags=re.I)
                raise UserError(f"{have} volume without its {missing} volume (expected {name} beside it)",
                                files[have])
    if not found:
        raise UserError(f"no {p}_train_<id>_image/label.nii.gz pairs; expected {layout(p)}", train)
    return found, ignored


def _split(ids: list[int], seed: int) -> tuple[dict[int, str], str]:
    published = {vid: split for split, vids in PUBLISHED_SPLIT.items() for vid in vids}
    if set(ids) == set(published):
        return published, ("LVM-Med's published volume ids (files_split/MMWHS_*_Heart.json): "
                           "train 13 / val 3 / test 4")
    by_case = seeded_case_split([str(v) for v in ids], SEEDED_FRACTIONS, seed)
    return ({int(k): v for k, v in by_case.items()},
            f"seeded by volume {SEEDED_FRACTIONS[0]:.0%}/{SEEDED_FRACTIONS[1]:.0%}/{SEEDED_FRACTIONS[2]:.0%} "
            "train/val/test (volume ids are not exactly the published 1001-1020)")


def lvmmed_uint8(volume: np.ndarray) -> np.ndarray:
    """LVM-Med's `__itensity_normalize_one_volume__` then `(x * 255).astype('uint8')`, on one whole
    volume, in float64 as its `get_fdata()`; a volume constant after clipping becomes zeros."""
    image = np.asarray(volume, dtype=np.float64)
    bot, top = np.percentile(image, 0.5), np.percentile(image, 99.5)
    image = np.clip(image, bot, top)
    std = float(np.std(image))
    if std == 0.0:
        return np.zeros(image.shape, np.uint8)
    image = np.clip((image - np.mean(image)) / std / 10.0, 0.0, 1.0)
    return (image * 255).astype(np.uint8)


def _slices(pairs, split, modality: str, warnings: list[str], strict: bool = True,
            unknown: UnknownCodes | None = None, normalisation: str = "window"):
    """SegItems, one per axial slice, volume by volume; every bad volume raises a UserError."""
    for vid in sorted(pairs):
        img_path, lab_path = pairs[vid]["image"], pairs[vid]["label"]
        image, label = read_nifti(img_path), read_nifti(lab_path, label=True)
        if image.shape != label.shape:
            raise UserError(f"image volume is {image.shape} but its label {lab_path.name} is {label.shape}: "
                            "they must be voxel-aligned", img_path)
        if not np.all(np.isfinite(image)):
            raise UserError("image volume holds NaN or infinite values", img_path)
        if float(image.max()) == float(image.min()):
            raise UserError(f"image volume is empty (every voxel is {float(image.max()):g})", img_path)
        stray = int(np.count_nonzero(label == STRAY_CODE))
        if stray:  # read by the writer after the stream ends
            warnings.append(f"{lab_path.name}: {stray} voxel(s) with the stray code {STRAY_CODE} read as background")
            label = np.where(label == STRAY_CODE, 0, label)
        mask = map_codes(label, CODEBOOK, lab_path, strict=strict, unknown=unknown)
        if not np.any(mask == TARGET_CLASSES[0]):
            warnings.append(f"{lab_path.name}: no left-atrium (420) voxels")
        pixels = lvmmed_uint8(image) if normalisation == "lvmmed" else volume_to_uint8(image)
        case = f"{modality}_train_{vid}"
        for z in range(pixels.shape[2]):
            yield SegItem(f"{case}_{z:03d}", pixels[:, :, z], mask[:, :, z], split[vid], case, z, "", img_path)
    if unknown is not None:  # read by the writer after the stream ends
        warnings.extend(unknown.warnings())


def prepare(src: Path, out_root: Path, *, modality: str, name: str, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read the <modality>_train volumes of an MM-WHS 2017 download and write `out_root/<name>/`."""
    options = supported(options, name, normalisation=tuple(NORMALISATIONS))
    src, p = Path(src), _check_modality(modality)
    train, test = find_folders(src, p)
    pairs, ignored = _pairs(train, p)
    test_images = sorted(f for f in test.iterdir() if f.is_file() and "_image.nii" in f.name.lower()) if test else []
    split, method = _split(sorted(pairs), seed)
    total = sum(nifti_header(files["image"])[0][2] for files in pairs.values())
    marker = is_synthetic(src, train.parent)
    warnings: list[str] = []
    unknown = UnknownCodes()
    notes = [f"scored foreground = class 2 left atrium (code 420), as LVM-Med's eval_class 2; all "
             f"{len(CLASSES) - 1} structures are kept",
             f"{len(test_images)} unlabelled {p}_test volume(s) ignored"]
    if ignored:
        notes.append(f"ignored {len(ignored)} other file(s) in {train.name}/, e.g. "
                     + ", ".join(f.name for f in ignored[:3]))
    codes = {index: code for code, index in CODEBOOK.items()}
    return write_segmentation_dataset(
        out_root, name, KIND, CLASSES, _slices(pairs, split, p, warnings, options.strict, unknown,
                                                    options.normalisation),
        source={"layout": layout(p), "src": str(src.resolve()), "modality": p, "synthetic_marker": marker},
        split_method=method, seed=seed, synthetic=marker is not None,
        label_codes={cls: [codes[i]] + ([STRAY_CODE] if i == 0 else []) for i, cls in enumerate(CLASSES)},
        target_classes=TARGET_CLASSES, total=total,
        extra={"n_volumes": len(pairs), "unlabelled_test_volumes": len(test_images), "ignored_files": len(ignored),
               "unknown_label_codes": unknown.record,
               "normalisation": {"name": options.normalisation,
                                 "description": NORMALISATIONS[options.normalisation]},
               "volume_ids": {s: [v for v in sorted(pairs) if split[v] == s] for s in ("train", "val", "test")}},
        notes=notes, warnings=warnings, progress=progress)


# ----------------------------------------------------------------------------- synthetic
def synthetic_volume(modality: str, seed: int, key: str, size: int):
    """The phantom written for volume `key` ("1001", "test-2001"): (image, label codes, depth)."""
    rng = np.random.default_rng([int(seed) % 2 ** 63, _TAG[_check_modality(modality)], *map(ord, key)])
    lo, hi = depth_range(size)
    depth = int(rng.integers(lo, hi + 1))
    image, label = heart_case(rng, size, depth, modality)
    return image, label, depth


def synthesize(out: Path, *, modality: str, n: int = DEFAULT_N, seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
    """Write <p>_train/ (ids 1001..1000+n, image + label) and <p>_test/ (2 unlabelled images) at `out`.
    With n = 20 the ids are the published ones, so prepare uses LVM-Med's split."""
    p = _check_modality(modality)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 3 <= n <= 999:
        raise UserError(f"n={n} is out of range (3 to 999 volumes: at least one per split)")
    if int(size) < 32:
        raise UserError(f"size={size} is too small (minimum 32 px)")
    seed, size = int(seed) % 2 ** 63, int(size)
    fov = 350.0 if p == "ct" else 300.0  # mm, nominal
    marker = {"generator": f"bench.datasets.mmwhs.{p}", "version": 1, "seed": seed, "n": int(n), "size": size}
    with synthetic_output(Path(out), marker) as tmp:
        jobs = [("train", 1001 + i) for i in range(int(n))] + [("test", 2001 + i) for i in range(SYNTH_TEST_VOLUMES)]
        for part, vid in jobs:
            folder = tmp / f"{p}_{part}"
            folder.mkdir(exist_ok=True)
            image, label, depth = synthetic_volume(p, seed, str(vid) if part == "train" else f"test-{vid}", size)
            spacing = (fov / size, fov / size, 0.6 * fov / max(depth - 1, 1))
            (folder / f"{p}_{part}_{vid}_image.nii.gz").write_bytes(nifti_gz_bytes(image, spacing, np.int16))
            if part == "train":
                (folder / f"{p}_{part}_{vid}_label.nii.gz").write_bytes(nifti_gz_bytes(label, spacing, np.int16))
    return Path(out)


# ----------------------------------------------------------------------------- the two adapters
@dataclass(frozen=True)
class ModalityAdapter:
    """The adapter interface (downstream.datasets.Adapter) for one modality."""

    NAME: str
    MODALITY: str
    DEFAULT_N: int = DEFAULT_N
    DEFAULT_SIZE: int = DEFAULT_SIZE

    @property
    def CLASSES(self) -> list[str]:  # noqa: N802  (the adapter interface's name)
        return list(CLASSES)

    @property
    def LAYOUT(self) -> str:  # noqa: N802  (the adapter interface's name)
        return layout(self.MODALITY)

    def prepare(self, src: Path, out_root: Path, *, seed: int = 42, progress=None,
                options: PrepareOptions | None = None) -> Path:
        return prepare(src, out_root, modality=self.MODALITY, name=self.NAME, seed=seed, progress=progress,
                       options=options)

    def synthesize(self, out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
        return synthesize(out, modality=self.MODALITY, n=n, seed=seed, size=size)


CT = ModalityAdapter("mmwhs_ct", "ct")
MRI = ModalityAdapter("mmwhs_mri", "mr")
