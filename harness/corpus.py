"""The pretraining corpus: a content-addressed manifest of unlabeled 2D images.

`build_corpus` walks one or more root folders, decodes every image (2D files, DICOM frames, NIfTI
axial slices) with `harness.imageio`, hashes the decoded pixels, drops exact duplicates and writes

    <workspace>/corpora/<id>/manifest.jsonl   one JSON object per image, sorted
    <workspace>/corpora/<id>/corpus.json      counts, duplicates, unreadable files, roots

DICOM objects that are not images (SEG masks, RT structures and doses, presentation states,
reports, PDFs: harness.dicom_objects) are left out undecoded and counted in corpus.json's
"non_image" ({"SEG": 2}) with the files in "non_image_files"; never "unreadable", never fatal.

Manifest entry: dataset, modality, path (absolute), slice (int for volume slices / frames, else
null), hash (sha256 of the decoded pixels), height, width, channels, format, synthetic.

The id is the first 12 hex digits of sha256 over the sorted (dataset, hash) pairs: it names the
*content*, so moving the folder or re-encoding an image (PNG -> BMP) keeps it, while changing a
single pixel changes it. Every pretraining run records it.
"""
from __future__ import annotations

import concurrent.futures
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
from medssl_bench.harness.corpus_scan import DATASET_INFO, FORMATS  # noqa: F401  (re-exported)
from medssl_bench.harness.corpus_scan import read_json as _read_json, scan_root as _scan_root
from medssl_bench.harness.dicom_objects import NonImageObject
from medssl_bench.harness.errors import CorruptImageError, UserError
from medssl_bench.harness.fsutil import atomic_path, write_json_atomic
from medssl_bench.harness.modality import guess_modality, normalize_modality  # noqa: F401  (re-exported)
from medssl_bench.harness.workspace import Workspace

MANIFEST = "manifest.jsonl"
INFO = "corpus.json"
ID_LENGTH = 12
# Decode in worker processes only when there is real work: 500 small PNGs (2 MB) decode at
# ~2,500/s in one process, faster than forking and shipping results back.
PARALLEL_MIN_BYTES = 32 * 2**20

Progress = Callable[[int, int], None]  # progress(files_done, files_total)


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
    candidates, ignored, dataset_meta, unreadable, non_image = [], 0, {}, [], []
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
        if result.get("non_image"):
            non_image.append({"path": cand["path"], "dataset": cand["dataset"], "object": result["non_image"]})
            continue
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
            raise UserError(_no_images_reason(cand["root"], candidates, unreadable, non_image), cand["root"])

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
                     roots=sorted({c["root"] for c in candidates}), non_image=non_image,
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


def _no_images_reason(root: str, candidates: list[dict], unreadable: list[dict], non_image: list[dict]) -> str:
    """Why a root gave no image: its first unreadable file, and the non-image objects left out."""
    paths = {c["path"] for c in candidates if c["root"] == root}
    counts = count_non_image(n for n in non_image if n["path"] in paths)
    left = f"{sum(counts.values())} non-image DICOM object(s) left out ({format_counts(counts)})"
    first = next((u for u in unreadable if u["path"] in paths), None)
    if first is None:
        return f"no images to index: its DICOM files are all objects that are not images; {left}"
    return (f"none of its image files could be read; first: {first['path']}: {first['reason']}"
            + (f"; {left}" if counts else ""))


def count_non_image(items: Iterable[dict]) -> dict[str, int]:
    """{label: files} of non-image DICOM objects, labels sorted."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item["object"]] = counts.get(item["object"], 0) + 1
    return dict(sorted(counts.items()))


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} {count}" for label, count in counts.items())


def corpus_id_of(entries: Iterable[dict]) -> str:
    pairs = sorted(f"{e['dataset']}\t{e['hash']}" for e in entries)
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:ID_LENGTH]


def summarize(entries: list[dict], corpus_id: str, *, duplicates=(), unreadable=(), ignored=0,
              roots=(), created=None, non_image=()) -> dict:
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
        "non_image": count_non_image(non_image), "non_image_files": sorted(non_image, key=lambda n: n["path"]),
        "synthetic": _tri_state({bool(e["synthetic"]) for e in entries}),
    }


def _tri_state(values: set[bool]) -> bool | str:
    return "mixed" if len(values) > 1 else (values.pop() if values else False)


# ----------------------------------------------------------------------------------- decode


def decode_file(path: str) -> dict:
    """Decode one file: {"images": [(slice, pixel hash, shape)], "modality", "error", "non_image"}.
    "non_image" is the label (SEG, SR...) of a DICOM object that is not an image: its header says
    so and its pixels (a mask, a dose grid) are never decoded. Runs in worker processes, so it
    returns plain data and never raises for a bad image."""
    dicom = imageio.image_kind(path) == "dicom"
    label = imageio.dicom_non_image(path) if dicom else None
    try:
        images = [] if label else [(index, pixel_hash(pixels), pixels.shape)
                                   for index, pixels in imageio.iter_pixels(path)]
    except NonImageObject as err:  # no pixel data, and a SOP class that is no image (e.g. a waveform)
        label = err.label
    except CorruptImageError as err:
        reason = str(err)
        prefix = f"{err.path}: "
        return {"images": [], "modality": None, "non_image": None,
                "error": reason[len(prefix):] if reason.startswith(prefix) else reason}
    if label:
        return {"images": [], "modality": None, "error": None, "non_image": label}
    modality = imageio.dicom_modality(path) if dicom else None
    return {"images": images, "modality": modality, "error": None, "non_image": None}


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
