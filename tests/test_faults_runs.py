"""Faults around a run's folder (issue 22): hostile names stay inside the workspace, --resume reads only the
run's own files after the workspace moves or the folder is copied, a run being trained is locked, and a
run whose process is gone shows as died. Tiny runs: 32 px, batch 16, 2 epochs stopped after the first."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.runlock import LOCK_FILE, this_process
from medssl_bench.harness.runs import list_runs, read_run
from medssl_bench.harness.workspace import Workspace
from tests.pretrain_helpers import TINY, one_line_error


@pytest.fixture
def own_workspace(tiny_corpus, tmp_path):
    """A private workspace holding a copy of the tiny corpus record (the images stay where they are), so
    a test may move or damage it: (workspace folder, corpus id)."""
    shared, corpus_id = tiny_corpus
    root = tmp_path / "ws"
    shutil.copytree(shared / "corpora" / corpus_id, root / "corpora" / corpus_id)
    return root, corpus_id


def pretrain(root, *args) -> int:
    return main(["pretrain", "--workspace", str(root), "--method", "simclr", *TINY, *args])


def started(root, corpus_id, name) -> Path:
    """A run stopped after epoch 1 of 2: resumable."""
    assert pretrain(root, "--corpus", corpus_id, "--epochs", "2", "--stop-after-epoch", "1", "--name", name) == 0
    return root / "runs" / name


def tree(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")} if folder.exists() else set()


# ----------------------------------------------------------------------------- names
def test_names_that_are_paths_are_refused_and_nothing_is_written(own_workspace, tmp_path, capsys):
    root, corpus_id = own_workspace
    outside, inside = tree(tmp_path), tree(root)
    hostile = ["../../escape", "../escape", str(tmp_path / "absolute"), "a/b", "..", ".hidden", "-rf", "x" * 101,
               "all", "tab\tname"]
    for name in hostile:
        code = pretrain(root, "--corpus", corpus_id, "--epochs", "1", "--name", name)
        one_line_error(capsys, code, "--name", "not a name")
        code = pretrain(root, "--epochs", "1", "--name", name, "--resume")
        one_line_error(capsys, code, "--name", "not a name")
    assert tree(tmp_path) == outside and tree(root) == inside  # nothing outside, nothing inside


def test_study_and_import_names_use_the_same_rule(own_workspace, tmp_path):
    from medssl_bench.harness.app.sweep import SweepRequest, prepare_study
    from medssl_bench.harness.checkpoint_index import import_checkpoint

    root, corpus_id = own_workspace
    for study in ("../escape", "/tmp/study", "a/b", "s" * 95):
        with pytest.raises(UserError, match="--study .* is not a name"):
            prepare_study(SweepRequest(method="simclr", trials=1, corpus=corpus_id, workspace=Workspace(root),
                                       study=study))
    src = tmp_path / "weights.pth"
    src.write_bytes(b"not read: the name is refused first")
    for name in ("../escape", "a/b", str(tmp_path / "abs")):
        with pytest.raises(UserError, match="--name .* is not a name"):
            import_checkpoint(src, Workspace(root), name=name)
    assert not (root / "checkpoints").exists() and not (tmp_path / "escape").exists()


# ----------------------------------------------------------------------------- resume
def test_resume_after_moving_the_workspace(own_workspace, tmp_path):
    root, corpus_id = own_workspace
    started(root, corpus_id, "moved")
    # mmengine's pointer holds the old absolute path
    assert str(root) in (root / "runs" / "moved" / "train" / "last_checkpoint").read_text()
    new_root = tmp_path / "elsewhere" / "ws"
    new_root.parent.mkdir()
    shutil.move(root, new_root)
    assert pretrain(new_root, "--epochs", "2", "--name", "moved", "--resume") == 0
    record = read_run(new_root / "runs" / "moved")
    assert record["status"] == "done" and record["epochs_done"] == 2
    assert not root.exists()  # nothing written at the old place
    assert str(new_root) in (new_root / "runs" / "moved" / "train" / "last_checkpoint").read_text()


def test_resume_of_a_copied_run_uses_the_copy_s_own_files(own_workspace):
    root, corpus_id = own_workspace
    original = started(root, corpus_id, "original")
    shutil.copytree(original, root / "runs" / "copy")
    shutil.rmtree(original)  # proves the copy never reads the original's checkpoint
    assert pretrain(root, "--epochs", "2", "--name", "copy", "--resume") == 0
    record = read_run(root / "runs" / "copy")
    assert record["status"] == "done" and record["epochs_done"] == 2
    assert record["name"] == "copy" and record["earlier_names"] == ["original"]
    assert not original.exists()
    assert "runs/copy/train/epoch_2.pth" in (root / "runs" / "copy" / "train" / "last_checkpoint").read_text()


def test_a_copy_without_its_checkpoints_is_refused_not_continued_from_the_original(own_workspace, capsys):
    root, corpus_id = own_workspace
    original = started(root, corpus_id, "source")
    copy = root / "runs" / "bare-copy"
    shutil.copytree(original, copy)
    for checkpoint in (copy / "train").glob("epoch_*.pth"):
        checkpoint.unlink()
    before = {p: p.stat().st_mtime_ns for p in original.rglob("*")}
    capsys.readouterr()
    code = pretrain(root, "--epochs", "2", "--name", "bare-copy", "--resume")
    one_line_error(capsys, code, "last_checkpoint", "not in this run's folder")
    assert {p: p.stat().st_mtime_ns for p in original.rglob("*")} == before
    assert read_run(copy)["status"] == "stopped" and not (copy / LOCK_FILE).exists()


def test_a_checkpoint_written_by_another_run_is_refused(own_workspace, capsys):
    root, corpus_id = own_workspace
    mine, other = started(root, corpus_id, "mine"), started(root, corpus_id, "other")
    shutil.copy(other / "train" / "epoch_1.pth", mine / "train" / "epoch_1.pth")  # planted by hand
    capsys.readouterr()
    code = pretrain(root, "--epochs", "2", "--name", "mine", "--resume")
    one_line_error(capsys, code, "epoch_1.pth", "written by run 'other'")
    assert read_run(mine)["epochs_done"] == 1 and not (mine / LOCK_FILE).exists()


# ----------------------------------------------------------------------------- lock and died runs
def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def write_lock(run_dir: Path, **changes) -> None:
    (run_dir / LOCK_FILE).write_text(json.dumps({**this_process(), **changes}))


def test_a_locked_run_refuses_a_second_resume_and_a_same_name_start(own_workspace, capsys):
    root, corpus_id = own_workspace
    run = started(root, corpus_id, "busy")
    write_lock(run)  # held by a live process: this one
    metrics = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    code = pretrain(root, "--epochs", "2", "--name", "busy", "--resume")
    one_line_error(capsys, code, "busy", f"process {os.getpid()}", "being trained")
    code = pretrain(root, "--corpus", corpus_id, "--epochs", "2", "--name", "busy")
    one_line_error(capsys, code, "already exists")
    assert (run / "metrics.jsonl").read_text() == metrics and read_run(run)["epochs_done"] == 1
    assert (run / LOCK_FILE).is_file()  # another process's lock is never removed


@pytest.mark.parametrize("stale", ["dead pid", "reused pid"])
def test_a_stale_lock_is_taken_over_and_said_so(own_workspace, capsys, stale):
    root, corpus_id = own_workspace
    run = started(root, corpus_id, "stale")
    # a pid that has exited, or this live pid with another start time (the pid was reused)
    write_lock(run, pid=dead_pid()) if stale == "dead pid" else write_lock(run, pid_start=1)
    capsys.readouterr()
    assert pretrain(root, "--epochs", "2", "--name", "stale", "--resume") == 0
    assert "took over the lock" in capsys.readouterr().out
    assert read_run(run)["status"] == "done" and not (run / LOCK_FILE).exists()


def test_runs_shows_died_for_a_running_run_whose_process_is_gone(own_workspace, capsys, monkeypatch):
    from medssl_bench.harness.app.cli.common import console

    monkeypatch.setattr(console, "width", 160)
    root, _ = own_workspace
    for name, lock in [("ghost", {"pid": dead_pid()}), ("reused", {"pid_start": 1}), ("nolock", None),
                       ("alive", {})]:
        run = root / "runs" / name
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"name": name, "status": "running", "created": name,
                                                  "config": {"epochs": 2}}))
        if lock is not None:
            write_lock(run, **lock)
    status = {r["name"]: r["status"] for r in list_runs(Workspace(root))}
    assert status == {"ghost": "died", "reused": "died", "nolock": "died", "alive": "running"}
    capsys.readouterr()
    assert main(["runs", "--workspace", str(root)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "died" in rows["ghost"] and "running" in rows["alive"]


def test_sigterm_is_recorded_as_interrupted_and_frees_the_lock(own_workspace):
    import signal

    from mmengine.hooks import Hook

    from medssl_bench.harness.app.pretrain import PretrainRequest, run_pretraining

    class Kill(Hook):  # as `kill PID` (or a scheduler's stop) during the second step
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    root, corpus_id = own_workspace
    req = PretrainRequest(method="simclr", corpus=corpus_id, workspace=Workspace(root), name="termed",
                          overrides={"image_size": 32, "batch_size": 16, "epochs": 2}, num_workers=0, hooks=[Kill()])
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(req)
    assert signal.getsignal(signal.SIGTERM) == previous
    record = read_run(root / "runs" / "termed")
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    assert not (root / "runs" / "termed" / LOCK_FILE).exists()
