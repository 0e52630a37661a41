"""The pretraining corpus: a content-addressed manifest of unlabeled 2D images.

`build_corpus` walks one or more root folders, decodes every image (2D files, DICOM frames, NIfTI
axial slices) with `harness.imageio`, hashes the decoded pixels, drops exact duplicates and writes

    <workspace>/corpora/<id>/manifest.jsonl   one JSON object per image, sorted
    <workspace>/corpora/<id>/corpus.json      counts, duplicates, unreadable files, roots

Manifest entry: dataset, modality, path (absolute), slice (int for volume slices / frames, else
null), hash (sha256 of the decoded pixels), height, width, channels, format, synthetic.

The id is the first 12 hex digits of sha256 over the sorted (dataset, hash) pairs: it names the
*content*, so moving the folder or re-encoding an image (PNG -> BMP) keeps it, while changing a
single pixel changes it. Every pretraining run records it.
"""
from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from medssl_bench.harness import imageio
from medssl_bench.harness.errors import CorruptImageError, UserError
from medssl_bench.harness.fsutil import atomic_path, write_json_atomic
from medssl_bench.harness.modality import guess_modality, normalize_modality  # noqa: F401  (re-exported)
from medssl_bench.harness.workspace import Workspace

MANIFEST = "manifest.jsonl"
INFO = "corpus.json"
DATASET_INFO = "dataset.json"
ID_LENGTH = 12
# Decode in worker processes only when there is real work: 500 small PNGs (2 MB) decode at
# ~2,500/s in one process, faster than forking and shipping results back.
PARALLEL_MIN_BYTES = 32 * 2**20

Progress = Callable[[int, int], None]  # progress(files_done, files_total)

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
           ".bmp": "bmp", ".gif": "gif", ".nii": "nifti", ".gz": "nifti"}


@dataclass
class Corpus:
    """A built corpus: `id`, its folder, `info` (corpus.json) and the manifest `entries`."""

    id: str
    dir: Path
    info: dict
    _entries: list[dict] | None = field(default=None, repr=False)

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    @property
    def entries(self) -> list[dict]:
        if self._entries is None:
            self._entries = read_manifest(self.manifest_path)
        return self._entries


# ------------------------------------------------------------------------------------ build


def build_corpus(roots: list[Path], workspace: Workspace, progress: Progress | None = None) -> Corpus:
    """Index every image under `roots`, de-duplicate by pixel hash, write the manifest; see the
    module docstring. Unreadable files are listed in `info["unreadable"]`, never fatal."""
    if not roots:
        raise UserError("no root folder given; pass --root DIR")
    candidates, ignored, dataset_meta, unreadable = [], 0, {}, []
    for root in [Path(r).expanduser().resolve() for r in roots]:
        found, skipped = _scan_root(root, dataset_meta, skip=workspace.root, unreadable=unreadable)
        if not found:
            raise UserError(
                f"no image files found ({skipped} other files ignored; supported: "
                f"{', '.join(imageio.SUPPORTED_SUFFIXES)} and DICOM files)", root)
        candidates += found
        ignored += skipped

    results = _decode_all([c["path"] for c in candidates], sum(c["bytes"] for c in candidates),
                          progress)
    entries, readable_roots = [], set()
    for cand, result in zip(candidates, results):
        if result["error"]:
            unreadable.append({"path": cand["path"], "reason": result["error"]})
            continue
        readable_roots.add(cand["root"])
        meta = dataset_meta[cand["dataset_dir"]]
        modality = meta.get("modality") or normalize_modality(result["modality"]) or meta["guess"]
        for slice_index, digest, shape in result["images"]:
            entries.append({
                "dataset": cand["dataset"], "modality": modality, "path": cand["path"],
                "slice": slice_index, "hash": digest, "height": shape[0], "width": shape[1],
                "channels": shape[2] if len(shape) == 3 else 1, "format": cand["format"],
                "synthetic": bool(meta.get("synthetic", False)),
                "_order": (cand["rel"], -1 if slice_index is None else slice_index, cand["path"]),
            })
    for cand in candidates:
        if cand["root"] not in readable_roots:
            first = next(u for u in unreadable if u["path"] == cand["path"])
            raise UserError(f"none of its image files could be read; first: {first['path']}: "
                            f"{first['reason']}", cand["root"])

    # By (dataset, path relative to its root, slice): which copy of a duplicate survives does not depend on the root
    entries.sort(key=lambda e: (e["dataset"], e["_order"]))
    kept, duplicates, first_by_hash = [], [], {}
    for entry in entries:
        del entry["_order"]
        same = first_by_hash.setdefault(entry["hash"], entry)
        if same is entry:
            kept.append(entry)
        else:
            duplicates.append({"path": entry["path"], "slice": entry["slice"], "dataset": entry["dataset"],
                               "same_as": same["path"], "same_as_slice": same["slice"]})

    corpus_id = corpus_id_of(kept)
    out_dir = workspace.corpora / corpus_id
    info = summarize(kept, corpus_id, duplicates=duplicates, unreadable=unreadable, ignored=ignored,
                     roots=sorted({c["root"] for c in candidates}),
                     created=_previous_created(out_dir))
    with atomic_path(out_dir / MANIFEST) as tmp:
        with open(tmp, "w") as handle:  # streamed: a million-image manifest is ~300 MB of JSON
            for entry in kept:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
    write_json_atomic(out_dir / INFO, info)
    return Corpus(corpus_id, out_dir, info, kept)


def _previous_created(corpus_dir: Path) -> str | None:
    """Keep the first build's time, so rebuilding unchanged content rewrites identical files."""
    try:
        return _read_json(corpus_dir / INFO).get("created") if (corpus_dir / INFO).is_file() else None
    except (UserError, AttributeError):
        return None


def corpus_id_of(entries: Iterable[dict]) -> str:
    pairs = sorted(f"{e['dataset']}\t{e['hash']}" for e in entries)
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:ID_LENGTH]


def summarize(entries: list[dict], corpus_id: str, *, duplicates=(), unreadable=(), ignored=0,
              roots=(), created=None) -> dict:
    """The corpus.json dict: counts per dataset and modality, and what was left out and why."""
    datasets: dict[str, dict] = {}
    for entry in entries:
        row = datasets.setdefault(entry["dataset"], {"images": 0, "slices_from_volumes": 0,
                                                     "duplicates": 0, "modalities": set(),
                                                     "synthetic": set()})
        row["images"] += 1
        row["slices_from_volumes"] += entry["slice"] is not None
        row["modalities"].add(entry["modality"])
        row["synthetic"].add(bool(entry["synthetic"]))
    for dup in duplicates:
        if dup["dataset"] in datasets:
            datasets[dup["dataset"]]["duplicates"] += 1
    for row in datasets.values():
        row["modality"] = ",".join(sorted(row.pop("modalities")))
        row["synthetic"] = _tri_state(row.pop("synthetic"))
    modalities: dict[str, int] = {}
    for entry in entries:
        modalities[entry["modality"]] = modalities.get(entry["modality"], 0) + 1
    return {
        "id": corpus_id, "roots": list(roots),
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "datasets": dict(sorted(datasets.items())), "modalities": dict(sorted(modalities.items())),
        "n_images": len(entries), "n_duplicates": len(duplicates), "duplicates": list(duplicates),
        "unreadable": sorted(unreadable, key=lambda u: u["path"]), "ignored": ignored,
        "synthetic": _tri_state({bool(e["synthetic"]) for e in entries}),
    }


def _tri_state(values: set[bool]) -> bool | str:
    return "mixed" if len(values) > 1 else (values.pop() if values else False)


def _scan_root(root: Path, dataset_meta: dict, skip: Path, unreadable: list) -> tuple[list[dict], int]:
    """Image candidates under `root` (hidden files and folders, and the folder `skip` - the
    workspace, when it lives inside the root - left out) and the count of ignored files. Fills
    `dataset_meta[dataset_dir]` with dataset.json contents and a modality guess; files that cannot be
    reached (dangling links, link loops, vanished) go to `unreadable`, and the scan goes on."""
    if not root.exists():
        raise UserError("root folder does not exist", root)
    if not root.is_dir():
        raise UserError("root is not a folder (pass the folder that holds the images)", root)
    found, ignored, seen_dirs = [], 0, {os.path.realpath(skip)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = Path(folder).relative_to(root)
        dataset_dir = root / rel_folder.parts[0] if rel_folder.parts else root
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or name == DATASET_INFO:
                ignored += 1
                continue
            if (reason := _unreachable(path)) is not None:
                unreadable.append({"path": str(path), "reason": reason})
                continue
            if imageio.image_kind(path) is None:
                ignored += 1
                continue
            if dataset_dir not in dataset_meta:
                dataset_meta[dataset_dir] = _dataset_meta(dataset_dir)
            suffix = path.suffix.lower()
            found.append({"path": str(path), "root": str(root), "rel": str(path.relative_to(root)),
                          "dataset": dataset_dir.name, "dataset_dir": dataset_dir,
                          "format": FORMATS.get(suffix, "dicom"), "bytes": path.stat().st_size})
    return found, ignored


def _unreachable(path: Path) -> str | None:
    """Why `path` cannot be read as a file (a dangling link, a link loop, gone since listed), or None."""
    try:
        path.stat()
    except OSError as err:
        target = os.readlink(path) if path.is_symlink() else None
        if target is not None and err.errno == errno.ELOOP:
            return f"symbolic link loop (-> {target}); remove the link"
        if target is not None:
            return f"dangling symbolic link (-> {target}: {err.strerror}); remove the link or restore its target"
        return f"cannot read ({err.strerror or type(err).__name__})"
    return None


def _dataset_meta(dataset_dir: Path) -> dict:
    meta: dict = {}
    meta_file = dataset_dir / DATASET_INFO
    if meta_file.is_file():
        meta = _read_json(meta_file)
        example = 'expected a JSON object like {"modality": "ct", "synthetic": false}'
        if not isinstance(meta, dict):
            raise UserError(example, meta_file)
        if not isinstance(meta.get("synthetic", False), bool):
            raise UserError(f'"synthetic" must be true or false, not {meta["synthetic"]!r}; {example}',
                            meta_file)
        meta["modality"] = normalize_modality(meta.get("modality"))
    meta["guess"] = guess_modality(dataset_dir.name)
    return meta


# ----------------------------------------------------------------------------------- decode


def decode_file(path: str) -> dict:
    """Decode one file: {"images": [(slice, pixel hash, shape)], "modality", "error"}. Runs in
    worker processes, so it returns plain data and never raises for a bad image."""
    try:
        images = [(index, pixel_hash(pixels), pixels.shape) for index, pixels in imageio.iter_pixels(path)]
    except CorruptImageError as err:
        reason = str(err)
        prefix = f"{err.path}: "
        return {"images": [], "modality": None,
                "error": reason[len(prefix):] if reason.startswith(prefix) else reason}
    modality = imageio.dicom_modality(path) if imageio.image_kind(path) == "dicom" else None
    return {"images": images, "modality": modality, "error": None}


def pixel_hash(pixels: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes: equal pixels hash equal whatever the file encoding."""
    digest = hashlib.sha256(f"{pixels.dtype.str}|{pixels.shape}|".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def _decode_all(paths: list[str], total_bytes: int, progress: Progress | None) -> list[dict]:
    total = len(paths)
    workers = min(os.cpu_count() or 1, 8)
    if progress:
        progress(0, total)
    if total_bytes < PARALLEL_MIN_BYTES or total < 2 * workers or workers < 2:
        results = []
        for done, path in enumerate(paths, 1):
            results.append(decode_file(path))
            if progress:
                progress(done, total)
        return results
    with _decode_pool(workers) as pool:
        results = []
        for done, result in enumerate(pool.map(decode_file, paths, chunksize=8), 1):
            results.append(result)
            if progress:
                progress(done, total)
    return results


def _decode_pool(workers: int) -> concurrent.futures.Executor:
    """Processes forked on Linux: decoding is CPU-bound (pydicom parses in Python) and "fork", unlike
    "spawn"/"forkserver", does not re-import the caller's __main__ (which breaks scripts without a main guard
    and `python -m medssl_bench.harness`). Elsewhere threads: Pillow, zlib and hashlib release the GIL."""
    if sys.platform == "linux":
        return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return concurrent.futures.ThreadPoolExecutor(workers)


# ---------------------------------------------------------------------------- load, resolve


def read_manifest(path: Path) -> list[dict]:
    entries = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise UserError(f"cannot read manifest ({err.strerror or err})", path) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entry["path"], entry["hash"], entry["dataset"]  # the fields every reader relies on
        except (ValueError, KeyError, TypeError):
            raise UserError(f"line {number} is not a manifest entry (JSON with dataset, path, hash)",
                            path) from None
        entries.append(entry)
    return entries


def load_corpus(corpus_dir: Path) -> Corpus:
    """A corpus folder (corpus.json + manifest.jsonl), or any folder holding a manifest.jsonl."""
    corpus_dir = Path(corpus_dir)
    manifest = corpus_dir / MANIFEST
    if not manifest.is_file():
        raise UserError(f"no {MANIFEST} in this folder", corpus_dir)
    if (corpus_dir / INFO).is_file():
        info = _read_json(corpus_dir / INFO)
        return Corpus(info.get("id") or corpus_dir.name, corpus_dir, info)
    entries = read_manifest(manifest)
    corpus_id = corpus_id_of(entries)
    return Corpus(corpus_id, corpus_dir, summarize(entries, corpus_id), entries)


def resolve_corpus(id_or_path: str, workspace: Workspace, *, check_files: bool = True) -> Corpus:
    """A corpus from an id (or unique id prefix) in the workspace, a manifest.jsonl, a corpus
    folder, or a folder of images (built now). Checks it is non-empty and (unless `check_files`
    is False, e.g. to just show it) that every file it lists still exists."""
    path = Path(id_or_path).expanduser()
    if path.is_file():
        if path.name != MANIFEST:
            raise UserError(f"not a corpus manifest (expected a file named {MANIFEST})", path)
        corpus = load_corpus(path.parent)
    elif path.is_dir():
        corpus = load_corpus(path) if (path / MANIFEST).is_file() else build_corpus([path], workspace)
    elif re.fullmatch(r"[0-9a-f]{1,64}", id_or_path):
        corpus = load_corpus(_find_by_prefix(id_or_path, workspace))
    else:
        raise UserError("no such corpus id, manifest or folder (see `bench corpus show`)", id_or_path)
    if not corpus.entries:
        raise UserError(f"corpus {corpus.id} is empty (no images in {corpus.manifest_path})")
    if check_files:
        _check_files_exist(corpus)
    return corpus


def _find_by_prefix(prefix: str, workspace: Workspace) -> Path:
    matches = sorted(p for p in workspace.corpora.glob(f"{prefix}*") if (p / MANIFEST).is_file())
    if not matches:
        raise UserError(f"no corpus '{prefix}' in {workspace.corpora}; "
                        "run `bench corpus build --root DIR`")
    if len(matches) > 1:
        raise UserError(f"corpus id prefix '{prefix}' is ambiguous ({', '.join(p.name for p in matches[:5])}); "
                        "give more digits")
    return matches[0]


def _check_files_exist(corpus: Corpus) -> None:
    missing = sorted({e["path"] for e in corpus.entries if not os.path.exists(e["path"])})
    if missing:
        raise UserError(f"corpus {corpus.id}: {len(missing)} listed file(s) no longer exist, first {missing[0]}; "
                        "rebuild it with `bench corpus build --root DIR`")


def list_corpora(workspace: Workspace) -> list[dict]:
    """corpus.json of every corpus in the workspace, oldest first."""
    if not workspace.corpora.is_dir():
        return []
    infos = [_read_json(d / INFO) for d in sorted(workspace.corpora.iterdir()) if (d / INFO).is_file()]
    return sorted(infos, key=lambda info: (info.get("created") or "", info.get("id") or ""))


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read JSON ({type(err).__name__}: {err})", path) from None
