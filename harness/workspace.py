"""Where `bench` keeps its state: corpora, runs, checkpoints, prepared data, caches, stores.

The workspace is `--workspace`, else `$BENCH_HOME`, else `./workspace`. Every path inside it is a
property here, so no other module spells out the layout.
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

    @property
    def checkpoints(self) -> Path:
        """Imported backbones (`bench import-checkpoint`), one folder per name."""
        return self.root / "checkpoints"

    @property
    def data(self) -> Path:
        """Prepared downstream datasets (`bench data prepare`), the default --data-root."""
        return self.root / "data"

    @property
    def cache(self) -> Path:
        """Frozen features and evaluation work folders; safe to delete."""
        return self.root / "cache"

    @property
    def results_db(self) -> Path:
        """The default results store (SQLite)."""
        return self.root / "results.db"

    @property
    def sweeps_db(self) -> Path:
        """The default Optuna storage of `bench sweep` (SQLite)."""
        return self.root / "sweeps.db"

    @property
    def leaderboard(self) -> Path:
        """The default output folder of `bench leaderboard`."""
        return self.root / "leaderboard"

    @property
    def submitit(self) -> Path:
        """Logs and pickles of submitit (Slurm) evaluation jobs."""
        return self.root / "submitit"

    def data_root(self, given: str | Path | None = None) -> Path:
        """The --data-root a command was given (user-relative paths resolved), else `data`."""
        return Path(given).expanduser().resolve() if given else self.data

    def writable(self) -> "Workspace":
        ensure_writable_dir(self.root)
        return self
