"""What every `bench` command module shares: the consoles, the --workspace option, help text that
reflows, the callbacks through which services report (one progress bar, plain log lines) and the
results table of an evaluation (`bench eval`, a sweep's final test).

Command modules import this, never `cli/__init__` (which imports them to mount their commands).
Keep it light: `bench --help` imports it.
"""
from __future__ import annotations

import inspect
import itertools
import statistics

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from medssl_bench.harness.progress import ProgressBar  # noqa: F401  (re-exported: the one bar of the CLI)
from medssl_bench.harness.workspace import Workspace

console = Console()
err_console = Console(stderr=True)


def workspace_option():
    """The `--workspace` option every command shares."""
    return typer.Option("workspace", "--workspace", envvar="BENCH_HOME",
                        help="Workspace folder holding corpora and runs (env BENCH_HOME).")


def paragraphs(text: str) -> str:
    """Help text as paragraphs that reflow: source lines of a paragraph joined by spaces, paragraphs
    separated by a blank line. rich keeps every newline of a command's help, so text hard-wrapped in
    the source would break mid-sentence in a terminal of any other width."""
    blocks = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in block.splitlines()) for block in blocks)


def log_line(line: str) -> None:
    """A service's `log` callback: print its line as it is (no rich markup, no highlighting)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def show_outcome(outcome, workspace: Workspace, db: str | None, tasks: list[str]) -> None:
    """After an evaluation (`bench eval`, a sweep's final test): the results table, the failures,
    the counts."""
    from medssl_bench.harness.store import ResultsStore

    with ResultsStore.open(db, workspace) as store:
        show_results(store, outcome.checkpoint_ids or None, tasks)
    console.print(f"{outcome.done} done, {outcome.failed} failed; results in {outcome.store_url}", soft_wrap=True)


def show_results(store, checkpoint_ids: list[str] | None, tasks: list[str]) -> None:
    """A table of the primary metric (mean ± std over seeds) for these checkpoints (None: all) on
    these tasks (empty: all), then the first failed jobs with their reasons."""
    ids = set(checkpoint_ids) if checkpoint_ids is not None else None
    rows: dict[tuple, dict] = {}
    for r in store.results(split=None):
        if ids is not None and r["checkpoint_id"] not in ids:
            continue
        if tasks and r["task"] not in tasks:
            continue
        key = (r["checkpoint_id"], r["task"], r["protocol"], r["label_fraction"])
        rows.setdefault(key, {"val": [], "test": [], "metric": r["metric"], "synthetic": r.get("synthetic")})
        if r["split"] in ("val", "test") and r["value"] is not None:
            rows[key][r["split"]].append(r["value"])
    names = {c["id"]: c["name"] if c["method"] in c["name"] else f"{c['name']} ({c['method']})"
             for c in store.checkpoints()}
    table = Table(title="results: each task's metric (bench tasks) x 100, mean±std over n seeds",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("checkpoint", overflow="fold", min_width=14)
    for column in ("task", "protocol", "labels", "n", "val", "test", "data"):
        table.add_column(column, no_wrap=True)
    fmt = lambda v: f"{100 * statistics.mean(v):.1f}±{100 * (statistics.stdev(v) if len(v) > 1 else 0):.1f}" if v else "-"  # noqa: E731
    # The checkpoint's name on its first row only, and a rule after its last.
    for ckpt, group in itertools.groupby(sorted(rows.items()), key=lambda item: item[0][0]):
        group = list(group)
        for i, ((_, task, protocol, fraction), row) in enumerate(group):
            table.add_row(names.get(ckpt, ckpt) if i == 0 else "", task, protocol, f"{fraction:g}",
                          str(len(row["test"])), fmt(row["val"]), fmt(row["test"]),
                          "syn" if row["synthetic"] else "real", end_section=i == len(group) - 1)
    console.print(table)
    failed = [e for e in store.evaluations(status="failed") if ids is None or e["checkpoint_id"] in ids]
    for e in failed[:10]:
        console.print(f"[red]failed[/] {names.get(e['checkpoint_id'], e['checkpoint_id'])} {e['task']} {e['protocol']} "
                      f"seed {e['seed']}: {e['reason']}", soft_wrap=True, highlight=False)
