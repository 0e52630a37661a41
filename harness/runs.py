"""Run directories: one folder per pretraining run, described by `run.json`.

    runs/<name>/run.json            status, resolved config, corpus, provenance, progress
    runs/<name>/metrics.jsonl       one line per training step (loss, lr, time)
    runs/<name>/backbone.safetensors + backbone.json   the exported backbone (latest epoch)
    runs/<name>/train/              mmengine work dir: full checkpoints for --resume, logs
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import write_json_atomic
from medssl_bench.harness.workspace import Workspace

RUN_FILE = "run.json"
BACKBONE_FILE = "backbone.safetensors"


def read_run(run_dir: Path) -> dict:
    path = run_dir / RUN_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"not a readable run record ({type(err).__name__})", path) from None


def update_run(run_dir: Path, **fields) -> dict:
    """Merge `fields` into run.json atomically (the old record survives a crash mid-write)."""
    path = run_dir / RUN_FILE
    record = read_run(run_dir) if path.exists() else {}
    record.update(fields)
    record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json_atomic(path, record)
    return record


def new_run_name(method: str, backbone: str) -> str:
    return f"{method}-{backbone}-{time.strftime('%Y%m%d-%H%M%S')}"


def find_run(workspace: Workspace, name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    for run_dir in (candidate, workspace.runs / name_or_path):
        if (run_dir / RUN_FILE).is_file():
            return run_dir.resolve()
    raise UserError(f"no run '{name_or_path}' in {workspace.runs}; `bench runs` lists them")


def list_runs(workspace: Workspace) -> list[dict]:
    if not workspace.runs.is_dir():
        return []
    records = []
    for run_dir in sorted(workspace.runs.iterdir()):
        if (run_dir / RUN_FILE).is_file():
            try:
                record = read_run(run_dir)
            except UserError:
                record = {"name": run_dir.name, "status": "unreadable"}
            record["dir"] = str(run_dir)
            records.append(record)
    return sorted(records, key=lambda r: r.get("created", ""))


def latest_resumable(workspace: Workspace, config: dict) -> Path | None:
    """The newest unfinished run whose resolved config equals `config` (for bare --resume)."""
    for record in reversed(list_runs(workspace)):
        if record.get("status") != "done" and record.get("config") == config:
            return Path(record["dir"])
    return None
