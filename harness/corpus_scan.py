"""The scan step of `harness.corpus.build_corpus`: the candidate image files under a corpus root, with
each dataset's dataset.json, and the files that cannot even be reached. Nothing here decodes a pixel;
kept apart from harness.corpus so that each file stays readable on its own.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from medssl_bench.harness import imageio
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.modality import guess_modality, normalize_modality

DATASET_INFO = "dataset.json"
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
           ".bmp": "bmp", ".gif": "gif", ".nii": "nifti", ".gz": "nifti"}


def scan_root(root: Path, dataset_meta: dict, skip: Path, unreadable: list) -> tuple[list[dict], int]:
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
        meta = read_json(meta_file)
        example = 'expected a JSON object like {"modality": "ct", "synthetic": false}'
        if not isinstance(meta, dict):
            raise UserError(example, meta_file)
        if not isinstance(meta.get("synthetic", False), bool):
            raise UserError(f'"synthetic" must be true or false, not {meta["synthetic"]!r}; {example}',
                            meta_file)
        meta["modality"] = normalize_modality(meta.get("modality"))
    meta["guess"] = guess_modality(dataset_dir.name)
    return meta


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read JSON ({type(err).__name__}: {err})", path) from None
