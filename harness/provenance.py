"""Provenance recorded with every number: code version, package versions, host."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACKED_PACKAGES = ("torch", "torchvision", "lightly", "mmengine", "numpy", "pydicom", "nibabel", "bench")


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """Git commit of the bench code and whether the working tree had local changes. Benchmark results are
    outputs, not code: a script rewriting benchmarks/results/ (its own JSON, or an earlier script's in the same
    checkout) leaves the tree clean."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"))
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "dirty": None}
    return {"git_sha": sha, "dirty": dirty}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def available_cpus() -> int:
    """CPUs this process may run on (its affinity set, e.g. a Slurm or container allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def host_info() -> dict:
    import torch

    info = {"machine": platform.machine(), "system": platform.system(), "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
