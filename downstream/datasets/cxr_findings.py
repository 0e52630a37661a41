"""cxr_findings: a multi-label chest X-ray set in CheXpert's csv layout, for label-using pretraining (Ark).

Not a downstream task (nothing evaluates on it): `bench pretrain --labels-from cxr_findings` reads its train
split. `bench data synth cxr_findings` writes a synthetic one (downstream.phantoms.cxr_findings);
`bench data prepare cxr_findings` reads the layout below into the canonical form with a target matrix
(canonical_multilabel.py), labels kept as written: 1, 0, -1 uncertain, blank not mentioned.

Layout (CheXpert-v1.0-small): train.csv and valid.csv with the header Path,Sex,Age,Frontal/Lateral,AP/PA
followed by the finding columns (CLASSES, in this order); Path is relative to the folder holding
CheXpert-v1.0-small/, as in CheXpert's files. Split: valid.csv = test (CheXpert's valid set is its test set in
Ark's config); val = a seeded random VAL_FRACTION of train.csv, the rest train. Real CheXpert has 14 finding
columns: reading it needs CLASSES widened to them (not done: this adapter has only been run on phantoms).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from medssl_bench.downstream.datasets.canonical import check_synth_request, is_synthetic, synthetic_output
from medssl_bench.downstream.datasets.canonical_multilabel import (
    MultiLabelItem, parse_raw_cell, write_multilabel_dataset,
)
from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets._paths import child, find_root
from medssl_bench.downstream.phantoms.cxr_findings import FINDINGS, film
from medssl_bench.harness.errors import UserError

NAME = "cxr_findings"
CLASSES = list(FINDINGS)
FOLDER = "CheXpert-v1.0-small"
META_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]  # Ark reads the findings from column 5 on
LAYOUT = (f"{FOLDER}/train.csv + valid.csv ({','.join(META_COLUMNS)},<findings: {', '.join(CLASSES)}>; "
          "cells 1.0, 0.0, -1.0 uncertain, blank) + the images they name")
DEFAULT_N = 240
VAL_FRACTION = 0.1
SYNTH_VALID_FRACTION = 0.2
_CSVS = {"train.csv": "train", "valid.csv": "test"}
_TAG = 0xC4E7


def _read_csv(path: Path, base: Path) -> list[tuple[Path, tuple[float, ...]]]:
    if not path.is_file():
        raise UserError(f"missing; expected {LAYOUT}", path)
    rows = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != META_COLUMNS + CLASSES:
            raise UserError(f"header is {header}, expected {','.join(META_COLUMNS + CLASSES)}", path)
        for row in reader:
            where = f"row {reader.line_num}"
            if len(row) != len(header):
                raise UserError(f"{where}: expected {len(header)} columns, got {len(row)}", path)
            image = base / row[0]
            if not row[0] or not image.is_file():
                raise UserError(f"{where}: image {row[0]!r} is missing", path)
            rows.append((image, tuple(parse_raw_cell(v, where, path) for v in row[len(META_COLUMNS):])))
    if not rows:
        raise UserError("has no rows", path)
    return rows


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a CheXpert-layout folder (`src` = CheXpert-v1.0-small or its parent) into `out_root/cxr_findings/`."""
    supported(options, NAME)
    root = Path(src)  # CheXpert-v1.0-small itself, or a folder holding it
    if not (root / "train.csv").is_file():
        root = child(find_root(src, [FOLDER], layout=LAYOUT), FOLDER)
    items = []
    for name, split in _CSVS.items():
        rows = _read_csv(root / name, root.parent)
        splits = [split] * len(rows)
        if split == "train":  # a seeded random carve-out: stratifying on label rows means little here
            order = np.random.default_rng(seed).permutation(len(rows))
            for i in order[:max(1, int(round(len(rows) * VAL_FRACTION)))]:
                splits[i] = "val"
        items += [MultiLabelItem(str(p.relative_to(root).with_suffix("")), p, t, s)
                  for (p, t), s in zip(rows, splits)]
    marker = is_synthetic(Path(src), root)
    return write_multilabel_dataset(
        out_root, NAME, CLASSES, items, task="multilabel",
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "synthetic_marker": marker},
        split_method=f"valid.csv = test; val = seeded random {VAL_FRACTION:.0%} of train.csv, the rest train",
        seed=seed, synthetic=marker is not None, progress=progress)


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 128) -> Path:
    """Write `n` synthetic films in the CheXpert layout under `out` (downstream.phantoms.cxr_findings)."""
    check_synth_request(n, size, len(CLASSES))
    seed = int(seed) % 2 ** 63
    n_valid = max(2, int(round(n * SYNTH_VALID_FRACTION)))
    marker = {"generator": "bench.datasets.cxr_findings", "version": 1, "seed": seed, "n": int(n), "size": int(size)}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with synthetic_output(Path(out), marker) as tmp:
            (tmp / FOLDER).mkdir()
            for name, first, count in (("train.csv", 0, n - n_valid), ("valid.csv", n - n_valid, n_valid)):
                rows = [META_COLUMNS + CLASSES]
                for i in range(first, first + count):
                    pixels, _, cells = film([seed, _TAG, i], int(size))
                    rng = np.random.default_rng([seed, _TAG, i, 2])
                    rel = f"{FOLDER}/{name[:-4]}/patient{i + 1:05d}/study1/view1_frontal.jpg"
                    (tmp / rel).parent.mkdir(parents=True)
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
                    (tmp / rel).write_bytes(buf.getvalue())
                    rows.append([rel, str(rng.choice(["Male", "Female"])), str(int(rng.integers(20, 90))), "Frontal",
                                 str(rng.choice(["AP", "PA"])), *cells])
                with open(tmp / FOLDER / name, "w", newline="") as handle:
                    csv.writer(handle, lineterminator="\n").writerows(rows)
    finally:
        cv2.setNumThreads(threads)
    return Path(out)
