"""`build_leaderboard`: read the results store, write `<out_dir>/index.html` atomically."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from harness.fsutil import ensure_writable_dir, write_text_atomic
from harness.store import ResultsStore
from leaderboard.aggregate import build_tables
from leaderboard.render import render_page


def build_leaderboard(store: ResultsStore, out_dir: Path, *, now: datetime | None = None) -> Path:
    """Write the static leaderboard of `store` to `out_dir/index.html` (through a temporary file:
    a web server never serves half a page) and return that path."""
    # only the test split is shown; skipping val halves what is read (and its per-case JSON)
    tables = build_tables(store.results(split="test"), store.checkpoints())
    page = render_page(tables, store_url=store.url, now=now or datetime.now(timezone.utc))
    target = ensure_writable_dir(Path(out_dir)) / "index.html"
    write_text_atomic(target, page)
    return target
