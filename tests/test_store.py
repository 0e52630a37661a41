"""The results store (harness.store) on real SQLite files and a real PostgreSQL server."""
from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.store import EvalKey, ResultsStore
from medssl_bench.harness.workspace import Workspace
from tests.pg import new_database, postgres_url  # noqa: F401  (postgres_url is a fixture)

REPO_ROOT = Path(__file__).resolve().parent.parent
_database_names = (f"store_{n}" for n in itertools.count())


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A URL of an empty store on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'results.db'}"
    server = request.getfixturevalue("postgres_url")
    return new_database(server, next(_database_names))


@pytest.fixture
def store(store_url, workspace):
    opened = ResultsStore.open(store_url, workspace)
    yield opened
    opened.close()


def splits(value: float, per_case: list | None = None) -> dict:
    return {
        "val": {"metric": "accuracy", "value": value, "metrics": {"accuracy": value, "auroc": float("nan")},
                "per_class": {"0": 0.5, "1": [0.25, None]}, "per_case": [1.0, 0.0, 1.0]},
        "test": {"metric": "accuracy", "value": value / 2, "metrics": {"accuracy": value / 2, "macro_f1": 0.1},
                 "per_class": None, "per_case": per_case if per_case is not None else [0.5, None, 1e-300]},
    }


PROVENANCE = {"method": "simclr", "checkpoint": "abc123", "data": {"content_hash": "d" * 64, "synthetic": True},
              "packages": {"torch": "2.9.1"}}


def record(store, key, value=0.8, force=False, **kw):
    return store.record_done(key, splits=splits(value, **kw), protocol={"lr": 0.1, "epochs": 2},
                             provenance=PROVENANCE, wall_time_s=3.5, force=force)


def test_round_trip(store):
    tenth, hundredth = EvalKey("abc123", "isic", "linear", 0.1, 0), EvalKey("abc123", "isic", "linear", 0.01, 1)
    assert not store.is_done(tenth)
    assert record(store, tenth, 0.8) and record(store, hundredth, 0.6)
    assert store.is_done(tenth) and store.is_done(hundredth)
    assert store.is_done(EvalKey("abc123", "isic", "linear", 1 / 10, 0))
    assert not store.is_done(EvalKey("abc123", "isic", "linear", 0.1, 1))
    assert store.done_keys() == {tenth, hundredth}
    assert store.done_keys(checkpoint_id="other") == set() and store.done_keys(task="isic") == {tenth, hundredth}

    rows = store.results(split="test")
    assert [(r["label_fraction"], r["seed"]) for r in rows] == [(0.01, 1), (0.1, 0)]
    test = rows[1]
    assert test["metric"] == "accuracy" and test["value"] == 0.4
    assert test["metrics"] == {"accuracy": 0.4, "macro_f1": 0.1}
    assert test["per_class"] is None and test["per_case"] == [0.5, None, 1e-300]
    assert test["protocol_config"] == {"lr": 0.1, "epochs": 2} and test["provenance"] == PROVENANCE
    assert test["synthetic"] is True and test["data_hash"] == "d" * 64 and test["wall_time_s"] == 3.5
    val = store.results(checkpoint_id="abc123", task="isic", protocol="linear", split="val")[1]
    assert val["metrics"] == {"accuracy": 0.8, "auroc": None}  # NaN (undefined AUROC) stored as null
    assert val["per_class"] == {"0": 0.5, "1": [0.25, None]}
    assert len(store.results()) == 4 and store.results(protocol="knn") == []

    [evaluation] = store.evaluations(status="done", task="isic", checkpoint_id="abc123")[1:]
    assert evaluation["label_fraction"] == 0.1 and evaluation["status"] == "done" and evaluation["reason"] is None
    assert evaluation["created"].tzinfo is not None

    store.upsert_checkpoint({"id": "abc123", "name": "simclr-r18", "method": "simclr", "backbone": "resnet18",
                             "synthetic": True, "sidecar": {"epoch": 2, "config": {"lr": [0.1, 0.01]}}})
    store.upsert_checkpoint({"id": "abc123", "path": "/runs/x/backbone.safetensors"})
    [checkpoint] = store.checkpoints()
    assert checkpoint["name"] == "simclr-r18" and checkpoint["path"] == "/runs/x/backbone.safetensors"
    assert checkpoint["sidecar"] == {"epoch": 2, "config": {"lr": [0.1, 0.01]}} and checkpoint["sha256"] is None


def test_json_values(store):
    """numpy scalars and arrays, NaN anywhere, integer class keys, nested lists: stored as plain JSON."""
    key = EvalKey("abc123", "brats", "finetune", 0.25, 0)
    dice = np.array([[0.9, np.nan], [0.7, 0.8]], dtype=np.float32)
    result = {"metric": "dice", "value": np.float32(np.nan), "metrics": {"dice": np.float64(0.8), "n": np.int64(4)},
              "per_class": {0: np.float32(0.5), 1: None}, "per_case": dice}
    assert store.record_done(key, splits={"test": result}, protocol={"sizes": (64, 64)}, provenance={},
                             wall_time_s=float("inf"))
    [row] = store.results()
    assert row["value"] is None and row["wall_time_s"] is None and row["split"] == "test"
    assert row["metrics"] == {"dice": 0.8, "n": 4} and row["per_class"] == {"0": 0.5, "1": None}
    assert row["per_case"] == [[pytest.approx(0.9), None], [pytest.approx(0.7), pytest.approx(0.8)]]
    assert row["protocol_config"] == {"sizes": [64, 64]} and row["synthetic"] is None
    for fraction in (0.0, 1 / 3, 1.5):
        with pytest.raises(UserError, match="label fraction"):
            store.is_done(key._replace(label_fraction=fraction))
    with pytest.raises(ValueError, match="splits"):
        store.record_done(key, splits={"train": result}, protocol={}, provenance={}, wall_time_s=1.0)


def test_reopen_keeps_records(store_url, workspace):
    key = EvalKey("random-resnet18", "kvasir", "finetune", 1.0, 2)
    with ResultsStore.open(store_url, workspace) as first:
        record(first, key)
    with ResultsStore.open(store_url, workspace) as second:
        assert second.done_keys() == {key}


def test_replacement_rules(store):
    key = EvalKey("abc123", "isic", "linear", 0.1, 0)
    failed = dict(protocol={}, provenance={}, wall_time_s=1.0)

    store.record_failed(key, reason="CUDA out of memory", **failed)
    store.record_failed(key, reason="second try: disk full", **failed)
    [evaluation] = store.evaluations()
    assert evaluation["status"] == "failed" and evaluation["reason"] == "second try: disk full"
    assert not store.is_done(key) and store.results() == []

    assert record(store, key, 0.7)  # a done record replaces a failed one
    [evaluation] = store.evaluations()
    assert evaluation["status"] == "done" and evaluation["reason"] is None
    assert not record(store, key, 0.9)  # done is kept without force
    assert [r["value"] for r in store.results()] == [0.7, 0.35]
    store.record_failed(key, reason="later failure", **failed)  # never overwrites done
    assert store.evaluations()[0]["status"] == "done" and store.is_done(key)
    assert record(store, key, 0.9, force=True)
    assert [r["value"] for r in store.results()] == [0.9, 0.45]
    assert len(store.evaluations()) == 1


def test_crash_mid_record_leaves_nothing(store):
    kept, new = EvalKey("abc123", "isic", "linear", 0.1, 0), EvalKey("abc123", "isic", "linear", 0.1, 1)
    record(store, kept, 0.7)
    before = store.results()
    # The test split's per_case fails to serialise after the evaluation row and the val result are written.
    with pytest.raises(Exception, match="not JSON serialisable"):
        record(store, kept, 0.9, force=True, per_case=[0.5, object()])
    with pytest.raises(Exception, match="not JSON serialisable"):
        record(store, new, 0.9, per_case=[0.5, object()])
    assert store.results() == before
    assert store.done_keys() == {kept} and len(store.evaluations()) == 1


WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from medssl_bench.harness.store import EvalKey, ResultsStore
    from medssl_bench.harness.workspace import Workspace

    url, workspace, go, worker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    store = ResultsStore.open(url, Workspace(workspace))
    (workspace / f"ready{worker}").touch()
    while not go.exists():
        time.sleep(0.005)
    split = {"metric": "accuracy", "value": 0.5, "metrics": {"accuracy": 0.5}, "per_case": [1.0] * 50}
    started, shared_won = time.perf_counter(), 0
    for i in range(200):
        key = EvalKey(f"ckpt{worker}", "isic", "linear", 0.1, i)
        assert store.record_done(key, splits={"val": split, "test": split}, protocol={}, provenance={},
                                 wall_time_s=1.0)
        if i % 10 == 0:  # both workers record the same 20 jobs, interleaved with their own
            shared = EvalKey("shared", "isic", "linear", 0.01, i)
            shared_won += store.record_done(shared, splits={"val": split, "test": split}, protocol={},
                                            provenance={}, wall_time_s=1.0)
    print(json.dumps({"seconds": time.perf_counter() - started, "shared_won": shared_won}))
""")


def test_two_processes_write_at_once(store_url, tmp_path):
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, store_url, str(tmp_path), str(go), str(n)],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in (0, 1)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{n}").exists() for n in (0, 1)) and time.monotonic() < deadline:
        if any(w.poll() is not None for w in workers):
            break
        time.sleep(0.01)
    go.touch()
    outputs = [w.communicate(timeout=120) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["shared_won"] for r in reports) == 20

    with ResultsStore.open(store_url, Workspace(tmp_path)) as store:
        assert len(store.evaluations()) == 420 and len(store.results()) == 840
        assert len(store.done_keys(checkpoint_id="shared")) == 20
    seconds = max(r["seconds"] for r in reports)
    print(f"\n{store_url.split(':')[0]}: 440 records by 2 processes in {seconds:.2f} s = {440 / seconds:.0f} records/s")


def test_user_errors(tmp_path, workspace):
    def message(url):
        with pytest.raises(UserError) as err:
            ResultsStore.open(url, workspace)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "unsupported database URL scheme 'mysql'" in message("mysql://root@localhost/db")
    assert message("not a url").startswith("malformed database URL")
    assert "secret" not in message("postgresql://user:secret@host:port/db")
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("these are my notes, not a database\n" * 200)
    assert message(f"sqlite:///{not_a_db}") == f"{not_a_db}: not a SQLite results store (file is not a database)"
    assert "not writable" in message(f"sqlite:///{not_a_db}/results.db")  # its folder is a file
    directory = tmp_path / "a folder"
    directory.mkdir()
    assert "cannot open SQLite store" in message(f"sqlite:///{directory}")


def test_unreachable_postgresql(workspace):
    with pytest.raises(UserError) as err:
        ResultsStore.open("postgresql://user:secret@127.0.0.1:1/db", workspace)
    assert str(err.value) == "cannot connect to postgresql://user:***@127.0.0.1:1/db (connection refused)"


def test_newer_schema_is_refused(tmp_path, workspace):
    path = tmp_path / "results.db"
    ResultsStore.open(f"sqlite:///{path}", workspace).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE bench_meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(UserError, match="schema version 2, newer than this bench understands"):
        ResultsStore.open(f"sqlite:///{path}", workspace)


def test_default_store_is_in_the_workspace(workspace):
    with ResultsStore.open(None, workspace) as store:
        assert store.url == f"sqlite:///{workspace.root / 'results.db'}"
    assert (workspace.root / "results.db").is_file()


def test_wal_switch_waits_for_a_lock_sqlite_would_not_wait_for(tmp_path):
    """Two first opens converting a fresh file to WAL at once: SQLite answers 'locked' without
    calling its busy handler. The store retries; here another connection holds the file
    exclusively for 0.3 s and the connection under test has no busy timeout at all."""
    import threading
    from medssl_bench.harness.store import _enable_wal

    path = tmp_path / "results.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE t (x)")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        waiter.execute("PRAGMA journal_mode=WAL")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    _enable_wal(waiter.cursor())
    assert time.monotonic() - started >= 0.25
    assert waiter.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    release.join()
