"""Issue 22: damaged files, crashes between writes and oversized inputs are one line naming the file and
what to do, never a traceback; stores open as each command needs. Every case here broke before the fix."""
from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.errors import CorruptImageError, UserError
from medssl_bench.harness.workspace import Workspace
from tests.pretrain_helpers import fails_cleanly


def png_folder(path: Path, n: int = 8) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(path / f"img_{i}.png")
    return path


def bomb_png(path: Path, side: int = 13000) -> Path:
    """A 1-bit grayscale PNG of side x side pixels, all black: ~20 KB on disk, 169 MB decoded (written row by
    row with zlib, so making it costs the test no memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------ damaged run files

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after epoch 2 of 3 (so --resume has work left): (workspace, run folder)."""
    root = tmp_path_factory.mktemp("faults")
    images, ws = png_folder(root / "imgs", n=16), root / "ws"
    assert main(["corpus", "build", "--root", str(images), "--workspace", str(ws)]) == 0
    corpus_id = next((ws / "corpora").iterdir()).name
    assert main(["pretrain", "--workspace", str(ws), "--corpus", corpus_id, "--method", "simclr", "--epochs", "3",
                 "--stop-after-epoch", "2", "--image-size", "32", "--batch-size", "8", "--num-workers", "0",
                 "--name", "victim"]) == 0
    return ws, ws / "runs" / "victim"


def resume_args(ws: Path) -> list[str]:
    return ["pretrain", "--workspace", str(ws), "--method", "simclr", "--name", "victim", "--resume",
            "--num-workers", "0"]


@pytest.fixture
def damage(stopped_run):
    """damage(file, new bytes): the file is restored after the test, so each case starts from a sound run."""
    saved: dict[Path, bytes] = {}

    def apply(path: Path, data: bytes) -> Path:
        saved.setdefault(path, path.read_bytes())
        path.write_bytes(data)
        return path
    yield apply
    for path, data in saved.items():
        path.write_bytes(data)


def test_empty_last_checkpoint_is_one_line(stopped_run, damage, capsys):
    ws, run = stopped_run
    pointer = damage(run / "train" / "last_checkpoint", b"")
    fails_cleanly(capsys, resume_args(ws), str(pointer), "empty", "epoch_2.pth", "--resume")


def test_truncated_epoch_checkpoint_names_the_previous_epoch(stopped_run, damage, capsys):
    ws, run = stopped_run
    newest = run / "train" / "epoch_2.pth"
    damage(newest, newest.read_bytes()[: newest.stat().st_size // 2])
    err = fails_cleanly(capsys, resume_args(ws), str(newest), "damaged checkpoint", "epoch_1.pth", "delete")
    assert "previous epoch" in err


def test_planted_pickle_is_refused_and_never_run(stopped_run, damage, tmp_path, capsys):
    ws, run = stopped_run
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    planted = run / "train" / "epoch_2.pth"  # where --resume reads: the newest epoch
    damage(planted, b"")
    torch.save({"state_dict": Payload()}, planted)
    fails_cleanly(capsys, resume_args(ws), str(planted), "not a checkpoint this run wrote", "delete it", "epoch_1.pth")
    assert not marker.exists()
    # a plain tensor file (weights only, loads fine) that mmengine did not write: refused too
    torch.save({"conv1.weight": torch.zeros(2)}, planted)
    fails_cleanly(capsys, resume_args(ws), str(planted), "not a checkpoint this run wrote")


def test_half_written_metrics_line_is_dropped_with_a_note(stopped_run, damage, capsys):
    """The state a kill mid-log leaves: the run resumes, the cut line is gone, the note names the file."""
    from medssl_bench.harness.run_files import keep_metrics_until, read_metrics

    ws, run = stopped_run
    metrics = run / "metrics.jsonl"
    rows = read_metrics(metrics)
    notes: list[str] = []
    damage(metrics, metrics.read_bytes() + b'{"step": 99, "epo')
    assert read_metrics(metrics, notes.append) == rows and notes and str(metrics) in notes[0]
    keep_metrics_until(metrics, rows[-1]["step"])
    assert metrics.read_text().endswith("}\n") and len(metrics.read_text().splitlines()) == len(rows)
    damage(metrics, metrics.read_bytes().replace(b"\n", b"\nnot json\n", 1))  # damage in the middle: an error
    with pytest.raises(UserError, match="line 2 is not a metrics row"):
        read_metrics(metrics)


def test_resume_through_a_half_written_metrics_line(tmp_path, capsys):
    """End to end: a cut last line no longer stops --resume (json.loads raised in RunRecordHook)."""
    images, ws = png_folder(tmp_path / "imgs", n=8), tmp_path / "ws"
    assert main(["corpus", "build", "--root", str(images), "--workspace", str(ws)]) == 0
    corpus = next((ws / "corpora").iterdir()).name
    common = ["--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--name", "cut"]
    assert main(["pretrain", "--workspace", str(ws), "--corpus", corpus, "--method", "simclr", "--epochs", "2",
                 "--stop-after-epoch", "1", *common]) == 0
    with open(ws / "runs" / "cut" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 2, "epoch": 2, "lo')
    assert main(["pretrain", "--workspace", str(ws), "--method", "simclr", "--resume", *common]) == 0
    steps = [json.loads(line)["step"] for line in (ws / "runs" / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


# -------------------------------------------------------------------------------- crash-safe export

def tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def test_crash_between_weights_and_sidecar_is_a_mismatched_pair(tmp_path, monkeypatch):
    from medssl_bench.harness import checkpoint
    from medssl_bench.harness.checkpoint_index import checkpoint_ref

    run = tmp_path / "ws" / "runs" / "r"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    sidecar = {"method": "simclr", "backbone": "resnet18"}
    weights = checkpoint.save_backbone(tiny_module(), run / "backbone.safetensors", sidecar)
    checkpoint.load_backbone_state(weights)  # a sound pair loads

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between the weights and the sidecar")
    monkeypatch.setattr(checkpoint, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_backbone(torch.nn.Linear(3, 2), weights, sidecar)
    monkeypatch.undo()
    ws = Workspace(tmp_path / "ws")
    for read in (lambda: checkpoint_ref(weights, ws), lambda: checkpoint.load_backbone_state(weights)):
        with pytest.raises(UserError, match="different exports") as err:
            read()
        assert str(weights) in str(err.value) and "--resume" in str(err.value)


def test_export_leaves_no_temp_files_and_clears_a_killed_ones(tmp_path, monkeypatch):
    from medssl_bench.harness import checkpoint

    weights = tmp_path / "backbone.safetensors"
    stale = tmp_path / ".backbone.safetensors.k1ll3d.tmp"  # what a kill -9 mid-export leaves
    stale.write_bytes(b"half")
    (tmp_path / ".backbone.json.k1ll3d.tmp").write_text("{")
    checkpoint.save_backbone(tiny_module(), weights, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.json", "backbone.safetensors"]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError):
        checkpoint.save_backbone(tiny_module(), weights, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.json", "backbone.safetensors"]


def test_atomic_writes_fsync_file_and_folder(tmp_path, monkeypatch):
    from medssl_bench.harness import fsutil

    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    fsutil.write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert synced == ["file", "dir"]


# ---------------------------------------------------------------------------------- bounded inputs

def test_symlink_loop_and_dangling_link_are_listed_and_the_build_goes_on(tmp_path, capsys):
    images = png_folder(tmp_path / "imgs", n=3)
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (images / "loop_a.png").symlink_to(images / "loop_b.png")
    (images / "loop_b.png").symlink_to(images / "loop_a.png")
    (images / "self").symlink_to(images / "self")
    ws = tmp_path / "ws"
    assert main(["corpus", "build", "--root", str(images), "--workspace", str(ws)]) == 0
    info = json.loads(next((ws / "corpora").iterdir()).joinpath("corpus.json").read_text())
    reasons = {Path(u["path"]).name: u["reason"] for u in info["unreadable"]}
    assert info["n_images"] == 3
    assert "dangling symbolic link" in reasons["gone.png"]
    assert "link loop" in reasons["loop_a.png"] and "link loop" in reasons["loop_b.png"]
    assert "link loop" in reasons["self"]


def test_pixel_budget_refuses_a_decompression_bomb_before_decoding(tmp_path):
    from medssl_bench.harness import imageio
    from medssl_bench.harness.corpus import build_corpus

    (tmp_path / "imgs").mkdir()
    bomb = bomb_png(tmp_path / "imgs" / "bomb.png")
    assert bomb.stat().st_size < 40_000  # 13000 x 13000 pixels
    started = time.perf_counter()
    with pytest.raises(CorruptImageError, match="pixel budget") as err:
        imageio.load_rgb(bomb)  # the training loader's read; decoding took ~1 s and 0.7 GB before
    assert str(bomb) in str(err.value) and time.perf_counter() - started < 0.5
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "ok.png")
    corpus = build_corpus([tmp_path / "imgs"], Workspace(tmp_path / "ws"))
    assert len(corpus.entries) == 1 and "pixel budget" in corpus.info["unreadable"][0]["reason"]


def test_pixel_budget_covers_masks_read_at_prepare(tmp_path):
    from medssl_bench.downstream.datasets.canonical_seg import read_mask_gray

    with pytest.raises(CorruptImageError, match="pixel budget"):
        read_mask_gray(bomb_png(tmp_path / "mask.png"))


def test_sparse_safetensors_is_refused_without_reading_it(tmp_path, monkeypatch, capsys):
    from medssl_bench.harness import checkpoint_index

    sparse = tmp_path / "big.safetensors"
    save_file({"conv1.weight": torch.zeros(4)}, str(sparse))
    os.truncate(sparse, 2**30)  # 1 GiB apparent, a few bytes on disk: the header declares 16 bytes of tensors
    zeros = tmp_path / "zeros.safetensors"
    zeros.touch()
    os.truncate(zeros, 2**30)
    monkeypatch.setattr(checkpoint_index, "sha256_file", lambda *a: pytest.fail("read the whole file"))
    for path, text in ((sparse, "declares 16 bytes"), (zeros, "header length 0")):
        started = time.perf_counter()
        fails_cleanly(capsys, ["import-checkpoint", str(path), "--workspace", str(tmp_path / "ws")], str(path), text)
        assert time.perf_counter() - started < 1.0


def test_non_finite_weights_are_refused_at_import(tmp_path, capsys):
    from torchvision.models import resnet18

    state = resnet18().state_dict()
    state["layer3.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    src = tmp_path / "diverged.pth"
    torch.save(state, src)
    fails_cleanly(capsys, ["import-checkpoint", str(src), "--workspace", str(tmp_path / "ws")],
                  str(src), "NaN or inf", "layer3.0.conv1.weight")
    assert not (tmp_path / "ws" / "checkpoints" / "diverged").exists()


# -------------------------------------------------------------------------------------------- stores

def recorded_store(path: Path) -> None:
    from medssl_bench.harness.store import EvalKey, ResultsStore

    with ResultsStore.open(f"sqlite:///{path}", Workspace(path.parent)) as store:
        store.record_done(EvalKey("abc", "t", "knn", 1.0, 0), protocol={}, provenance={}, wall_time_s=1.0,
                          splits={"test": {"metric": "acc", "value": 0.5}})


def test_leaderboard_reads_a_read_only_store(tmp_path):
    """A store in a read-only folder (a shared, archived or mounted results.db): `bench leaderboard` only
    reads, so it must work and write nothing there. Run as `nobody` when the tests run as root, whom
    permissions do not stop."""
    import subprocess
    import sys

    top = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-ro-{os.getpid()}-{time.monotonic_ns()}"
    folder, site = top / "store", top / "site"
    try:
        folder.mkdir(parents=True)
        site.mkdir()
        recorded_store(folder / "r.db")
        before = sorted(p.name for p in folder.iterdir())
        (folder / "r.db").chmod(0o444)
        folder.chmod(0o555)
        top.chmod(0o755)
        site.chmod(0o777)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        if as_user and not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        done = subprocess.run([*as_user, sys.executable, "-m", "medssl_bench.harness", "leaderboard", "--db",
                               f"sqlite:///{folder}/r.db", "--out", str(site), "--workspace", str(site / "ws")],
                              capture_output=True, text=True, cwd=top, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "abc" in (site / "index.html").read_text()
        assert sorted(p.name for p in folder.iterdir()) == before
    finally:
        if folder.exists():
            folder.chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_store_is_refused_for_recording(url, tmp_path):
    from medssl_bench.harness.store import ResultsStore

    with pytest.raises(UserError, match="in-memory SQLite database"):
        ResultsStore.open(url, Workspace(tmp_path))


def test_eval_refuses_an_in_memory_store(tmp_path, capsys):
    fails_cleanly(capsys, ["eval", "--checkpoint", "random", "--task", "brain_tumor", "--db", "sqlite://",
                           "--workspace", str(tmp_path / "ws")], "in-memory")
