"""The one progress bar of `bench`: services report `progress(done, total, **fields)` through a
callback, and whoever prints (the CLI) passes a `ProgressBar`, which draws the report as a rich bar.

Services never build a bar themselves, so they stay usable from tests, sweeps and worker processes
that print nothing. rich is imported on first use, not with this module: `bench --help` loads it.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol


class Progress(Protocol):
    """`progress(done, total=None, **fields)`: `done` of `total` steps finished (total None: not known
    yet); fields such as description= (what is running) and stats= (loss, rate) are shown beside."""

    def __call__(self, done: int, total: Optional[int] = None, **fields: Any) -> None: ...


Log = Callable[[str], None]  # log("one line of plain text") for the user to read


def progress_bar(console, *, transient: bool = False):
    """The rich bar every command shows: description, bar, count, stats, time elapsed and left."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=transient)


class ProgressBar:
    """A `Progress` callback that draws one bar, started on the first report: a process that never
    reports (a DDP rank other than 0, a run that fails while resolving) draws nothing.

        with ProgressBar(console, "eval") as bar:
            launch(..., progress=bar)
    """

    def __init__(self, console, description: str = "", *, transient: bool = False):
        self.console, self.description, self.transient = console, description, transient
        self._bar, self._task = None, None

    def _started(self):
        if self._bar is None:
            self._bar = progress_bar(self.console, transient=self.transient)
            self._task = self._bar.add_task(self.description, total=None, stats="")
            self._bar.start()
        return self._bar

    def __call__(self, done: int, total: Optional[int] = None, **fields: Any) -> None:
        self._started().update(self._task, completed=done, total=total, **fields)

    def advance(self, step: int = 1) -> None:
        """For producers that report increments (`progress(k)` after k more items)."""
        self._started().advance(self._task, step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
