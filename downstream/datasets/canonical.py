"""The canonical on-disk form of a prepared classification dataset, its writer and its loader.

    <out_root>/<name>/dataset.json   format "bench-dataset/1": classes, split rule and counts,
                                     content hash, source, synthetic flag, notes
    <out_root>/<name>/samples.csv    id,path,label,split  (path relative to the folder)
    <out_root>/<name>/images/...     the images (hard links where possible, else copies)
    <out_root>/<name>/targets.csv    multi-label / binary only: the target matrix (canonical_multilabel.py)

Adapters (fgadr.py, brain_tumor.py) read a raw download, decide labels and splits and hand the
list to `write_classification_dataset`, which decodes every image once (a corrupt file fails
here, not mid-training), builds the folder beside the target and swaps it in only when
complete. The evaluation code reads it back with `load_classification_dataset`.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import ensure_writable_dir, sha256_bytes, sha256_file, write_json_atomic
from medssl_bench.harness.imageio import PIL_SUFFIXES, read_pixels

FORMAT = "bench-dataset/1"
SPLITS = ("train", "val", "test")
SYNTHETIC_MARKER = ".bench-synthetic.json"
CSV_HEADER = ["id", "path", "label", "split"]
Progress = Callable[[int, int], None]  # progress(images_done, images_total)


class SourceItem(NamedTuple):
    """One raw image as an adapter hands it over. `key` (e.g. its relative path) becomes the
    sample id after sanitising; `label` indexes the class list."""

    key: str
    path: Path
    label: int
    split: str


@dataclass(frozen=True)
class Sample:
    id: str
    path: Path  # absolute
    label: int
    split: str


@dataclass
class ClassificationDataset:
    name: str
    classes: list[str]
    samples: list[Sample]
    meta: dict
    root: Path | None = field(default=None, compare=False)
    task: str = "multiclass"  # or multilabel | binary: then `targets` holds the labels, Sample.label is -1
    targets: np.ndarray | None = field(default=None, compare=False)  # (n, K) raw: 1, 0, -1 uncertain, NaN blank

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r} (choose from {', '.join(SPLITS)})", self.root)
        return [s for s in self.samples if s.split == name]

    def labels(self, split: str) -> np.ndarray:
        if self.task != "multiclass":  # single-label evaluation must not read -1 as a class
            raise UserError(f"a {self.task} dataset has no single class per image (a target matrix)", self.root)
        return np.array([s.label for s in self.split(split)], dtype=np.int64)

    def target_matrix(self, split: str) -> np.ndarray:
        """The raw (n, K) targets of `split` (multilabel / binary datasets)."""
        return self.targets[[s.split == split for s in self.samples]]

    def paths(self, split: str) -> list[Path]:
        return [s.path for s in self.split(split)]


# ----------------------------------------------------------------------------- splitting
def _check_fraction(fraction: float, upper_inclusive: bool) -> float:
    f = float(fraction)
    if not (0.0 < f < 1.0 or (upper_inclusive and f == 1.0)):
        raise ValueError(f"fraction must be in (0, 1{']' if upper_inclusive else ')'}, got {fraction!r}")
    return f


def stratified_split(labels, fraction: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about `fraction` of each class: returns sorted (keep_idx, held_idx).

    A class with >= 2 samples keeps at least one and gives at least one; a single-sample class
    stays in `keep` (the part the model trains on). `seed`: an int or a sequence of ints for
    numpy's default_rng; the same labels and seed give the same split.
    """
    f = _check_fraction(fraction, upper_inclusive=False)
    labels = np.asarray(labels)
    rng, held = np.random.default_rng(seed), []
    for c in np.unique(labels):  # sorted: the draw order is fixed
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(int(np.floor(len(idx) * f + 0.5)), 1), len(idx) - 1) if len(idx) >= 2 else 0
        held.extend(idx[:k].tolist())
    held_idx = np.array(sorted(held), dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_idx).astype(np.int64), held_idx


def label_fraction_subset(labels, fraction: float, seed) -> np.ndarray:
    """Sorted indices of a stratified `fraction` of the samples (label-fraction protocol):
    round(n_c * fraction) per class, at least 1; fraction 1.0 = all. One permutation per class
    drawn in class order, so for one seed a smaller fraction is a subset of a larger one."""
    f = _check_fraction(fraction, upper_inclusive=True)
    labels = np.asarray(labels)
    if f == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng, chosen = np.random.default_rng(seed), []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        chosen.extend(idx[: max(1, int(np.floor(len(idx) * f + 0.5)))].tolist())
    return np.array(sorted(chosen), dtype=np.int64)


# ----------------------------------------------------------------------------- writing
def safe_id(key: str) -> str:
    """File-name-safe id: runs of anything but letters, digits, '.', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", key).strip("_.") or "image"


def unique_id(key: str, seen: set[str]) -> str:
    """safe_id(key), suffixed -2, -3, ... until it differs (ignoring case) from every id in `seen`;
    the id is added to `seen`. Case-insensitive file systems must not merge two images."""
    base = safe_id(key)
    sid, k = base, 1
    while sid.lower() in seen:
        k += 1
        sid = f"{base}-{k}"
    seen.add(sid.lower())
    return sid


def files_by_stem(folder: Path, suffixes: tuple[str, ...] = PIL_SUFFIXES) -> tuple[dict[str, Path], int]:
    """{stem: file} of the files in `folder` ending in `suffixes` (case-insensitive), and how many
    entries were ignored (other suffixes, hidden files, sub-folders). Two files with one stem are an error."""
    found, ignored = {}, 0
    for p in sorted(Path(folder).iterdir()):
        if not p.is_file() or p.name.startswith(".") or not p.name.lower().endswith(suffixes):
            ignored += 1
            continue
        if p.stem in found:
            raise UserError(f"two files with the id {p.stem}: {found[p.stem].name} and {p.name}", p)
        found[p.stem] = p
    return found, ignored


def is_synthetic(*folders: Path) -> dict | None:
    """The synthetic marker's content if any of `folders` carries one (None if none does)."""
    for folder in folders:
        marker = Path(folder) / SYNTHETIC_MARKER
        if marker.is_file():
            try:
                data = json.loads(marker.read_text())
            except (OSError, ValueError):
                data = None
            return data if isinstance(data, dict) else {"marker": str(marker)}
    return None


def _place(src: Path, dst: Path) -> str:
    """Check (decode fully), hash and link-or-copy one image; returns its sha256."""
    read_pixels(src)  # a truncated or corrupt file fails here with CorruptImageError naming it
    try:
        os.link(src, dst)
    except OSError:  # other file system, no permission, links unsupported
        shutil.copy2(src, dst)
    return sha256_file(dst)


def content_hash(rows: Sequence[tuple[str, int, str]]) -> str:
    """sha256 over the sorted (split, label, file sha256) triples: names and paths do not count."""
    lines = sorted(f"{split}\t{label}\t{digest}\n" for split, label, digest in rows)
    return sha256_bytes("".join(lines).encode())


def temp_dir_beside(final: Path) -> Path:
    """An empty hidden folder next to `final` (same file system, so a rename can swap it in)."""
    parent = ensure_writable_dir(Path(final).parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{Path(final).name}.tmp-", dir=parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the result should look like any folder
    return tmp


def swap_in(tmp: Path, final: Path) -> None:
    """Rename the finished folder `tmp` onto `final`; an older `final` is removed only after."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield an empty folder beside `final`; swap it onto `final` when the block succeeds, remove it
    when it fails: a reader never sees a half-written folder."""
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        swap_in(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_classification_dataset(out_root: Path, name: str, classes: Sequence[str],
                                 items: Sequence[SourceItem], *, source: dict, split_method: str,
                                 seed: int, synthetic: bool, extra: dict | None = None,
                                 notes: Sequence[str] = (), warnings: Sequence[str] = (),
                                 progress: Progress | None = None) -> Path:
    """Write `out_root/<name>/` in the canonical form and return that folder.

    Fails (UserError, nothing written) if a class has no training sample or an image does not
    decode. `extra` adds adapter-specific top-level keys to dataset.json (e.g. counts of ignored
    files); `notes` are informational remarks, `warnings` the ones a user should look at (e.g. a
    full release whose counts differ from the published ones). Neither is printed.
    """
    classes = [str(c) for c in classes]
    src = source.get("src")
    counts = {s: {c: 0 for c in classes} for s in SPLITS}
    for item in items:
        if item.split not in SPLITS or not 0 <= item.label < len(classes):
            raise ValueError(f"bad item {item}")  # an adapter bug, not a user error
        counts[item.split][classes[item.label]] += 1
    empty = [c for c in classes if counts["train"][c] == 0]
    if empty:
        raise UserError(f"no training images for class(es) {', '.join(empty)}: a classifier cannot "
                        f"learn them (train counts {counts['train']})", src)
    out_root = ensure_writable_dir(Path(out_root))
    with staged_folder(out_root / name) as tmp:
        (tmp / "images").mkdir()
        ids, digests, seen = [], [], set()
        for item in items:
            base = safe_id(item.key)
            sid, k = base, 1
            while sid.lower() in seen:  # unique even on case-insensitive file systems
                k += 1
                sid = f"{base}-{k}"
            seen.add(sid.lower())
            ids.append(sid)
        rels = [f"images/{sid}{item.path.suffix}" for sid, item in zip(ids, items)]
        total = len(items)
        if progress:
            progress(0, total)
        # Decoding dominates on real data (1280² PNGs); Pillow and hashlib release the GIL.
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            futures = [pool.submit(_place, item.path, tmp / rel) for item, rel in zip(items, rels)]
            try:
                for done, fut in enumerate(futures, 1):
                    digests.append(fut.result())
                    if progress:
                        progress(done, total)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        with open(tmp / "samples.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            for sid, rel, item in zip(ids, rels, items):
                writer.writerow([sid, rel, item.label, item.split])
        meta = {
            "format": FORMAT, "dataset": name, "family": "classification", "classes": classes,
            "synthetic": bool(synthetic),
            "content_hash": content_hash([(it.split, it.label, d) for it, d in zip(items, digests)]),
            "source": dict(source),
            "split": {"method": split_method, "seed": seed, "counts": counts},
            "n_samples": total, "notes": list(notes), "warnings": list(warnings),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        write_json_atomic(tmp / "dataset.json", meta)
    return out_root / name


@contextlib.contextmanager
def synthetic_output(out: Path, marker: dict) -> Iterator[Path]:
    """For `synthesize`: yield an empty folder beside `out`; when the block succeeds, add the
    synthetic marker and swap the folder onto `out` (an older synthetic copy is replaced, never
    mixed with). A non-empty `out` without the marker (real data?) is refused."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SYNTHETIC_MARKER).is_file())):
        raise UserError("exists and is not an earlier synthetic dataset: choose a new or empty folder", out)
    with staged_folder(out) as tmp:
        yield tmp
        (tmp / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def check_synth_request(n, size: int, n_classes: int) -> None:
    """Synthetic writers need a few images per class and a side the phantoms can draw."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4 * n_classes:
        raise UserError(f"n={n} is too small (minimum {4 * n_classes}: a few images per class and split)")
    if int(size) < 32:
        raise UserError(f"size={size} is too small (minimum 32 px)")


def allocate(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """Split `total` into integer parts proportional to `weights` (largest remainder), each at
    least `minimum` when the total allows. Used by the synthetic writers to plan class counts."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    minimum = min(minimum, total // len(w))
    raw = w * total
    parts = np.maximum(np.floor(raw).astype(int), minimum)
    while parts.sum() > total:  # take from the part furthest above its share (and above minimum)
        i = int(np.argmax(np.where(parts > minimum, parts - raw, -np.inf)))
        parts[i] -= 1
    while parts.sum() < total:  # give to the part furthest below its share
        parts[int(np.argmax(raw - parts))] += 1
    return parts.tolist()


# ----------------------------------------------------------------------------- loading
def read_dataset_meta(folder: Path, family: str) -> tuple[dict, Path]:
    """A prepared folder's dataset.json (format and family checked, classes a list of distinct
    names) and its samples.csv path; every problem is a UserError naming the file."""
    folder = Path(folder)
    meta_path, csv_path = folder / "dataset.json", folder / "samples.csv"
    if not meta_path.is_file():
        raise UserError("missing: not a prepared dataset folder (run prepare first)", meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"unreadable ({type(exc).__name__}: {exc})", meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"format is {got!r}, expected {FORMAT!r}", meta_path)
    if meta.get("family") != family:
        raise UserError(f"family is {meta.get('family')!r}, expected {family!r}", meta_path)
    classes = meta.get("classes")
    if (not isinstance(classes, list) or not classes or len(set(map(str, classes))) != len(classes)
            or not all(isinstance(c, str) for c in classes)):
        raise UserError(f"'classes' must be a non-empty list of distinct names, got {classes!r}", meta_path)
    if not csv_path.is_file():
        raise UserError("missing: the sample list of this dataset is gone", csv_path)
    return meta, csv_path


def load_classification_dataset(folder: Path) -> ClassificationDataset:
    """Read and validate a prepared dataset folder; every problem is a UserError naming a file."""
    folder = Path(folder)
    meta, csv_path = read_dataset_meta(folder, "classification")
    classes, matrix = meta["classes"], "targets" in meta  # a target matrix: the label cells stay empty
    samples, ids = [], set()
    with open(csv_path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != CSV_HEADER:
            raise UserError(f"header is {header}, expected {','.join(CSV_HEADER)}", csv_path)
        for row in reader:
            where = f"row {reader.line_num}"
            if len(row) != 4:
                raise UserError(f"{where}: expected 4 columns, got {len(row)}", csv_path)
            sid, rel, label, split = row
            if matrix and label:
                raise UserError(f"{where}: label {label!r} in a dataset with a target matrix (leave it empty)",
                                csv_path)
            if not matrix and (not re.fullmatch(r"\d+", label) or int(label) >= len(classes)):
                raise UserError(f"{where}: label {label!r} is not an index into the "
                                f"{len(classes)} classes", csv_path)
            if split not in SPLITS:
                raise UserError(f"{where}: unknown split {split!r} (expected {', '.join(SPLITS)})", csv_path)
            if sid in ids:
                raise UserError(f"{where}: duplicate id {sid!r}", csv_path)
            path = (folder / rel).resolve()
            if not path.is_file():
                raise UserError(f"{where}: image file {rel} is missing", csv_path)
            ids.add(sid)
            samples.append(Sample(sid, path, int(label) if label else -1, split))
    name = str(meta.get("dataset", folder.name))
    if not matrix:
        return ClassificationDataset(name, classes, samples, meta, folder)
    from medssl_bench.downstream.datasets.canonical_multilabel import read_targets

    task, targets = read_targets(folder, meta, [s.id for s in samples], folder / "dataset.json")
    return ClassificationDataset(name, classes, samples, meta, folder, task, targets)
