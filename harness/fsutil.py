"""Files written atomically (temporary file + fsync + rename + directory fsync) and content hashing."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from medssl_bench.harness.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | Path, *, clear_stale: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash leaves the old file (or no file) in place, never a half-written one: the data is fsynced
    before the rename and the folder after it, else a power loss may keep the new name with no data
    (ext4/xfs delayed allocation). `clear_stale` first removes this target's temporary files left by a
    killed process (only for targets one process writes at a time: a run's exports, under its lock).
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    if clear_stale:
        for stale in stale_temp_files(path):
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        fsync_file(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def stale_temp_files(path: Path) -> list[Path]:
    """The temporary files `atomic_path` makes for `path` (".<name>.<random>.tmp") that are still there."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable; a file system that cannot fsync folders is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL on some network and FUSE file systems: nothing more can be done
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str, *, clear_stale: bool = False) -> None:
    with atomic_path(path, clear_stale=clear_stale) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any, *, clear_stale: bool = False) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", clear_stale=clear_stale)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove it is writable, or raise a UserError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"output folder is not writable ({reason})", path) from None
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
