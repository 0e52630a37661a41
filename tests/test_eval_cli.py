"""`bench eval` end to end on synthetic data: records, skips, failures, a killed run, launchers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace
from tests.pg import new_database, postgres_url  # noqa: F401  (postgres_url is a fixture)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def brain_root(brain_tumor_root) -> Path:
    """Synthetic Brain-Tumor MRI (Kaggle layout) prepared into a data root."""
    return brain_tumor_root(96, 64)


@pytest.fixture
def eval_ws(imported_tv18, brain_root) -> tuple[Workspace, list[str]]:
    """A workspace with one imported checkpoint (a torchvision weights file), and the common args."""
    ws = imported_tv18
    return ws, ["--workspace", str(ws.root), "--data-root", str(brain_root), "--jobs", "1"]


def _store(ws: Workspace) -> ResultsStore:
    return ResultsStore.open(None, ws)


def test_eval_records_each_job_then_skips_done_ones_unless_forced(eval_ws, capsys):
    ws, common = eval_ws
    args = ["eval", "--checkpoint", "tv18,random", "--task", "brain_tumor", "--protocol", "knn", "--seeds", "2", *common]
    assert main(args) == 0
    store = _store(ws)
    evaluations = store.evaluations()
    assert len(evaluations) == 4 and {e["status"] for e in evaluations} == {"done"}
    rows = store.results()
    assert len(rows) == 8 and {r["split"] for r in rows} == {"val", "test"}
    row = rows[0]
    assert row["metric"] == "accuracy" and 0 <= row["value"] <= 1
    assert set(row["metrics"]) >= {"accuracy", "macro_f1", "auroc"}
    assert len(row["per_case"]) > 0 and row["synthetic"] is True
    provenance = row["provenance"]
    assert provenance["data"]["synthetic"] is True and len(provenance["data"]["content_hash"]) == 64
    assert provenance["code"]["git_sha"] and provenance["seed"] in (0, 1)
    assert row["protocol_config"]["selected"]["k"] in (5, 10, 20)
    stamps = {(e["checkpoint_id"], e["seed"]): e["updated"] for e in evaluations}
    capsys.readouterr()

    assert main(args) == 0
    assert "0 jobs to run" in capsys.readouterr().out
    assert {(e["checkpoint_id"], e["seed"]): e["updated"] for e in _store(ws).evaluations()} == stamps

    assert main([*args, "--force"]) == 0
    forced = {(e["checkpoint_id"], e["seed"]): e["updated"] for e in _store(ws).evaluations()}
    assert forced.keys() == stamps.keys() and all(forced[k] != stamps[k] for k in stamps)


def test_random_init_differs_per_seed_and_pretrained_features_are_cached(eval_ws):
    ws, common = eval_ws
    assert main(["eval", "--checkpoint", "tv18,random", "--task", "brain_tumor", "--protocol", "linear",
                 "--seeds", "2", *common]) == 0
    cached = sorted(p.relative_to(ws.root / "cache" / "features").parts[0]
                    for p in (ws.root / "cache" / "features").rglob("*.safetensors"))
    # one feature file for the pretrained checkpoint (seed-independent), one per seed for random init
    assert len([c for c in cached if c.startswith("random")]) == 2
    assert len([c for c in cached if not c.startswith("random")]) == 1


def test_a_failing_job_is_recorded_and_the_others_go_on(eval_ws):
    ws, common = eval_ws
    # fgadr was never prepared in this data root: its jobs fail, brain_tumor's run
    code = main(["eval", "--checkpoint", "random", "--task", "fgadr", "--task", "brain_tumor", "--protocol", "knn",
                 "--seeds", "1", *common])
    assert code == 1
    by_task = {e["task"]: e for e in _store(ws).evaluations()}
    assert by_task["brain_tumor"]["status"] == "done"
    assert by_task["fgadr"]["status"] == "failed"
    assert "bench data prepare fgadr" in by_task["fgadr"]["reason"]
    # once the data is there, only the failed job runs again
    from medssl_bench.downstream.datasets import fgadr

    fgadr.prepare(fgadr.synthesize(ws.root / "raw-fgadr", n=60, seed=1, size=64), Path(common[3]).parent / "fg")
    assert main(["eval", "--checkpoint", "random", "--task", "fgadr", "--protocol", "knn", "--seeds", "1",
                 "--workspace", str(ws.root), "--data-root", str(Path(common[3]).parent / "fg"), "--jobs", "1"]) == 0
    assert {e["task"]: e["status"] for e in _store(ws).evaluations()} == {"brain_tumor": "done", "fgadr": "done"}


def test_a_killed_eval_resumes_where_it_stopped(eval_ws):
    ws, common = eval_ws
    args = ["eval", "--checkpoint", "random", "--task", "brain_tumor", "--protocol", "linear",
            "--label-fraction", "0.5,1.0", "--seeds", "3", *common]
    proc = subprocess.Popen([sys.executable, "-m", "medssl_bench.harness", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if (ws.root / "results.db").exists() and _store(ws).done_keys():
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_before = {(e["protocol"], e["label_fraction"], e["seed"]): e["updated"] for e in _store(ws).evaluations()}
    assert 1 <= len(done_before) < 6, "kill the run part-way (make the jobs slower if this fails)"
    assert main(args) == 0
    after = {(e["protocol"], e["label_fraction"], e["seed"]): e for e in _store(ws).evaluations()}
    assert len(after) == 6 and {e["status"] for e in after.values()} == {"done"}
    assert all(after[k]["updated"] == stamp for k, stamp in done_before.items())  # done work untouched


def test_submitit_local_launcher_runs_the_same_jobs(eval_ws):
    ws, common = eval_ws
    assert main(["eval", "--checkpoint", "tv18", "--task", "brain_tumor", "--protocol", "knn", "--seeds", "1",
                 "--launcher", "submitit-local", *common]) == 0
    [evaluation] = _store(ws).evaluations()
    assert evaluation["status"] == "done"
    assert list((ws.root / "submitit").rglob("*_result.pkl"))  # it really went through submitit


def test_eval_writes_to_a_shared_postgresql_store(eval_ws, postgres_url):
    ws, common = eval_ws
    url = new_database(postgres_url, "eval_shared")
    assert main(["eval", "--checkpoint", "tv18", "--task", "brain_tumor", "--protocol", "knn", "--seeds", "2",
                 "--db", url, *common]) == 0
    store = ResultsStore.open(url, ws)
    assert len(store.results()) == 4 and {c["name"] for c in store.checkpoints()} == {"tv18"}
    assert not (ws.root / "results.db").exists()  # nothing went to the default SQLite file


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "brain_tumor", "--label-fraction", "0"], "label fraction"),
    (["--task", "brain_tumor", "--protocol", "segment"], "no selected task has a 'segment' protocol"),
    (["--task", "brain_tumor", "--checkpoint", "missing-run"], "missing-run"),
    (["--task", "brain_tumor", "--launcher", "cloud"], "unknown launcher 'cloud'"),
    ([], "--all-tasks"),
])
def test_bad_eval_requests_get_one_line_errors(eval_ws, capsys, args, message):
    ws, common = eval_ws
    assert main(["eval", *args, *common]) == 2
    err = capsys.readouterr().err.strip()
    assert message in " ".join(err.split()) and "Traceback" not in err


def test_finetune_protocol_tests_the_best_validation_epoch(eval_ws, brain_root):
    ws, common = eval_ws
    assert main(["eval", "--checkpoint", "tv18", "--task", "brain_tumor", "--protocol", "finetune", "--seeds", "1",
                 "--label-fraction", "0.5", *common]) == 0
    rows = {r["split"]: r for r in _store(ws).results()}
    config = rows["test"]["protocol_config"]
    assert 1 <= config["selected"]["epoch"] <= config["epochs"]
    from medssl_bench.downstream.datasets.canonical import load_classification_dataset

    data = load_classification_dataset(brain_root / "brain_tumor")
    assert [c["id"] for c in rows["test"]["per_case"]] == [s.id for s in data.split("test")]
    assert config["n_train"] < len(data.split("train"))  # half the labels
    # the metric row agrees with its own per-image outcomes
    cases = rows["val"]["per_case"]
    assert rows["val"]["value"] == pytest.approx(sum(c["label"] == c["pred"] for c in cases) / len(cases))


@pytest.mark.parametrize("args, message", [
    (["prepare", "fgadr", "--src", "{empty}", "--workspace", "{ws}"], "{empty}"),
    (["prepare", "vindr_cxr", "--src", "{empty}", "--workspace", "{ws}"], "{empty}"),
    (["prepare", "bccd", "--src", "{empty}", "--workspace", "{ws}"], "{empty}"),
    (["prepare", "isic2018", "--src", "{empty}", "--workspace", "{ws}"], "{empty}"),
    (["synth", "nope", "--out", "{empty}"], "unknown task 'nope'"),
])
def test_bad_data_commands_get_one_line_errors(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    fill = lambda text: text.replace("{empty}", str(tmp_path / "empty")).replace("{ws}", str(tmp_path / "ws"))  # noqa: E731
    assert main(["data", *map(fill, args)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert fill(message) in err and "Traceback" not in err
