"""`bench leaderboard`: the static HTML leaderboard, written from the results store only."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medssl_bench.harness.app.cli.common import console, paragraphs, workspace_option
from medssl_bench.harness.workspace import Workspace

leaderboard_app = typer.Typer()


@leaderboard_app.command(help=paragraphs("""
    Write the leaderboard, a static site that opens from the file system or any web server.

    Read from the results store only: methods (checkpoints) x tasks grouped by family, each cell the
    test score x 100 at full labels, mean ± 95% t-interval over seeds (a bootstrap over cases for a
    single seed), colour-scaled per column, best marked; overall mean rank and mean normalised score,
    recomputed live when tasks are switched off; a paired test of the top two per task and a Friedman /
    Nemenyi critical-difference summary across tasks; inline SVG charts (scores with intervals, profiles,
    label-efficiency curves); evaluation and pretraining compute; failed jobs with their reasons;
    synthetic-data results in their own table, never ranked with real data; one table per pretraining
    profile the checkpoint records (benchmark, one per corpus, first: every method on one budget; paper;
    imported; modified; quick), each ranked only among itself, random init in every table as its
    floor (docs/methods.md, "Profiles"); LVM-Med's reported numbers
    as an unranked reference row; every cell linked to its provenance (config, seeds, corpus, protocol,
    code version)."""))
def leaderboard(out: Optional[Path] = typer.Option(None, help="Output folder (default WORKSPACE/leaderboard)."),
                db: Optional[str] = typer.Option(None, help="Results store URL (default: the workspace's "
                                                 "SQLite file)."),
                fail_on_degenerate: bool = typer.Option(
                    False, "--fail-on-degenerate", help="Exit 1 (after writing the page) when a task column has "
                    "every checkpoint at 0.0, a column that ranks nothing; the demo uses it."),
                workspace: Path = workspace_option()):
    # Imported here: the store (SQLAlchemy) and the statistics (SciPy) are most of this command's start-up.
    from medssl_bench.harness.store import ResultsStore
    from medssl_bench.leaderboard import build_leaderboard

    ws = Workspace.resolve(workspace)
    degenerate: list[str] = []

    def warn(line: str) -> None:
        degenerate.append(line)
        console.print(f"[yellow]warning:[/] {line}", soft_wrap=True)

    with ResultsStore.open(db, ws, read_only=True) as store:  # it only reads: a read-only store will do
        page = build_leaderboard(store, out or ws.leaderboard, warn=warn)
    console.print(f"leaderboard written to: {page}", soft_wrap=True)
    if fail_on_degenerate and degenerate:
        raise typer.Exit(1)
