"""Kvasir polyp detection (docs/datasets.md): the Kvasir-SEG download's images + kavsir_bboxes.json.

Layout: the Kvasir-SEG folder (or its parent), as for segmentation; here the box file is required:
    Kvasir-SEG/images/<id>.jpg   Kvasir-SEG/kavsir_bboxes.json (sic)   (masks/ is not read)
One class, "polyp". The JSON's boxes are in pixels with xmax/ymax exclusive (the mask's extent), which
is COCO's x + w. Its height/width must match the image's; a box crossing the border is clipped, a
degenerate one dropped (BoxLedger: counted, with the id). An image listed in the JSON but absent
from images/ rejects the download; an image without an entry is a negative (no polyp boxed).
Split: the same as kvasir_seg (kvasir_seg.choose_splits: seeded 64/16/20, or LVM-Med's Kvasir.json with
--split-file, and --exclude-from), so segmentation and detection test the same images; LVM-Med's
detection code for Kvasir is not published.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medssl_bench.downstream.datasets.options import PrepareOptions, supported
from medssl_bench.downstream.datasets import kvasir_seg
from medssl_bench.downstream.datasets._paths import child, find_root
from medssl_bench.downstream.datasets.canonical import files_by_stem, is_synthetic
from medssl_bench.downstream.datasets.canonical_det import BoxLedger, DetItem, write_detection_dataset
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.imageio import read_pixels

NAME = "kvasir_det"
CLASSES = ["polyp"]
LAYOUT = "Kvasir-SEG/images/<id>.jpg + Kvasir-SEG/kavsir_bboxes.json"
DEFAULT_N = kvasir_seg.DEFAULT_N


def prepare(src: Path, out_root: Path, *, seed: int = 42, progress=None,
            options: PrepareOptions | None = None) -> Path:
    """Read a Kvasir-SEG download's images and box file; write `out_root/kvasir_det/` (COCO)."""
    options = supported(options, NAME, split_file=True, exclude_from=True)
    root = find_root(src, ("images",), label="Kvasir-SEG", layout=LAYOUT)  # src or Kvasir-SEG/
    image_dir = child(root, "images")
    box_path = kvasir_seg.find_box_json(root)
    if box_path is None:
        raise UserError(f"no {kvasir_seg.BOX_JSON} beside images/; expected {LAYOUT}", root / kvasir_seg.BOX_JSON)
    entries = kvasir_seg.parse_bboxes(box_path)
    images, ignored = files_by_stem(image_dir)
    for key in entries:
        if key not in images:
            raise UserError(f"entry {key!r} has boxes but images/{key}.jpg is missing", box_path)
    if not images:
        raise UserError(f"no images; expected {LAYOUT}", image_dir)
    stems = sorted(images)
    splits, method, split_fields = kvasir_seg.choose_splits([images[s].name for s in stems], seed, options)
    chosen = [(stem, split) for stem, split in zip(stems, splits) if split is not None]
    if options.split_file is None:
        method = ("no official split: kvasir_seg's seeded permutation of the sorted ids, 64/16/20 "
                  "train/val/test (segmentation and detection test the same images)")
    ledger = BoxLedger()
    marker = is_synthetic(Path(src), root, root.parent)

    def items():
        for stem, split in chosen:
            entry = entries.get(stem, {"bbox": []})
            height, width = read_pixels(images[stem]).shape[:2]
            if ("height" in entry or "width" in entry) and [entry.get("height"), entry.get("width")] != [height, width]:
                raise UserError(f"entry {stem!r} says {entry.get('width')}x{entry.get('height')} but the image is "
                                f"{width}x{height} (width x height)", box_path)
            boxes = []
            for k, box in enumerate(entry["bbox"]):
                kept = ledger.admit([box[c] for c in kvasir_seg.BOX_KEYS], width, height, f"{box_path.name} {stem} box {k + 1}")
                if kept is not None:
                    boxes.append(kept)
            yield DetItem(stem, images[stem], np.array(boxes).reshape(-1, 4), [0] * len(boxes), str(split),
                          source=images[stem])

    folder = write_detection_dataset(
        out_root, NAME, CLASSES, items(),
        source={"layout": LAYOUT, "src": str(Path(src).resolve()), "synthetic_marker": marker},
        split_method=method, seed=None if options.split_file is not None else seed,
        synthetic=marker is not None, ledger=ledger, total=len(chosen),
        extra={"ignored_files": {"images": ignored}, "box_json": box_path.name,
               "images_without_boxes": sum(1 for s, _ in chosen if not entries.get(s, {}).get("bbox"))},
        progress=progress)
    return kvasir_seg.published.record_split(folder, **split_fields)


def synthesize(out: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = 96) -> Path:
    """The synthetic Kvasir-SEG download (kvasir_seg.synthesize): its box file comes from the masks."""
    return kvasir_seg.synthesize(out, n=n, seed=seed, size=size)
