"""`bench tasks`, `bench data prepare|synth` and `bench eval`."""
from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.workspace import Workspace

data_app = typer.Typer(help="Downstream datasets: read the layouts users download into bench's canonical form.",
                       no_args_is_help=True)


def _adapter(name: str):
    """The (first) task using dataset `name`, or task `name`, and its dataset adapter: several tasks
    share one dataset (prostate_runmc/bidmc/hk all read `prostate`)."""
    from medssl_bench.downstream.datasets import ADAPTERS
    from medssl_bench.downstream.registry import TASKS, get_task

    task = next((t for t in TASKS.values() if t.dataset == name), None) or get_task(name)
    return task, ADAPTERS[task.dataset]


def register(app: typer.Typer) -> None:
    from medssl_bench.harness.app.cli import console, workspace_option

    @data_app.command("prepare", help="""Read TASK's dataset as downloaded (--src) and write the canonical form under --out.

    The raw layout is validated (missing files, unknown labels, masks that do not fit their image,
    label codes outside the codebook, empty volumes: each reported with the file) and the split is
    fixed in the output: the paper's or the official split where one is published (FGADR ids,
    Brain Tumor Training/Testing, ISIC's folders, DRIVE 20/20, MMWHS's volume ids), else a seeded
    split recorded in dataset.json (3D data by volume, never by slice). `bench tasks` lists the tasks.""")
    def prepare(task: str = typer.Argument(..., help="Task or dataset name (`bench tasks`; e.g. prostate for the three prostate tasks)."),
                src: Path = typer.Option(..., help="The dataset folder as downloaded."),
                out: Optional[Path] = typer.Option(None, help="Data root (default WORKSPACE/data)."),
                seed: int = typer.Option(42, help="Seed of the validation carve-out (LVM-Med: 42)."),
                workspace: Path = workspace_option()):
        task_entry, adapter = _adapter(task)
        root = out or Workspace.resolve(workspace).root / "data"
        from medssl_bench.downstream.families import get_family
        from medssl_bench.harness.app.cli.corpus import progress_bar

        with progress_bar() as bar:
            bar_id = bar.add_task(f"checking and copying {task_entry.name}", total=None)
            folder = adapter.prepare(src, root, seed=seed,
                                     progress=lambda done, total: bar.update(bar_id, completed=done, total=total))

        data = get_family(task_entry.family).load(folder)
        counts = {s: len(data.split(s)) for s in ("train", "val", "test")}
        kind = "synthetic" if data.meta["synthetic"] else "real"
        unit = "slices" if getattr(data, "kind", "") == "3d" else "images"
        console.print(f"prepared {task_entry.dataset} ({kind}, content {data.meta['content_hash'][:12]}), {unit}: "
                      + "  ".join(f"{s} {n}" for s, n in counts.items()))
        for warning in data.meta.get("warnings", []):  # e.g. box rows clipped or dropped, with where
            console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True, highlight=False)
        console.print(f"written to: {folder}", soft_wrap=True)

    @data_app.command("synth", help="""Write synthetic data for TASK in the exact layout users download (so `prepare` reads it
    as it reads the real thing). Labels live in lesion counts, shapes and locations, not in brightness.
    Everything evaluated on it is labelled synthetic.""")
    def synth(task: str = typer.Argument(..., help="Task or dataset name (`bench tasks`)."),
              out: Path = typer.Option(..., help="Folder to write the raw layout into."),
              n: Optional[int] = typer.Option(None, help="Number of images (3D tasks: volumes); default per dataset."),
              seed: int = typer.Option(0, help="Generator seed (same seed, same bytes)."),
              size: Optional[int] = typer.Option(None, help="Image side in pixels (3D: in-plane); default per dataset.")):
        _, adapter = _adapter(task)
        options = {k: v for k, v in (("n", n), ("size", size)) if v is not None}
        folder = adapter.synthesize(out, seed=seed, **options)
        console.print(f"synthetic {task} ({adapter.LAYOUT}) written to: {folder}", soft_wrap=True)

    app.add_typer(data_app, name="data")

    @app.command(help="List the 15 downstream tasks of LVM-Med (and the extras): family, metric, protocols and the paper's parameters.")
    def tasks():
        from medssl_bench.downstream.registry import TASKS

        table = Table(title="LVM-Med's 15 downstream tasks (../shared/specs/tasks.md), then extras", box=box.SIMPLE_HEAD,
                      caption="paper protocol: image px / lr / epochs / batch of the last standard protocol "
                              "(LVM-Med Tables 7, 8, App. B); (protocol): runs only when named with "
                              "--protocol; LVM-Med R50: its reported score")
        for column in ("task", "in paper", "family", "metric", "protocols", "paper protocol", "LVM-Med R50"):
            table.add_column(column, no_wrap=column in ("task", "in paper"), overflow="fold")
        for t in sorted(TASKS.values(), key=lambda t: not t.in_paper):
            p = t.paper[t.default_protocols[-1]]
            reported = " / ".join(f"{v:.2f}" for v in t.reported.values()) or "-"
            table.add_row(t.name, "yes" if t.in_paper else "[yellow]extra[/]", t.family, t.metric,
                          ",".join(f"({n})" if n in t.optional else n for n in t.protocols),
                          f"{p.image_size} / {p.lr:g} / {p.epochs} / {p.batch_size}", reported)
        console.print(table)

    @app.command("eval", help="""Evaluate checkpoints on downstream tasks and record every result in the results store.

    One job = checkpoint x task x protocol x label fraction x seed; jobs already in the store are
    skipped (--force re-runs them), a failed job is recorded with its reason and the others go on.
    Classification (LVM-Med Table 5): linear = one FC layer on frozen, cached features (lr, weight
    decay and epoch chosen on val, never on test); knn = weighted kNN on the same features;
    finetune = encoder + FC trained end to end, best-val epoch tested. Segmentation (Tables 7, 8):
    finetune = U-Net on the encoder through mmseg, CE + Dice, best-val epoch tested, scored by the
    paper's per-image Dice / per-volume 3D IoU; frozen (on request) trains the decoder only.
    Detection (App. B): finetune = Faster R-CNN R50-FPN through mmdet with the encoder as its
    backbone, Adam, best-val epoch tested, scored by AP at IoU 0.5 (and COCO mAP).
    `random` (random init, seeded per evaluation seed) is a baseline row.""")
    def eval_(checkpoint: Optional[str] = typer.Option(None, help="PATH (.safetensors) | RUN name | imported name | id prefix | random | all. Default: every checkpoint plus random; done jobs are skipped."),
              task: list[str] = typer.Option([], "--task", help="Task name (repeatable); `bench tasks` lists them."),
              all_tasks: bool = typer.Option(False, "--all-tasks", help="The paper's 15 tasks (extras such as bccd run when named with --task)."),
              protocol: Optional[str] = typer.Option(None, help="linear | knn | finetune | frozen, comma-separated (default: each task's standard protocols; `bench tasks` lists them)."),
              label_fraction: str = typer.Option("1.0", help="Fractions of the training labels, e.g. 0.01,0.1,1.0 (stratified, seeded)."),
              seeds: int = typer.Option(3, help="Number of seeds (0..N-1); the paper reports 3 runs."),
              profile: str = typer.Option("quick", help="quick (CPU smoke: ResNet-18 random baseline, 64 px) | paper (the published protocol)."),
              data_root: Optional[Path] = typer.Option(None, help="Where `bench data prepare` wrote the datasets (default WORKSPACE/data)."),
              db: Optional[str] = typer.Option(None, help="Results store URL (default sqlite file WORKSPACE/results.db; postgresql://user@host/db for a shared one)."),
              image_size: Optional[int] = typer.Option(None, help="Override the protocol's image side in pixels (recorded with each result)."),
              force: bool = typer.Option(False, help="Re-run jobs that are already done."),
              launcher: str = typer.Option("pool", help="pool (local processes) | slurm (submitit) | submitit-local."),
              jobs: Optional[int] = typer.Option(None, help="Parallel local workers (default: half the CPUs, at most 4; 1 on GPU)."),
              slurm_partition: Optional[str] = typer.Option(None, help="Slurm partition (--launcher slurm)."),
              workspace: Path = workspace_option()):
        from medssl_bench.harness.app.evaluate import EvalRequest

        try:
            fractions = tuple(float(x) for x in label_fraction.split(","))
        except ValueError:
            raise UserError(f"--label-fraction must be comma-separated numbers, not '{label_fraction}'") from None
        ws = Workspace.resolve(workspace).writable()
        req = EvalRequest(workspace=ws, checkpoints=checkpoint, tasks=task, all_tasks=all_tasks,
                          protocols=protocol.split(",") if protocol else None, label_fractions=fractions,
                          seeds=seeds, profile=profile, data_root=data_root, db=db, force=force, launcher=launcher,
                          jobs=jobs, image_size=image_size, slurm={"partition": slurm_partition})
        if evaluate_and_report(req, console)["failed"]:
            raise typer.Exit(1)


def evaluate_and_report(req, console) -> dict:
    """Plan, run (with a progress bar) and tabulate an evaluation; returns the done/failed counts."""
    from medssl_bench.harness.app.evaluate import launch, plan
    from medssl_bench.harness.store import ResultsStore

    store = ResultsStore.open(req.db, req.workspace)
    units, skipped = plan(req, store)
    total = sum(len(u.keys) for u in units)
    console.print(f"{total} jobs to run in {len(units)} units ({skipped} already done, skipped); store: {store.url}")
    totals = {"done": 0, "failed": 0}
    if units:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task_id = bar.add_task("eval", total=total)
            totals = launch(req, units, store, progress=lambda n: bar.update(task_id, completed=n))
    show_results(console, store, units, req)
    console.print(f"{totals['done']} done, {totals['failed']} failed; results in {store.url}", soft_wrap=True)
    store.close()
    return totals


def show_results(console, store, units, req) -> None:
    """A table of the primary metric (mean ± std over seeds) for the checkpoints and tasks just run."""
    ids = {u.checkpoint.id: u.checkpoint for u in units} if units else None
    rows: dict[tuple, dict] = {}
    for r in store.results(split=None):
        if ids is not None and r["checkpoint_id"] not in ids:
            continue
        if req.tasks and r["task"] not in req.tasks:
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
