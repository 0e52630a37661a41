"""Did the checkpoint see this task's test images in pretraining? (issue 18, leakage guard)

A pretraining run records its corpus id; the corpus manifest holds the sha256 of every image's
decoded pixels (harness.corpus.pixel_hash). The test images of a prepared dataset are decoded the
same way (harness.imageio) and hashed, so an image counts as seen when its pixels are in the corpus,
whatever file it came from or how it was encoded. The result goes into every record's provenance
(`test_overlap`); the leaderboard marks a cell whose checkpoint saw any of its test images.

What it cannot see: pixels changed between the corpus and the prepared test image (a volume
re-windowed into PNG slices, a resized copy), and checkpoints without a corpus in this workspace
(imported weights such as LVM-Med's release: keep their pretraining lists out of test with
`bench data prepare --exclude-from`). Those are recorded as unknown, never as clean.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from medssl_bench.harness.corpus import decode_file, load_corpus
from medssl_bench.harness.fsutil import write_text_atomic
from medssl_bench.harness.workspace import Workspace

SHOWN = 5  # test image ids named in a record


def hash_test_images(folder: Path, content_hash: str, cache_dir: Path) -> dict[str, tuple[str, str | None]]:
    """{sample id: (pixel hash, domain)} of the test split of a prepared dataset, computed once per
    content hash and cached as JSON (a prepared folder never changes under one content hash)."""
    cached = cache_dir / f"{content_hash}.json"
    if cached.is_file():
        return {k: tuple(v) for k, v in json.loads(cached.read_text()).items()}
    hashes = {}
    with open(folder / "samples.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("split") != "test":
                continue
            # decoded and hashed exactly as the corpus builder does; an unreadable file (checked at
            # prepare, gone or damaged since) has no images and cannot match
            images = decode_file(str(folder / (row.get("path") or row.get("image") or "")))["images"]
            if len(images) == 1:
                hashes[row["id"]] = (images[0][1], row.get("domain") or None)
    write_text_atomic(cached, json.dumps(hashes, sort_keys=True))
    return hashes


def corpus_hashes(sidecar: dict, workspace: Workspace) -> tuple[str | None, set[str] | None, str | None]:
    """(corpus id, the pixel hashes of its images, or None with the reason they are unknown)."""
    corpus_id = (sidecar.get("corpus") or {}).get("id")
    if not corpus_id:
        return None, None, "the checkpoint records no pretraining corpus (imported weights or random init)"
    folder = workspace.corpora / corpus_id
    if not (folder / "manifest.jsonl").is_file():
        return corpus_id, None, f"corpus {corpus_id} is not in this workspace"
    return corpus_id, {e["hash"] for e in load_corpus(folder).entries}, None


def overlap_record(test_hashes: dict[str, tuple[str, str | None]], corpus_id: str | None,
                 seen_hashes: set[str] | None, unknown: str | None, domain: str | None = None) -> dict:
    """The record of one task: how many of its test images (of `domain` when the task tests one site)
    are in the corpus, and the first few of them."""
    ids = sorted(i for i, (_, d) in test_hashes.items() if domain is None or d == domain)
    if seen_hashes is None:
        return {"corpus": corpus_id, "test_images": len(ids), "seen": None, "unknown": unknown}
    seen = [i for i in ids if test_hashes[i][0] in seen_hashes]
    return {"corpus": corpus_id, "test_images": len(ids), "seen": len(seen), "seen_ids": seen[:SHOWN]}
