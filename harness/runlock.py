"""A run's lock: `runs/<name>/run.lock` names the process training it (pid, host, boot, process start).

Taken before a run writes anything and dropped when it ends, so a second `--resume` of a run (or
a same-name start) is refused instead of appending the same steps twice. The record is written to
a temporary file and hard-linked into place: the link is as exclusive as O_EXCL and the lock never
exists half-written. A lock whose process is gone (same host: no such pid, or a pid reused by
a later process, or the machine rebooted) is stale; it is taken over, and `bench runs` shows the
run as `died`. A lock from another host cannot be checked from here and is always respected.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medssl_bench.harness.errors import UserError

LOCK_FILE = "run.lock"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """Clock ticks after boot at which `pid` started (Linux /proc), None if there is no such process."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    if stat is None:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the command name may hold spaces and ')'


def this_process() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _read(Path("/proc/sys/kernel/random/boot_id")),
            "pid_start": process_start(pid), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def holder_alive(record: dict) -> bool | None:
    """Is the process a lock names still running? None where it cannot be told (another host)."""
    me = this_process()
    if record.get("host") != me["host"]:
        return None
    if record.get("boot_id") and me["boot_id"] and record["boot_id"] != me["boot_id"]:
        return False  # the machine rebooted since
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if me["pid_start"] is not None:  # /proc: a reused pid shows a different start
        start = process_start(pid)
        return start is not None and (record.get("pid_start") in (None, start))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return True


def read_lock(run_dir: Path) -> dict | None:
    """The lock's record; None without a lock; {} for a lock that is not a readable record."""
    text = _read(run_dir / LOCK_FILE)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def run_died(run_dir: Path) -> bool:
    """A run recorded as running whose process is gone (no lock, or a lock of a dead process here)."""
    record = read_lock(run_dir)
    return record is None or (bool(record) and holder_alive(record) is False)


@contextlib.contextmanager
def _folder_flock(folder: Path):
    """Serialises take-overs of one run's stale lock among processes on this host."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@dataclass
class RunLock:
    path: Path
    record: dict

    @classmethod
    def acquire(cls, run_dir: Path, say: Callable[[str], None] = print) -> "RunLock":
        path, mine = run_dir / LOCK_FILE, this_process()
        fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", suffix=".tmp", dir=run_dir)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(mine) + "\n")
            for _ in range(3):
                try:
                    os.link(tmp, path)  # fails if the lock exists: one winner
                    return cls(path, mine)
                except FileExistsError:
                    pass
                held = read_lock(run_dir)
                if held == {}:
                    raise UserError("damaged run lock; if no bench process is training this run, delete it", path)
                alive = holder_alive(held) if held else False
                if alive is not False:
                    where = "on this host" if alive else f"on host {held.get('host')} (not checkable from here)"
                    raise UserError(f"run '{run_dir.name}' is being trained by process {held.get('pid')} {where} "
                                    f"(since {held.get('started')}); wait for it, or stop it first"
                                    + ("" if alive else f" (if it is gone, delete {path})"))
                with _folder_flock(run_dir):
                    if held and read_lock(run_dir) == held:  # still the same stale lock: ours to remove
                        path.unlink()
                        say(f"run '{run_dir.name}': took over the lock of process {held.get('pid')} "
                            f"(started {held.get('started')}), which is gone")
            raise UserError(f"run '{run_dir.name}': could not take its lock (other processes keep taking it)", path)
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        if read_lock(self.path.parent) == self.record:  # never another process's lock
            self.path.unlink()
