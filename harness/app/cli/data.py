"""`bench tasks` and `bench data prepare | synth`: the downstream tasks and their datasets."""
from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from medssl_bench.harness.app.cli.common import ProgressBar, console, paragraphs, workspace_option
from medssl_bench.harness.workspace import Workspace

tasks_app = typer.Typer()
data_app = typer.Typer(help="Downstream datasets: read the layouts users download into bench's canonical form.",
                       no_args_is_help=True)


def _adapter(name: str):
    """(the first task using dataset `name`, or task `name`; its family; its dataset adapter): several tasks
    share one dataset (prostate_runmc/bidmc/hk all read `prostate`). A pretraining-only labelled set
    (LABELLED_ADAPTERS, e.g. cxr_findings for Ark) has no task: (None, "classification", adapter)."""
    from medssl_bench.downstream.datasets import ADAPTERS, LABELLED_ADAPTERS
    from medssl_bench.downstream.registry import TASKS, get_task

    if name in LABELLED_ADAPTERS:
        return None, "classification", LABELLED_ADAPTERS[name]
    task = next((t for t in TASKS.values() if t.dataset == name), None) or get_task(name)
    return task, task.family, ADAPTERS[task.dataset]


@tasks_app.command(help="List the 15 downstream tasks of LVM-Med (and the extras): family, metric, protocols and the "
                   "paper's parameters.")
def tasks():
    from medssl_bench.downstream.registry import TASKS

    console.print(tasks_table(TASKS.values()))


def tasks_table(tasks) -> Table:
    """One row per task under a row naming its family, the paper's tasks first. Made to read at 80
    columns: cells wrap between words only (every word fits its column), never inside one."""
    caption = ("paper: one of LVM-Med's 15 tasks, or an extra; protocols: one per line, (protocol) runs only "
               "when named with --protocol; px/lr/ep/batch: the paper's setting of the last standard protocol "
               "(LVM-Med Tables 7, 8, App. B); R50: LVM-Med ResNet-50's reported score, on the line of the "
               "protocol it was measured with (docs/protocols.md: when it compares)")
    table = Table(title="LVM-Med's 15 downstream tasks, then extras (docs/tasks.md)", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True, caption=caption)
    # No cell wraps: one protocol per line, each column as wide as its widest word, so at 80 columns
    # nothing is cut inside a word (tests/test_cli_help.py).
    table.add_column("task", no_wrap=True)
    table.add_column("paper", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    table.add_column("protocols", no_wrap=True)
    table.add_column("px/lr/ep/batch", no_wrap=True)
    table.add_column("R50", no_wrap=True)
    ordered = sorted(tasks, key=lambda t: not t.in_paper)  # stable: the registry's order within each
    for _, group in groupby(ordered, key=lambda t: (t.in_paper, t.family)):
        group = list(group)
        table.add_row(f"[bold]{group[0].family}[/]")
        for t in group:
            p = t.paper[t.default_protocols[-1]]
            table.add_row(t.name, "yes" if t.in_paper else "[yellow]extra[/]", t.metric,
                          "\n".join(f"({n})" if n in t.optional else n for n in t.protocols),
                          f"{p.image_size}/{p.lr:g}/{p.epochs}/{p.batch_size}",
                          "\n".join(f"{t.reported[n]:.2f}" if n in t.reported else "-" for n in t.protocols))
        table.rows[-1].end_section = True
    return table


@data_app.command("prepare", help=paragraphs("""
    Read TASK's dataset as downloaded (--src) and write the canonical form under --out.

    The raw layout is validated (missing files, unknown labels, masks that do not fit their image,
    label codes outside the codebook, empty volumes: each reported with the file) and the split is
    fixed in the output: the paper's or the official split where one is published (FGADR ids,
    Brain Tumor Training/Testing, ISIC's folders, DRIVE 20/20, MMWHS's volume ids), else a seeded
    split recorded in dataset.json (3D data by volume, never by slice). `bench tasks` lists the tasks."""))
def prepare(task: str = typer.Argument(..., help="Task or dataset name (`bench tasks`; e.g. prostate for the three "
                                       "prostate tasks; cxr_findings: a multi-label set for Ark's --labels-from)."),
            src: Path = typer.Option(..., help="The dataset folder as downloaded."),
            out: Optional[Path] = typer.Option(None, help="Data root (default WORKSPACE/data)."),
            seed: int = typer.Option(42, help="Seed of the validation carve-out (LVM-Med: 42)."),
            strict: bool = typer.Option(False, "--strict", help="Refuse a mask with a label code outside the "
                                        "dataset's codebook (default: map it to background, counted and "
                                        "warned about, as the public loaders do)."),
            split_file: Optional[Path] = typer.Option(None, help="A published split to reproduce exactly, from "
                                                      "your own checkout: LVM-Med's files_split/Kvasir.json, "
                                                      "BUID.json or the FGADR pickle (docs/datasets.md)."),
            exclude_from: list[Path] = typer.Option([], "--exclude-from", help="A list of image ids or paths kept "
                                                    "out of the test split, e.g. the file_list.txt of one of "
                                                    "LVM-Med's pretraining sets; repeatable."),
            normalisation: str = typer.Option("window", help="Intensity normalisation, recorded in dataset.json: "
                                              "window (default: a 0.5-99.5 percentile window per volume) or "
                                              "lvmmed (LVM-Med's MMWHS preprocessing: clip to those percentiles, "
                                              "z-score, /10, clip to [0, 1]; mmwhs_ct and mmwhs_mri only)."),
            workspace: Path = workspace_option()):
    from medssl_bench.downstream.datasets.options import PrepareOptions
    from medssl_bench.downstream.families import get_family

    task_entry, family, adapter = _adapter(task)
    dataset = task_entry.dataset if task_entry else adapter.NAME
    root = Workspace.resolve(workspace).data_root(out)
    options = PrepareOptions(strict=strict, split_file=split_file, exclude_from=tuple(exclude_from),
                             normalisation=normalisation)
    with ProgressBar(console, f"checking and copying {task_entry.name if task_entry else dataset}",
                     transient=True) as bar:
        folder = adapter.prepare(src, root, seed=seed, progress=bar, options=options)

    data = get_family(family).load(folder)
    counts = {s: len(data.split(s)) for s in ("train", "val", "test")}
    kind = "synthetic" if data.meta["synthetic"] else "real"
    unit = "slices" if getattr(data, "kind", "") == "3d" else "images"
    console.print(f"prepared {dataset} ({kind}, content {data.meta['content_hash'][:12]}), {unit}: "
                  + "  ".join(f"{s} {n}" for s, n in counts.items()))
    for warning in data.meta.get("warnings", []):  # e.g. box rows clipped or dropped, with where
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True, highlight=False)
    console.print(f"written to: {folder}", soft_wrap=True)


@data_app.command("synth", help=paragraphs("""
    Write synthetic data for TASK in the exact layout users download (so `prepare` reads it as it
    reads the real thing). Labels live in lesion counts, shapes and locations, not in brightness.
    Everything evaluated on it is labelled synthetic."""))
def synth(task: str = typer.Argument(..., help="Task or dataset name (`bench tasks`; cxr_findings: a multi-label "
                                     "set for Ark's --labels-from)."),
          out: Path = typer.Option(..., help="Folder to write the raw layout into."),
          n: Optional[int] = typer.Option(None, help="Number of images (3D tasks: volumes); default per dataset."),
          seed: int = typer.Option(0, help="Generator seed (same seed, same bytes)."),
          size: Optional[int] = typer.Option(None, help="Image side in pixels (3D: in-plane); default per dataset.")):
    _, _, adapter = _adapter(task)
    options = {k: v for k, v in (("n", n), ("size", size)) if v is not None}
    folder = adapter.synthesize(out, seed=seed, **options)
    console.print(f"synthetic {task} ({adapter.LAYOUT}) written to: {folder}", soft_wrap=True)
