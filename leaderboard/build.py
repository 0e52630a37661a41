"""`build_leaderboard`: read the results store, write `<out_dir>/index.html` atomically."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from medssl_bench.harness.fsutil import ensure_writable_dir, write_text_atomic
from medssl_bench.harness.store import ResultsStore
from medssl_bench.leaderboard.aggregate import MAIN_LABEL_FRACTION, build_tables
from medssl_bench.leaderboard.profiles import UNRECORDED
from medssl_bench.leaderboard.render import render_page
from medssl_bench.leaderboard.stats import annotate


def build_leaderboard(store: ResultsStore, out_dir: Path, *, now: datetime | None = None,
                      warn: Callable[[str], None] | None = None) -> Path:
    """Write the static leaderboard of `store` (opened with `ResultsStore.open(..., read_only=True)` by the
    CLI: it only reads) to `out_dir/index.html` (through a temporary file:
    a web server never serves half a page) and return that path. `warn` receives one line per
    column where every checkpoint scores 0.0 (marked on the page too)."""
    # Only the test split is shown; per-case values (most of a store's bytes) are read afterwards,
    # for the few cells the significance tests and case bootstraps need.
    tables = build_tables(store.results(split="test", details=False), store.checkpoints(),
                          store.evaluations(status="failed"))

    def load_cases(checkpoint_id: str, task: str, protocol: str) -> list[dict]:
        return store.results(checkpoint_id=checkpoint_id, task=task, protocol=protocol, split="test",
                             label_fraction=MAIN_LABEL_FRACTION)

    for table in tables:
        annotate(table, load_cases)
        for column in table.degenerate_columns if warn else ():
            data = ("synthetic" if table.synthetic else "real") + (
                "" if table.profile == UNRECORDED else f", profile {table.profile}")
            warn(f"{column.task} ({column.protocol}, {data} data): every checkpoint scores 0.0 ({column.metric}); "
                 f"the column ranks nothing")
    page = render_page(tables, store_url=store.url, now=now or datetime.now(timezone.utc))
    target = ensure_writable_dir(Path(out_dir)) / "index.html"
    write_text_atomic(target, page)
    return target
