"""Where `bench` keeps its state: corpora, runs and (later) the results store.

The workspace is `--workspace`, else `$BENCH_HOME`, else `./workspace`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medssl_bench.harness.fsutil import ensure_writable_dir


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> "Workspace":
        chosen = root or os.environ.get("BENCH_HOME") or "workspace"
        return cls(Path(chosen).expanduser().resolve())

    @property
    def corpora(self) -> Path:
        return self.root / "corpora"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def writable(self) -> "Workspace":
        ensure_writable_dir(self.root)
        return self
