"""The canonical on-disk form of a prepared segmentation dataset (2D images or 3D volumes as slices).

    <out_root>/<name>/dataset.json   format "bench-dataset/1", family "segmentation": kind (2d/3d),
                                     classes (index 0 = background), the raw label codes per class,
                                     target classes of the paper's metric, split rule and counts,
                                     domains (sites), content hash, source, synthetic flag
    <out_root>/<name>/samples.csv    id,image,mask,split,case,slice,domain
    <out_root>/<name>/images/...     2D images (hard links to the download where it decodes as is,
                                     else PNG) and 3D slices (8-bit PNG, windowed once per volume)
    <out_root>/<name>/masks/<id>.png uint8 class-index maps, same height and width as the image

`case` groups rows: a 2D image is its own case; the slices of a volume share the volume's case id
(splits are by case, never by slice: `write_segmentation_dataset` refuses a case in two splits).
`domain` is the acquisition site where a task has several (prostate), else empty.

Adapters read the raw download, turn every label encoding (GIF palettes, JPEG masks, NIfTI codes)
into class indices with `map_codes` (unknown codes: background, counted in `UnknownCodes`, or an
error with strict) / `binarise`, and stream `SegItem`s to the writer, which checks
each image against its mask, builds the folder beside the target and swaps it in when complete.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageOps

from medssl_bench.downstream.datasets.canonical import FORMAT, SPLITS, read_dataset_meta, staged_folder, unique_id
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import ensure_writable_dir, sha256_bytes, sha256_file, write_json_atomic
from medssl_bench.harness.imageio import PIL_SUFFIXES, read_pixels
from medssl_bench.harness.pixel_budget import check_pixel_budget

CSV_HEADER = ["id", "image", "mask", "split", "case", "slice", "domain"]
KINDS = ("2d", "3d")
Progress = Callable[[int, int], None]


class SegItem(NamedTuple):
    """One image (or slice) as an adapter hands it over.

    image: a file that decodes as is (linked) or a uint8/uint16 array (H, W) or (H, W, 3) (PNG);
    mask: uint8 class indices (H, W); source: the file to name when something is wrong with it.
    """

    key: str
    image: Path | np.ndarray
    mask: np.ndarray
    split: str
    case: str = ""
    slice: int | None = None
    domain: str = ""
    source: Path | None = None


@dataclass(frozen=True)
class SegSample:
    id: str
    image: Path
    mask: Path
    split: str
    case: str
    slice: int | None
    domain: str


@dataclass
class SegmentationDataset:
    name: str
    kind: str
    classes: list[str]
    samples: list[SegSample]
    meta: dict
    root: Path | None = field(default=None, compare=False)

    def split(self, name: str, domain: str | None = None) -> list[SegSample]:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r} (choose from {', '.join(SPLITS)})", self.root)
        return [s for s in self.samples if s.split == name and (domain is None or s.domain == domain)]

    def cases(self, name: str, domain: str | None = None) -> list[str]:
        return list(dict.fromkeys(s.case for s in self.split(name, domain)))

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(s.domain for s in self.samples))

    @property
    def target_classes(self) -> list[int]:
        return list(self.meta.get("target_classes") or [1])


# ----------------------------------------------------------------------------- label encodings
class UnknownCodes:
    """Tally of the label codes outside a codebook that `map_codes` read as background (the
    default, as the public loaders do: LVM-Med maps unknown labels to background). `record` is
    the dict an adapter puts in dataset.json (`unknown_label_codes`), `warnings()` the lines for
    its `warnings`; both are read after the stream of items has ended."""

    def __init__(self, unit: str = "voxel"):
        self.unit = unit
        self.record: dict = {"total": 0, "codes": {}, "files": {}}

    def add(self, source: Path | str, counts: dict[int, int]) -> None:
        where = str(source)
        for code, n in counts.items():
            self.record["codes"][str(code)] = self.record["codes"].get(str(code), 0) + int(n)
            self.record["total"] += int(n)
        files = self.record["files"]
        files[where] = files.get(where, 0) + int(sum(counts.values()))

    def warnings(self) -> list[str]:
        rec = self.record
        if not rec["total"]:
            return []
        codes = ", ".join(f"{c} ({n})" for c, n in sorted(rec["codes"].items(), key=lambda kv: int(kv[0])))
        first = next(iter(rec["files"]))
        return [f"{rec['total']} {self.unit}(s) in {len(rec['files'])} file(s) held label code(s) outside the "
                f"codebook, read as background: {codes}; e.g. {first} (--strict refuses them)"]


def map_codes(values: np.ndarray, codebook: dict[int, int], source: Path | str, *, other: int | None = None,
              strict: bool = True, unknown: UnknownCodes | None = None) -> np.ndarray:
    """Raw label codes -> class indices (uint8). A code outside `codebook` becomes class `other`
    when given; else, with `strict`, it is an error naming `source` and the offending values;
    without `strict` it becomes background (0), its voxels counted in `unknown` (required then)."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise UserError("label volume holds non-integer values: not a label map", source)
        values = values.astype(np.int64)
    codes = np.unique(values)
    unknown_codes = [int(c) for c in codes if int(c) not in codebook]
    if unknown_codes and other is None:
        if strict:
            shown = ", ".join(map(str, unknown_codes[:8])) + (" ..." if len(unknown_codes) > 8 else "")
            raise UserError(f"label value(s) {shown} outside the codebook {sorted(codebook)}", source)
        if unknown is None:
            raise ValueError("map_codes(strict=False) needs an UnknownCodes tally")  # adapter bug
        unknown.add(source, {c: int(np.count_nonzero(values == c)) for c in unknown_codes})
    out = np.full(values.shape, other or 0, np.uint8)
    for code, index in codebook.items():
        out[values == code] = index
    return out


def binarise(gray: np.ndarray, *, threshold: int = 128) -> np.ndarray:
    """A 0/255 mask (possibly JPEG-noisy, or a 0/1 palette index map) -> 0/1 uint8."""
    gray = np.asarray(gray)
    if gray.ndim == 3:
        gray = gray.max(axis=2)
    if gray.size and gray.max() <= 1:  # a palette GIF read as indices, or an already-binary map
        return (gray > 0).astype(np.uint8)
    return (gray >= threshold).astype(np.uint8)


def read_mask_gray(path: Path) -> np.ndarray:
    """A mask file as 8-bit gray (palette GIFs through their palette: always convert('L')), turned
    by its EXIF orientation as images are, so a mask stays aligned with its image."""
    try:
        with Image.open(path) as im:
            check_pixel_budget(im.size, path, "mask")  # the budget images have (harness.pixel_budget)
            im.load()
            # oriented like its image (harness.imageio reads images EXIF-transposed)
            return np.asarray(ImageOps.exif_transpose(im).convert("L"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"unreadable mask ({type(exc).__name__}: {exc})", path) from None


def volume_to_uint8(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """A 3D intensity volume windowed once (percentiles over the whole volume, as LVM-Med's
    preprocessing) to uint8, so every slice of a volume shares one intensity scale."""
    volume = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(volume, [low, high])
    if hi <= lo:
        return np.zeros(volume.shape, np.uint8)
    return np.clip((volume - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_nifti(path: Path, *, label: bool = False) -> np.ndarray:
    """A NIfTI volume as (H, W, D): reoriented to the closest canonical (RAS+) orientation and each
    axial slice rotated upright, exactly as the corpus decoder slices NIfTI (harness.imageio), so
    images and label maps read through here stay voxel-aligned. 4D: the first volume. Labels are
    read without scaling (int64); images as float32. Errors name the file."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if len(img.shape) < 3:
            raise UserError(f"NIfTI has shape {img.shape}: a volume needs 3 dimensions", path)
        if len(img.shape) > 3:
            img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj) if label else np.asarray(img.get_fdata(dtype=np.float32))
    except UserError:
        raise
    except Exception as exc:  # nibabel raises many types for truncated/garbled files
        raise UserError(f"unreadable NIfTI ({type(exc).__name__}: {exc})", path) from None
    if data.size == 0:
        raise UserError(f"NIfTI volume is empty (shape {data.shape})", path)
    if label:
        if data.dtype.kind == "f":
            if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
                raise UserError("label volume holds non-integer values: not a label map", path)
        data = data.astype(np.int64)
    return np.ascontiguousarray(np.rot90(data, axes=(0, 1)))


def nifti_header(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape as `read_nifti` returns it before the in-plane rotation, i.e. canonical RAS+ axis
    order, affine) from the header alone: cheap checks of a pair and slice counts for progress."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape, affine = img.shape, img.affine
        ornt = nib.orientations.io_orientation(affine)
    except Exception as exc:  # nibabel raises many types for garbled headers
        raise UserError(f"unreadable NIfTI ({type(exc).__name__}: {exc})", path) from None
    if len(shape) < 3:
        raise UserError(f"NIfTI has shape {shape}: a volume needs 3 dimensions", path)
    canonical = [0, 0, 0]
    for axis in range(3):
        canonical[int(ornt[axis, 0])] = int(shape[axis])
    return tuple(canonical), affine


def seeded_case_split(cases, fractions, seed) -> dict[str, str]:
    """{case: split}: a seeded permutation of the sorted case ids cut by `fractions` (train, val,
    test); each split gets a case when there are at least three. 3D data is split by case."""
    from medssl_bench.downstream.datasets.canonical import allocate

    cases = sorted(cases)
    counts = allocate(len(cases), fractions, minimum=1)
    order = np.random.default_rng(seed).permutation(len(cases))
    out, start = {}, 0
    for split, k in zip(SPLITS, counts):
        out.update({cases[i]: split for i in order[start:start + k]})
        start += k
    return out


# ----------------------------------------------------------------------------- writing
def place_image(item: SegItem, dst_dir: Path, sid: str) -> tuple[str, tuple[int, int], str]:
    """Place the image (link or PNG); return (relative path, (H, W), sha256)."""
    if isinstance(item.image, np.ndarray):
        arr = np.ascontiguousarray(item.image)
        if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3):
            raise ValueError(f"bad image array {arr.dtype} {arr.shape} for {item.key}")  # adapter bug
        rel = f"images/{sid}.png"
        Image.fromarray(arr).save(dst_dir / rel, compress_level=1)
        return rel, arr.shape[:2], sha256_file(dst_dir / rel)
    path = Path(item.image)
    pixels = read_pixels(path)  # a corrupt image fails here, naming the file
    rel = f"images/{sid}{path.suffix.lower()}"
    try:
        os.link(path, dst_dir / rel)
    except OSError:
        shutil.copy2(path, dst_dir / rel)
    return rel, pixels.shape[:2], sha256_file(dst_dir / rel)


def write_segmentation_dataset(out_root: Path, name: str, kind: str, classes: Sequence[str],
                               items: Iterable[SegItem], *, source: dict, split_method: str, seed: int | None,
                               synthetic: bool, label_codes: dict | None = None,
                               target_classes: Sequence[int] = (1,), total: int | None = None,
                               extra: dict | None = None, notes: Sequence[str] = (),
                               warnings: Sequence[str] = (), progress: Progress | None = None) -> Path:
    """Write `out_root/<name>/` from a stream of items and return that folder (nothing is left
    behind on error). `total` (number of items, if known) drives the progress bar."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    classes = [str(c) for c in classes]
    src = source.get("src")
    out_root = ensure_writable_dir(Path(out_root))
    counts = {s: {"cases": 0, "images": 0, "foreground_images": 0} for s in SPLITS}
    case_split: dict[tuple[str, str], str] = {}
    hash_rows, seen = [], set()
    with staged_folder(out_root / name) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        with open(tmp / "samples.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            if progress:
                progress(0, total or 0)
            for done, item in enumerate(items, 1):
                if item.split not in SPLITS:
                    raise ValueError(f"bad split in {item}")  # adapter bug
                where = item.source or (item.image if isinstance(item.image, Path) else item.key)
                case = item.case or item.key
                previous = case_split.setdefault((item.domain, case), item.split)
                if previous != item.split:
                    raise UserError(f"case {case!r} is in both the {previous} and {item.split} splits "
                                    "(3D data is split by volume, never by slice)", where)
                sid = unique_id(item.key, seen)
                rel, shape, digest = place_image(item, tmp, sid)
                mask = np.asarray(item.mask)
                if mask.shape != tuple(shape):
                    raise UserError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                    f"{shape[1]}x{shape[0]} (width x height)", where)
                if mask.dtype != np.uint8 or (mask.size and int(mask.max()) >= len(classes)):
                    raise UserError(f"mask holds class index {int(mask.max())}, but there are only "
                                    f"{len(classes)} classes", where)
                mask_rel = f"masks/{sid}.png"
                Image.fromarray(mask).save(tmp / mask_rel, compress_level=1)
                hash_rows.append(f"{item.split}\t{item.domain}\t{digest}\t{sha256_bytes(mask.tobytes())}\n")
                counts[item.split]["images"] += 1
                counts[item.split]["foreground_images"] += int(bool(mask.any()))
                writer.writerow([sid, rel, mask_rel, item.split, case,
                                 "" if item.slice is None else int(item.slice), item.domain])
                if progress:
                    progress(done, max(total or 0, done))
        for (_, _), split in case_split.items():
            counts[split]["cases"] += 1
        if counts["train"]["images"] == 0:
            raise UserError("no training images: nothing to train a segmentation model on", src)
        meta = {
            "format": FORMAT, "dataset": name, "family": "segmentation", "kind": kind, "classes": classes,
            "label_codes": label_codes or {}, "target_classes": [int(c) for c in target_classes],
            "synthetic": bool(synthetic), "content_hash": sha256_bytes("".join(sorted(hash_rows)).encode()),
            "source": dict(source), "split": {"method": split_method, "seed": seed, "counts": counts},
            "domains": sorted({d for d, _ in case_split}), "n_samples": len(hash_rows),
            "notes": list(notes), "warnings": list(warnings),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {}),
        }
        write_json_atomic(tmp / "dataset.json", meta)
    return out_root / name


# ----------------------------------------------------------------------------- loading
def load_segmentation_dataset(folder: Path) -> SegmentationDataset:
    """Read and validate a prepared segmentation folder; every problem is a UserError naming a file."""
    folder = Path(folder)
    meta, csv_path = read_dataset_meta(folder, "segmentation")
    if len(meta["classes"]) < 2 or meta.get("kind") not in KINDS:
        raise UserError("'classes' (>= 2, background first) and 'kind' (2d/3d) are required", folder / "dataset.json")
    classes = meta["classes"]
    samples, ids = [], set()
    with open(csv_path, newline="") as handle:
        reader = csv.reader(handle)
        if (header := next(reader, None)) != CSV_HEADER:
            raise UserError(f"header is {header}, expected {','.join(CSV_HEADER)}", csv_path)
        for row in reader:
            where = f"row {reader.line_num}"
            if len(row) != len(CSV_HEADER):
                raise UserError(f"{where}: expected {len(CSV_HEADER)} columns, got {len(row)}", csv_path)
            sid, image, mask, split, case, slice_, domain = row
            if split not in SPLITS:
                raise UserError(f"{where}: unknown split {split!r} (expected {', '.join(SPLITS)})", csv_path)
            if sid in ids:
                raise UserError(f"{where}: duplicate id {sid!r}", csv_path)
            if slice_ and not re.fullmatch(r"\d+", slice_):
                raise UserError(f"{where}: slice {slice_!r} is not a number", csv_path)
            paths = (folder / image).resolve(), (folder / mask).resolve()
            for rel, path in zip((image, mask), paths):
                if not path.is_file():
                    raise UserError(f"{where}: file {rel} is missing", csv_path)
            ids.add(sid)
            samples.append(SegSample(sid, paths[0], paths[1], split, case or sid,
                                     int(slice_) if slice_ else None, domain))
    return SegmentationDataset(str(meta.get("dataset", folder.name)), meta["kind"], classes, samples, meta, folder)


def check_suffix(path: Path) -> bool:
    """Whether an image file can be linked as is (a format the canonical reader decodes)."""
    return path.suffix.lower() in PIL_SUFFIXES
