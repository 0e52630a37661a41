"""Multi-label and binary targets in the canonical classification form (its `targets` field, version 1).

A single-label dataset (canonical.py) has one class index per sample. A multi-label or binary one keeps the
same folder, `dataset.json` format and `samples.csv` header, with:

    dataset.json  "targets": {"form": "bench-targets/1", "task": "multilabel" | "binary", "file": "targets.csv",
                              "codes": {...}, "counts": {split: {class: {positive, negative, uncertain, blank}}}}
    samples.csv   the `label` cell left empty (there is no single class)
    targets.csv   id,<class 1>,...,<class K>: one row per samples.csv row, same ids in the same order;
                  cells 1 (positive), 0 (negative), -1 (uncertain, as CheXpert writes it), empty (not annotated)

The labels are stored as read, uncertain and blank included: what becomes of them (ones, zeros, label
smoothing, left out of the loss) is a choice of whoever trains on them (harness.app.labelled), recorded there.
"binary" is one column (one logit), "multilabel" any number. In memory the matrix is float32 (n, K): 1, 0,
UNCERTAIN (-1) and NaN for blank.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import ensure_writable_dir, write_json_atomic

TARGETS_FORM = "bench-targets/1"
TASKS = ("multilabel", "binary")
TARGETS_FILE = "targets.csv"
UNCERTAIN = -1.0
CODES = {"1": "positive", "0": "negative", "-1": "uncertain", "": "not annotated"}
_CELL = {"1": 1.0, "0": 0.0, "-1": UNCERTAIN, "": np.nan}
_RAW_CELL = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": UNCERTAIN, "-1.0": UNCERTAIN, "": np.nan}


class MultiLabelItem(NamedTuple):
    """One raw image as an adapter hands it over: `targets` holds K values from 1, 0, UNCERTAIN, NaN."""

    key: str
    path: Path
    targets: tuple[float, ...]
    split: str


def parse_raw_cell(text: str, where: str, file: Path) -> float:
    """A label cell as CheXpert-style csv files write it (1.0, 0.0, -1.0, blank; also 1, 0, -1)."""
    value = _RAW_CELL.get(text.strip())
    if value is None:
        raise UserError(f"{where}: label {text!r} is not one of 1, 0, -1 or blank (uncertain = -1)", file)
    return value


def cell(value: float) -> str:
    """The canonical cell of one target value."""
    return "" if np.isnan(value) else str(int(value))


def row_key(values) -> str:
    """The targets of one sample as one string (content hash, counts)."""
    return ",".join(cell(float(v)) for v in values)


def target_counts(rows: np.ndarray, splits: Sequence[str], classes: Sequence[str]) -> dict:
    """{split: {class: {positive, negative, uncertain, blank}}} of an (n, K) raw matrix."""
    splits_arr = np.asarray(splits)
    out = {}
    for split in ("train", "val", "test"):
        part = rows[splits_arr == split]
        out[split] = {c: {"positive": int((part[:, k] == 1).sum()), "negative": int((part[:, k] == 0).sum()),
                          "uncertain": int((part[:, k] == UNCERTAIN).sum()), "blank": int(np.isnan(part[:, k]).sum())}
                      for k, c in enumerate(classes)}
    return out


def check_items(classes: Sequence[str], items: Sequence[MultiLabelItem], task: str) -> np.ndarray:
    """The (n, K) matrix of `items`; an adapter bug (wrong width, a value outside the codes) is a ValueError."""
    if task not in TASKS or (task == "binary" and len(classes) != 1):
        raise ValueError(f"task {task!r} with {len(classes)} classes")  # an adapter bug, not a user error
    rows = np.array([it.targets for it in items], dtype=np.float32).reshape(len(items), len(classes))
    known = np.isnan(rows) | np.isin(rows, (0.0, 1.0, UNCERTAIN))
    if not known.all():
        raise ValueError(f"target values outside 1, 0, -1, NaN: {rows[~known][:3]}")
    return rows


def write_targets(folder: Path, ids: Sequence[str], classes: Sequence[str], rows: np.ndarray) -> None:
    with open(folder / TARGETS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", *classes])
        for sid, row in zip(ids, rows):
            writer.writerow([sid, *(cell(float(v)) for v in row)])


def targets_meta(task: str, rows: np.ndarray, splits: Sequence[str], classes: Sequence[str]) -> dict:
    return {"form": TARGETS_FORM, "task": task, "file": TARGETS_FILE, "codes": dict(CODES),
            "counts": target_counts(rows, splits, classes)}


def read_targets(folder: Path, meta: dict, ids: Sequence[str], meta_path: Path) -> tuple[str, np.ndarray]:
    """(task, the (n, K) raw matrix) of a prepared folder whose dataset.json has a `targets` field, rows in
    the order of `ids` (samples.csv); every problem is a UserError naming the file."""
    spec, classes = meta.get("targets"), meta["classes"]
    if not isinstance(spec, dict) or spec.get("form") != TARGETS_FORM:
        got = spec.get("form") if isinstance(spec, dict) else spec
        raise UserError(f"'targets' form is {got!r}, expected {TARGETS_FORM!r} (a newer bench wrote it?)", meta_path)
    task = spec.get("task")
    if task not in TASKS:
        raise UserError(f"'targets' task is {task!r}, expected one of {', '.join(TASKS)}", meta_path)
    if task == "binary" and len(classes) != 1:
        raise UserError(f"a binary dataset has one class column, 'classes' has {len(classes)}", meta_path)
    if spec.get("file") != TARGETS_FILE:
        raise UserError(f"'targets' file is {spec.get('file')!r}, expected {TARGETS_FILE!r}", meta_path)
    path = Path(folder) / TARGETS_FILE
    if not path.is_file():
        raise UserError("missing: the target matrix of this multi-label dataset is gone", path)
    rows = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["id", *classes]:
            raise UserError(f"header is {header}, expected id + the classes of dataset.json", path)
        for n, row in enumerate(reader):
            where = f"row {reader.line_num}"
            if len(row) != len(classes) + 1:
                raise UserError(f"{where}: expected {len(classes) + 1} columns, got {len(row)}", path)
            if n >= len(ids) or row[0] != ids[n]:
                raise UserError(f"{where}: id {row[0]!r} where samples.csv has "
                                f"{ids[n] if n < len(ids) else 'no more rows'!r} (same ids, same order)", path)
            values = [_CELL.get(v) for v in row[1:]]
            bad = next((v for v, x in zip(row[1:], values) if x is None), None)
            if bad is not None:
                raise UserError(f"{where}: target {bad!r} is not one of 1, 0, -1 or empty", path)
            rows.append(values)
    if len(rows) != len(ids):
        raise UserError(f"{len(rows)} target rows for {len(ids)} samples in samples.csv", path)
    return task, np.array(rows, dtype=np.float32).reshape(len(ids), len(classes))


def write_multilabel_dataset(out_root: Path, name: str, classes: Sequence[str], items: Sequence[MultiLabelItem], *,
                             task: str, source: dict, split_method: str, seed: int, synthetic: bool,
                             notes: Sequence[str] = (), warnings: Sequence[str] = (), progress=None) -> Path:
    """Write `out_root/<name>/` in the canonical form with a target matrix and return that folder: as
    canonical.write_classification_dataset (images decoded once, staged and swapped in, nothing half-written)."""
    from medssl_bench.downstream.datasets import canonical as c

    classes = [str(x) for x in classes]
    rows = check_items(classes, items, task)
    if any(it.split not in c.SPLITS for it in items):
        raise ValueError("bad split")  # an adapter bug
    train = rows[[it.split == "train" for it in items]]
    if not len(train):
        raise UserError("no training images: nothing to train on", source.get("src"))
    unseen = [cls for k, cls in enumerate(classes) if not (train[:, k] == 1).any()]
    warnings = list(warnings) + ([f"no positive training label for {', '.join(unseen)}"] if unseen else [])
    out_root = ensure_writable_dir(Path(out_root))
    with c.staged_folder(out_root / name) as tmp:
        (tmp / "images").mkdir()
        seen: set[str] = set()
        ids = [c.unique_id(it.key, seen) for it in items]
        rels = [f"images/{sid}{it.path.suffix}" for sid, it in zip(ids, items)]
        if progress:
            progress(0, len(items))
        digests = []
        pool = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2))  # decoding dominates, as canonical's
        try:
            for done, digest in enumerate(pool.map(c._place, [it.path for it in items], [tmp / r for r in rels]), 1):
                digests.append(digest)
                if progress:
                    progress(done, len(items))
        finally:
            pool.shutdown(cancel_futures=True)  # a corrupt image stops the rest
        with open(tmp / "samples.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(c.CSV_HEADER)
            writer.writerows([sid, rel, "", it.split] for sid, rel, it in zip(ids, rels, items))
        write_targets(tmp, ids, classes, rows)
        splits = [it.split for it in items]
        meta = {
            "format": c.FORMAT, "dataset": name, "family": "classification", "classes": classes,
            "synthetic": bool(synthetic),
            "content_hash": c.content_hash([(it.split, row_key(r), d) for it, r, d in zip(items, rows, digests)]),
            "source": dict(source), "split": {"method": split_method, "seed": seed,
                                              "counts": {s: splits.count(s) for s in c.SPLITS}},
            "targets": targets_meta(task, rows, splits, classes),
            "n_samples": len(items), "notes": list(notes), "warnings": warnings,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(tmp / "dataset.json", meta)
    return out_root / name
