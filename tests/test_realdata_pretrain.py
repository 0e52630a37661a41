"""Real files end to end (issue 21 item 5): the real-data root of tests/realdata.py (DICOM CT/MR/CR/US/NM in
many transfer syntaxes, the MNI152 NIfTI volume, fundus, IHC and 16-bit microscopy) is built into a corpus,
packed, read back as the direct decode shrunk to the max side, and pretrained for one epoch from the pack."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medssl_bench.harness import imageio
from medssl_bench.harness.app.cli import main
from medssl_bench.harness.corpus import build_corpus
from medssl_bench.harness.corpus_pack import fit_max_side, pack_corpus
from medssl_bench.harness.packed_reader import PackedImages, load_packed
from medssl_bench.harness.runs import read_run
from medssl_bench.harness.workspace import Workspace


@pytest.mark.slow
def test_the_real_data_corpus_packs_and_pretrains_for_an_epoch(real_data_root, tmp_path, capsys):
    ws = Workspace(tmp_path / "ws")
    corpus = build_corpus([real_data_root], ws)
    folder = pack_corpus(corpus, max_side=128, shard_images=64, workers=2)
    info = load_packed(folder)
    assert info["n_images"] == len(corpus.entries) > 300

    packed = PackedImages(str(folder))
    datasets = {e["dataset"] for e in corpus.entries}
    assert datasets == {"pydicom_data", "mni152", "skimage_fundus", "skimage_ihc", "stardist_nuclei"}
    # the first image of every dataset, every tenth MNI slice and every DICOM entry of a few kinds
    picks = sorted({next(k for k, e in enumerate(corpus.entries) if e["dataset"] == d) for d in datasets}
                   | {k for k, e in enumerate(corpus.entries) if e["dataset"] == "mni152" and e["slice"] % 10 == 0}
                   | {k for k, e in enumerate(corpus.entries)
                      if any(name in e["path"] for name in ("RG1_", "JPGLosslessP14", "JPEG-LL", "MR2_"))})
    assert len(picks) > 25
    for k in picks:
        entry = corpus.entries[k]
        expected = fit_max_side(imageio.read_pixels(entry["path"], entry.get("slice")), 128)
        assert np.array_equal(packed.pixels(k), expected), entry["path"]

    assert main(["pretrain", "--workspace", str(ws.root), "--method", "simclr", "--corpus", corpus.id,
                 "--image-size", "32", "--batch-size", "32", "--epochs", "1", "--num-workers", "0",
                 "--name", "real"]) == 0
    record = read_run(ws.runs / "real")
    assert record["status"] == "done" and record["corpus"]["synthetic"] is False
    assert record["corpus"]["packed"]["max_side"] == 128
    steps = [json.loads(line) for line in (ws.runs / "real" / "metrics.jsonl").open()]
    assert len(steps) == len(corpus.entries) // 32 and all(np.isfinite(s["loss"]) for s in steps)
