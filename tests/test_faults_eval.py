"""Faults in `bench eval` (issue 22, item 4): a worker killed mid-job (as the OOM killer does) is
one failed job, recorded with its signal, and the other jobs go on; a killed parent takes its
workers with it. Worker processes are found through /proc (Linux)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.app.evaluate import FAULT_KILL_JOB
from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


@pytest.fixture
def eval_ws(imported_tv18, brain_tumor_root) -> tuple[Workspace, list[str]]:
    """A workspace with one imported checkpoint (torchvision ResNet-18 weights) and the common args."""
    ws = imported_tv18
    return ws, ["--workspace", str(ws.root), "--data-root", str(brain_tumor_root(96, 64))]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(pid: int) -> set[int]:
    children = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == pid}
    return children.union(*(_descendants(c) for c in children))


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_a_killed_worker_is_one_failed_job_and_the_others_go_on(eval_ws, monkeypatch, capfd):
    ws, common = eval_ws
    # two units in two workers; random init's seed-1 job SIGKILLs its worker as it starts
    monkeypatch.setenv(FAULT_KILL_JOB, "random-*/brain_tumor/knn/1/1")
    code = main(["eval", "--checkpoint", "tv18,random", "--task", "brain_tumor", "--protocol", "knn", "--seeds", "3",
                 "--jobs", "2", *common])
    out, err = capfd.readouterr()
    assert code == 1, out + err  # a failed job: exit 1, as for any failed job
    assert "Traceback" not in out + err and "BrokenProcessPool" not in out + err
    assert "5 done, 1 failed" in out
    status = {("random" if e["checkpoint_id"].startswith("random") else "tv18", e["seed"]): e
              for e in ResultsStore.open(None, ws).evaluations()}
    assert len(status) == 6
    dead = status.pop(("random", 1))
    assert dead["status"] == "failed" and "signal 9 (SIGKILL" in dead["reason"], dead["reason"]
    assert dead["provenance"]["worker"]["exitcode"] == -signal.SIGKILL
    # the killed worker's earlier job (seed 0) and later one (seed 2, in a fresh worker) and the
    # other worker's unit all ran
    assert {k: e["status"] for k, e in status.items()} == {(c, s): "done" for c in ("random", "tv18") for s in (0, 2)} | {
        ("tv18", 1): "done"}


def test_a_killed_eval_parent_leaves_no_worker_alive(eval_ws):
    ws, common = eval_ws
    args = ["eval", "--checkpoint", "random", "--task", "brain_tumor", "--protocol", "linear",
            "--label-fraction", "0.5,1.0", "--seeds", "3", "--jobs", "1", *common]
    proc = subprocess.Popen([sys.executable, "-m", "medssl_bench.harness", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # until a worker has recorded a job
            time.sleep(0.3)
            workers |= _descendants(proc.pid)
            if (ws.root / "results.db").exists() and ResultsStore.open(None, ws).done_keys():
                break
        workers |= _descendants(proc.pid)
        assert proc.poll() is None and workers, "kill the run part-way (make the jobs slower if this fails)"
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as the OOM killer or `kill -9 PID` would
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "a worker outlived its killed parent"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the process group
        except ProcessLookupError:
            pass
        proc.wait()
