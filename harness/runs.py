"""Run directories: one folder per pretraining run, described by `run.json`.

    runs/<name>/run.json            status, resolved config, corpus, provenance, progress
    runs/<name>/metrics.jsonl       one line per training step (loss, lr, time)
    runs/<name>/backbone.safetensors + backbone.json   the exported backbone (latest epoch)
    runs/<name>/train/              mmengine work dir: full checkpoints for --resume, logs
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import write_json_atomic
from medssl_bench.harness.names import check_name
from medssl_bench.harness.run_files import check_resume_checkpoint
from medssl_bench.harness.runlock import run_died
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


def find_run(workspace: Workspace, name: str) -> Path:
    check_name(name)
    run_dir = workspace.runs / name
    if (run_dir / RUN_FILE).is_file():
        return run_dir
    raise UserError(f"no run '{name}' in {workspace.runs}; `bench runs` lists them")


def list_runs(workspace: Workspace) -> list[dict]:
    """Every run's record; a run recorded as running whose process is gone shows status `died`."""
    if not workspace.runs.is_dir():
        return []
    records = []
    for run_dir in sorted(workspace.runs.iterdir()):
        if (run_dir / RUN_FILE).is_file():
            try:
                record = read_run(run_dir)
            except UserError:
                record = {"name": run_dir.name, "status": "unreadable"}
            if record.get("status") == "running" and run_died(run_dir):
                record["status"] = "died"
            record["dir"] = str(run_dir)
            records.append(record)
    return sorted(records, key=lambda r: r.get("created", ""))


def own_checkpoint(run_dir: Path) -> Path:
    """The full checkpoint `--resume` continues from, always inside this run's own train/ folder.

    mmengine's train/last_checkpoint holds an absolute path, which after a move names nothing and
    after a copy names the *original* run's file: only its file name is trusted."""
    pointer = run_dir / "train" / "last_checkpoint"
    try:
        named = pointer.read_text().strip()
    except OSError:
        raise UserError(f"run '{run_dir.name}' has no checkpoint to resume from (it stopped before its first "
                        "epoch); start it again under a new --name") from None
    if not named:
        check_resume_checkpoint(named, pointer.parent)  # raises: the pointer was cut by a kill
    if not re.fullmatch(r"epoch_\d+\.pth", Path(named).name):
        raise UserError(f"does not name a checkpoint ({named[:60]!r}); write the path of the newest "
                        "train/epoch_N.pth into it, or start the run again under a new --name", pointer)
    own = run_dir / "train" / Path(named).name
    if not own.is_file() and Path(named).parent == pointer.parent:
        check_resume_checkpoint(own, pointer.parent)  # raises: deleted here; it names the epoch before
    if not own.is_file():
        raise UserError(f"names {named}, which is not in this run's folder ({own.parent}): its checkpoints "
                        "were not copied or moved with it; resume the run where they are", pointer)
    return own


def latest_resumable(workspace: Workspace, config: dict) -> Path | None:
    """The newest unfinished run whose resolved config equals `config` (for bare --resume)."""
    for record in reversed(list_runs(workspace)):
        if record.get("status") != "done" and record.get("config") == config:
            return Path(record["dir"])
    return None


def refuse_foreign(meta: dict | None, run_id: str | None, run_name: str, path: Path) -> None:
    """A full checkpoint stamped (engine.RunIdentityHook) by another run than `run_id` is refused."""
    found = (meta or {}).get("bench_run") or {}
    if run_id and found.get("id") and found["id"] != run_id:
        raise UserError(f"this checkpoint was written by run '{found.get('name')}' (id {found['id'][:8]}), not by "
                        f"run '{run_name}' (id {run_id[:8]}); put this run's own checkpoint back, or start a new run",
                        path)


def check_owner(checkpoint: Path, record: dict) -> None:
    """Before anything is written: the checkpoint --resume will read belongs to this run. Memory-mapped, so
    only the small pickled part (meta, schedules) is read, not the weights."""
    import torch

    from medssl_bench.harness.torch_compat import trusted_mmengine_checkpoint

    try:
        with trusted_mmengine_checkpoint():
            meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("meta")
    except Exception:  # noqa: BLE001 - damage is named by the resume's own check (harness.run_files)
        return
    refuse_foreign(meta if isinstance(meta, dict) else None, record.get("run_id"), record.get("name", "?"),
                   checkpoint)
