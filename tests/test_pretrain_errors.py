"""Bad input to `bench pretrain`: one clear line naming the problem, exit code 2, no traceback,
and earlier runs left exactly as they were."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from medssl_bench.harness.app.cli import main
from tests.pretrain_helpers import fails_cleanly


def snapshot(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier_run(tiny_corpus):
    workspace, corpus_id = tiny_corpus
    args = ["pretrain", "--workspace", str(workspace), "--corpus", corpus_id, "--method", "simclr", "--epochs", "1",
            "--image-size", "32", "--batch-size", "16", "--num-workers", "0", "--name", "earlier"]
    assert main(args) == 0
    return workspace / "runs" / "earlier"


def png_folder(path, n=6):
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(path / f"img_{i}.png")
    return path


def test_bad_inputs_fail_cleanly_and_leave_earlier_runs_untouched(tiny_corpus, earlier_run, tmp_path, capsys):
    workspace, corpus_id = tiny_corpus
    before = snapshot(earlier_run)
    base = ["pretrain", "--workspace", str(workspace), "--image-size", "32", "--num-workers", "0", "--epochs", "1"]

    fails_cleanly(capsys, [*base, "--method", "mocov9", "--corpus", corpus_id], "unknown method 'mocov9'", "simclr")
    fails_cleanly(capsys, [*base, "--method", "simclr", "--corpus", "nope123"], "nope123")
    fails_cleanly(capsys, [*base, "--method", "simclr"], "--corpus is required")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails_cleanly(capsys, [*base, "--method", "simclr", "--corpus", str(empty)], str(empty))
    fails_cleanly(capsys, [*base, "--method", "simclr", "--corpus", corpus_id, "--batch-size", "100000"],
                  "--batch-size 100000", corpus_id)
    fails_cleanly(capsys, [*base, "--method", "simclr", "--corpus", corpus_id, "--name", "earlier"],
                  "run 'earlier' already exists")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fails_cleanly(capsys, ["pretrain", "--workspace", str(blocker / "ws"), "--method", "simclr", "--corpus", corpus_id],
                  str(blocker / "ws"), "not writable")
    fails_cleanly(capsys, [*base, "--method", "simclr", "--corpus", corpus_id, "--set", "nonsense=1"], "nonsense")

    assert snapshot(earlier_run) == before


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_is_named(tmp_path, capsys, workers):
    images = png_folder(tmp_path / "imgs", n=8)
    workspace = tmp_path / "ws"
    assert main(["corpus", "build", "--root", str(images), "--workspace", str(workspace)]) == 0
    corpus_id = next((workspace / "corpora").iterdir()).name
    victim = images / "img_3.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # corrupted after indexing
    fails_cleanly(capsys, ["pretrain", "--workspace", str(workspace), "--corpus", corpus_id, "--method",
                                 "simclr", "--image-size", "32", "--batch-size", "8", "--num-workers", workers],
                        str(victim))
    runs = list((workspace / "runs").iterdir())
    assert len(runs) == 1 and '"failed"' in (runs[0] / "run.json").read_text()
    assert str(victim) in (runs[0] / "run.json").read_text()


def test_corpus_whose_files_vanished(tmp_path, capsys):
    images = png_folder(tmp_path / "imgs2", n=4)
    workspace = tmp_path / "ws"
    assert main(["corpus", "build", "--root", str(images), "--workspace", str(workspace)]) == 0
    corpus_dir = next((workspace / "corpora").iterdir())
    shutil.rmtree(images)
    fails_cleanly(capsys, ["pretrain", "--workspace", str(workspace), "--corpus", corpus_dir.name, "--method",
                           "simclr"], "img_")
