"""Leakage guard: a checkpoint whose pretraining corpus holds some of a task's test images is found
out by pixel hash and marked, end to end: corpus -> pretrain -> eval -> leaderboard HTML."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.app.leakage import overlap_record
from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace
from tests.pretrain_helpers import pretrain

SEEN = 5  # test images copied into the corpus


def test_overlap_counts_only_the_tested_domain():
    hashes = {"a": ("h1", "BMC"), "b": ("h2", "HK"), "c": ("h3", "HK")}
    assert overlap_record(hashes, "c0", {"h2", "h9"}, None, "HK") == {
        "corpus": "c0", "test_images": 2, "seen": 1, "seen_ids": ["b"]}
    assert overlap_record(hashes, "c0", {"h2"}, None)["test_images"] == 3
    unknown = overlap_record(hashes, None, None, "no corpus")
    assert unknown["seen"] is None and unknown["unknown"] == "no corpus"


def test_a_checkpoint_pretrained_on_test_images_is_flagged_end_to_end(tmp_path, brain_tumor_root):
    data_root = brain_tumor_root(96, 64)
    folder = data_root / "brain_tumor"
    with open(folder / "samples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    test_rows = [r for r in rows if r["split"] == "test"]
    train_rows = [r for r in rows if r["split"] == "train"]
    # The corpus: 27 training images and 5 test images, copied under other names (pixels decide, not names).
    corpus_dir = tmp_path / "corpus" / "mri"
    corpus_dir.mkdir(parents=True)
    for i, row in enumerate(train_rows[:27] + test_rows[:SEEN]):
        shutil.copy(folder / row["path"], corpus_dir / f"img{i:03d}{Path(row['path']).suffix}")
    ws = Workspace(tmp_path / "ws")
    assert main(["corpus", "build", "--root", str(tmp_path / "corpus"), "--workspace", str(ws.root)]) == 0
    (corpus_id,) = [p.name for p in ws.corpora.iterdir()]
    assert pretrain(ws.root, corpus_id, "--method", "simclr", "--epochs", "1", "--name", "leaky") == 0

    common = ["--workspace", str(ws.root), "--data-root", str(data_root), "--jobs", "1"]
    assert main(["eval", "--checkpoint", "leaky,random", "--task", "brain_tumor", "--protocol", "knn",
                 "--seeds", "1", *common]) == 0
    with ResultsStore.open(None, ws) as store:
        records = {r["checkpoint_id"]: r["provenance"]["test_overlap"]
                   for r in store.results(split="test", details=False)}
        names = {c["id"]: c["name"] for c in store.checkpoints()}
    by_name = {names[k]: v for k, v in records.items()}
    assert by_name["leaky"] == {"corpus": corpus_id, "test_images": len(test_rows), "seen": SEEN,
                                "seen_ids": sorted(r["id"] for r in test_rows[:SEEN])[:5]}
    random = next(v for k, v in by_name.items() if k != "leaky")
    assert random["seen"] is None and "no pretraining corpus" in random["unknown"]

    assert main(["leaderboard", "--workspace", str(ws.root), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert page.count("class=\"test-seen\"") == 1
    assert f"holds {SEEN} of the {len(test_rows)} test images" in page
