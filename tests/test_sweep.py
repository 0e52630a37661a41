"""`bench sweep`: Optuna studies on SQLite and PostgreSQL, exact trial counts with parallel workers,
resumption after a kill, pruning, and a proof that a sweep never reads a test split."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.runs import read_run
from medssl_bench.harness.workspace import Workspace
from tests.pg import postgres_url  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def sweep_data(brain_tumor_root) -> Path:
    """A small synthetic Brain-Tumor MRI prepared into a data root (the sweep's scoring task)."""
    return brain_tumor_root(64, 48)


def sweep_args(ws: Path, corpus_id: str, data_root: Path, study: str, trials: int, *extra: str) -> list[str]:
    return ["sweep", "--method", "simclr", "--corpus", corpus_id, "--task", "brain_tumor", "--trials", str(trials),
            "--epochs", "2", "--study", study, "--heartbeat", "1", "--data-root", str(data_root),
            "--workspace", str(ws), "--final-seeds", "1", "--final-protocol", "knn", *extra]


def open_test_study(ws: Path, name: str, url: str | None = None):
    from medssl_bench.harness.app.sweep import open_study

    return open_study(url or f"sqlite:///{ws / 'sweeps.db'}", name)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_sweep_never_reads_test_then_evaluates_the_best_on_test_once(tiny_corpus, sweep_data):
    """An audit hook records every file the process opens: during the sweep the val images are
    read and no test image is; the completed study's best checkpoint is then tested exactly once."""
    from medssl_bench.downstream.families import get_family
    from medssl_bench.harness.checkpoint_index import list_checkpoints
    from medssl_bench.harness.store import ResultsStore

    ws, corpus_id = tiny_corpus
    data = get_family("classification").load(sweep_data / "brain_tumor")
    test_files = {str(p.resolve()) for p in data.paths("test")}
    val_files = {str(p.resolve()) for p in data.paths("val")}
    opened: set[str] = set()
    recording = [True]

    def audit(event, args):
        if recording[0] and event == "open" and isinstance(args[0], (str, Path)):
            opened.add(str(Path(args[0]).resolve()))

    sys.addaudithook(audit)
    assert main(sweep_args(ws, corpus_id, sweep_data, "audit", 3, "--no-final-eval", "--epochs", "1")) == 0
    recording[0] = False
    assert val_files <= opened, "the audit hook saw no validation image: it proves nothing"
    assert not test_files & opened, sorted(test_files & opened)[:3]

    study = open_test_study(ws, "audit")
    assert len(states(study)) == 3 and set(states(study)) <= {"COMPLETE", "PRUNED"}, states(study)
    assert states(study)[:2] == ["COMPLETE", "COMPLETE"]  # the pruner waits for 2 finished trials
    assert study.user_attrs["final"]["status"] == "selected"  # no test evaluation was asked for
    # every trial's run is tuning material, not a checkpoint `bench eval` picks up
    names = {r.name for r in list_checkpoints(Workspace(ws))}
    best_run = study.best_trial.user_attrs["run"]
    assert best_run in names and not any(n.startswith("sweep-audit-") and n != best_run for n in names)
    sweep = read_run(ws / "runs" / best_run)["sweep"]
    assert sweep["best"] and sweep["trials"] == 3 and sweep["compute_s"] > 0

    # the study is complete: a fresh study with final evaluation tests its best checkpoint once
    assert main(sweep_args(ws, corpus_id, sweep_data, "final", 1, "--epochs", "1")) == 0
    final = open_test_study(ws, "final")
    run = final.best_trial.user_attrs["run"]
    assert final.user_attrs["final"] == {"run": run, "status": "evaluated", "done": 1, "failed": 0}
    store = ResultsStore.open(None, Workspace(ws))
    checkpoint = next(c for c in store.checkpoints() if c["name"] == run)
    assert checkpoint["sidecar"]["sweep"]["trials"] == 1
    tested = [r for r in store.results(split="test") if r["checkpoint_id"] == checkpoint["id"]]
    assert len(tested) == 1 and tested[0]["task"] == "brain_tumor"
    # re-running a finished study trains nothing more and does not evaluate again
    assert main(sweep_args(ws, corpus_id, sweep_data, "final", 1, "--epochs", "1")) == 0
    assert len(open_test_study(ws, "final").trials) == 1
    assert len([r for r in store.results(split="test") if r["checkpoint_id"] == checkpoint["id"]]) == 1
    store.close()


def test_trailing_trial_is_pruned_and_its_pretraining_stops(tiny_corpus, sweep_data, tmp_path):
    """Two earlier trials reported a perfect score at every epoch: the median pruner stops the next
    one after its first report, and its run ends after 1 of 2 epochs."""
    import optuna

    from medssl_bench.harness.app.sweep import SweepRequest, prepare_study
    from medssl_bench.harness.app.sweep_worker import run_trial

    ws, corpus_id = tiny_corpus
    req = SweepRequest(method="simclr", trials=3, corpus=corpus_id, workspace=Workspace(ws), tasks=["brain_tumor"],
                       epochs=2, storage=f"sqlite:///{tmp_path / 'prune.db'}", study="prune", data_root=sweep_data)
    prepare_study(req)
    study = open_test_study(ws, "prune", req.storage_url)
    for value in (1.0, 1.0):
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={1: 1.0, 2: 1.0}, params={},
                                                  distributions={}))
    from medssl_bench.harness.app.sweep import sealed_tasks

    trial = study.ask()
    state = run_trial(study, trial, req, sealed_tasks(req), study.user_attrs["random_init_val"])
    assert state == "PRUNED"
    record = read_run(ws / "runs" / "sweep-prune-t0002")
    assert record["epochs_done"] == 1 and record["status"] == "stopped"
    assert list(study.trials[2].intermediate_values) == [1]


def test_four_workers_on_postgresql_run_exactly_n_trials(tiny_corpus, sweep_data, postgres_url):  # noqa: F811
    """4 worker processes share one study on a real PostgreSQL: exactly N trials, none lost or
    duplicated, each with its own run."""
    ws, corpus_id = tiny_corpus
    n = 6
    assert main(sweep_args(ws, corpus_id, sweep_data, "pg4", n, "--workers", "4", "--storage", postgres_url,
                           "--no-final-eval", "--epochs", "1")) == 0
    study = open_test_study(ws, "pg4", postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(n))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), states(study)
    runs = {t.user_attrs["run"] for t in trials}
    assert len(runs) == n and all(read_run(ws / "runs" / r)["epochs_done"] == 1 for r in runs)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n  # no two workers sampled alike


def test_a_killed_sweep_resumes_and_retries_the_killed_trial(tiny_corpus, sweep_data, tmp_path):
    """Kill a sweep (SIGKILL) mid-trial; the same command run again fails the dead trial after its
    heartbeat lapses, retries its parameters, and finishes with exactly N finished trials."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    ws, corpus_id = tiny_corpus
    args = sweep_args(ws, corpus_id, sweep_data, "killed", 3, "--no-final-eval",
                      "--storage", f"sqlite:///{tmp_path / 'killed.db'}")
    proc = subprocess.Popen([sys.executable, "-m", "medssl_bench.harness", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill as soon as a running trial has drawn its parameters and named its run (it pretrains then),
    # polled often on one storage object (a trial here lasts a few seconds, and a second trial's window
    # was missed once when the store was reopened every second). A trial killed before it drew its
    # parameters is retried with fresh ones; the claim test below covers that case.
    study, seen, pretraining = None, [], []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                study = study or open_test_study(ws, "killed", f"sqlite:///{tmp_path / 'killed.db'}")
                trials = study.get_trials(deepcopy=False)
                seen = [t.state.name for t in trials]
                pretraining = [t.number for t in trials if t.state.name == "RUNNING" and "run" in t.user_attrs]
            except Exception as err:  # the study is not created yet, or the database is busy
                seen = [repr(err)]
            if pretraining:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"no running trial to kill (sweep exit code {proc.poll()}): {seen}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = pretraining[0]
    # The re-run is a subprocess with a time limit: a dead trial that is never failed makes it wait
    # forever (it did, when the kill fell between claiming a trial and its first heartbeat).
    resumed = subprocess.run([sys.executable, "-m", "medssl_bench.harness", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = open_test_study(ws, "killed", f"sqlite:///{tmp_path / 'killed.db'}")
    trials = study.get_trials(deepcopy=False)
    assert trials[killed].state.name == "FAIL"
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3 and len(trials) == 4  # the dead trial, then N finished ones
    retry = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert len(retry) == 1 and retry[0].params == trials[killed].params


def test_a_trial_claimed_by_a_worker_that_died_at_once_is_failed_and_retried(tmp_path):
    """A claimed trial beats at once: a worker killed before it ran a step must not leave a RUNNING
    trial that no one fails (the next claimant would wait for it forever)."""
    from medssl_bench.harness.app.sweep import claim_trial, open_study

    url = f"sqlite:///{tmp_path / 'claims.db'}"
    study = open_study(url, "claims", heartbeat=1, create=True)
    dead = claim_trial(study, url, target=1)
    dead.suggest_float("lr", 0.1, 1.0)
    assert claim_trial(study, url, target=1) is None  # its heartbeat is fresh: the trial counts
    time.sleep(4.5)  # past the grace period (3 heartbeats; SQLite time has 1-s steps): the worker is gone
    retry = claim_trial(open_study(url, "claims", heartbeat=1), url, target=1)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING"]
    assert retry.number == 1 and retry.suggest_float("lr", 0.1, 1.0) == trials[0].params["lr"]


def test_bad_requests_are_one_line_errors(tiny_corpus, sweep_data, capsys):
    ws, corpus_id = tiny_corpus
    assert main(["sweep", "--method", "simclr", "--corpus", corpus_id, "--task", "isic2018",
                 "--data-root", str(sweep_data), "--workspace", str(ws)]) == 2
    assert "sweeps score classification tasks" in capsys.readouterr().err
    assert main(["sweep", "--method", "simclr", "--corpus", corpus_id, "--task", "fgadr",
                 "--data-root", str(sweep_data), "--workspace", str(ws)]) == 2
    assert "bench data prepare fgadr" in capsys.readouterr().err
    base = sweep_args(ws, corpus_id, sweep_data, "settings", 1, "--no-final-eval", "--epochs", "1")
    from medssl_bench.harness.app.sweep import SweepRequest, prepare_study

    prepare_study(SweepRequest(method="simclr", trials=1, corpus=corpus_id, workspace=Workspace(ws),
                               tasks=["brain_tumor"], epochs=1, study="settings", data_root=sweep_data))
    assert main([*base, "--scoring", "linear"]) == 2
    err = capsys.readouterr().err
    assert "was created with scoring='knn'" in err and "Traceback" not in err
    assert main(["sweep", "show", "--study", "nope", "--workspace", str(ws)]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
