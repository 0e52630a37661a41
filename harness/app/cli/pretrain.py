"""`bench pretrain` and `bench runs`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from medssl_bench.harness.app.cli.common import ProgressBar, console, paragraphs, workspace_option
from medssl_bench.harness.workspace import Workspace
from medssl_bench.methods import METHOD_NAMES  # names only: the method modules load on use

pretrain_app = typer.Typer()


@pretrain_app.command(help=paragraphs("""
    Pretrain a backbone with a self-supervised method on a corpus.

    The method's 'paper' profile is its published recipe, every value sourced in methods/NAME.py
    (backbone, initial weights, size, batch, epochs, optimiser, the lr the official code realised,
    loss weights). 'benchmark' trains every method on one budget (ResNet-50 from ImageNet-1K
    weights, 224 px, 100 epochs at batch 256: the same images seen on one corpus, as LVM-Med's
    comparison of its baselines) with the method's own views, loss and paper settings; the
    leaderboard ranks benchmark rows only among themselves (docs/methods.md, "Profiles"). 'quick'
    is a CPU smoke setting. Options given here override the profile; --set KEY=VALUE overrides any
    method setting. A run that changes a key its profile pins is recorded as "PROFILE (modified:
    KEYS)" and ranked apart.

    Grayscale medical images are replicated to three channels (so ImageNet-style stems and RGB
    downstream tasks share one backbone); colour jitter then only changes brightness/contrast.

    Writes a run folder: run.json (config, corpus id, provenance), metrics.jsonl, mmengine
    checkpoints for --resume, and backbone.safetensors + backbone.json, a torchvision-style
    state dict every adapter loads. Run under `torchrun --nproc-per-node N` for DDP."""))
def pretrain(
    method: str = typer.Option(..., "--method", "-m", help=" | ".join(METHOD_NAMES)),
    corpus: Optional[str] = typer.Option(None, help="Corpus id (or prefix) from `bench corpus build`, a manifest.jsonl, or a folder of images."),
    backbone: Optional[str] = typer.Option(None, help="resnet18 | resnet50 (profile default)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size, split over DDP processes."),
    image_size: Optional[int] = typer.Option(None, help="Side of the (global) crops in pixels."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate at batch 256 (scaled linearly with the batch)."),
    seed: Optional[int] = typer.Option(None, help="Seed for weights, data order and augmentations."),
    init: Optional[Path] = typer.Option(None, help="Start from a bench backbone checkpoint (.safetensors), e.g. torchvision's ImageNet weights imported with `bench import-checkpoint resnet50-0676ba61.pth`: LVM-Med and its baselines start from ImageNet-1K, so the paper profiles of lvmmed and ark, and every benchmark run, start only with --init PATH, or with --init none (random weights, recorded as a change of the profile)."),
    profile: str = typer.Option("quick", help="quick (CPU smoke) | paper (the published recipe) | benchmark (one budget for every method: ResNet-50, ImageNet init, 224 px, 100 epochs x batch 256)."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 mixed precision (GPU only)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="Weights and feature maps in NHWC memory order, which tensor-core GPUs favour. Speed only: the same training (measured per device in benchmarks/README.md)."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile every backbone copy (student and momentum/teacher); losses and heads stay eager. The first steps compile (seconds to minutes). Speed only: the same training (measured per device in benchmarks/README.md; no reliable gain on 2 CPU cores)."),
    augment: Optional[str] = typer.Option(None, "--augment", help="Where the views are made: cpu (default: loader workers run the method's lightly transforms) or device (workers only decode and draw the same random parameters; crops, flips, colour jitter, blur and solarisation are made on the training device with kornia, so a GPU is not starved by a few CPU cores). LVM-Med's and PEAC's own views have a device path too; ark and models_genesis have CPU views only."),
    set_: list[str] = typer.Option([], "--set", help="Override any setting: --set temperature=0.2."),
    name: Optional[str] = typer.Option(None, help="Run name, a folder in WORKSPACE/runs: letters, digits, '.', '_', '-' (default METHOD-BACKBONE-TIMESTAMP)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run named by --name (or the newest unfinished run with this configuration) from its last epoch, from the checkpoints in its own folder (a moved workspace or a copied run folder resumes from its own files). A run being trained is locked: a second --resume is refused."),
    stop_after_epoch: Optional[int] = typer.Option(None, help="Stop after this many epochs (checkpointed; continue with --resume)."),
    num_workers: Optional[int] = typer.Option(None, help="Data-loading processes (default: half the CPUs)."),
    labels_from: list[str] = typer.Option([], "--labels-from", help="Label-using methods (ark): a labelled dataset, repeatable, read in this order: a prepared classification dataset in --data-root (its train split only; a multi-label one such as cxr_findings with its uncertain-label policy, --set uncertain_label=...) or a synthetic set (phantom_ct, phantom_mr, phantom_modality)."),
    data_root: Optional[Path] = typer.Option(None, help="Prepared datasets for --labels-from (default WORKSPACE/data)."),
    workspace: Path = workspace_option(),
):
    from medssl_bench.harness.app.pretrain import PretrainRequest, run_pretraining
    from medssl_bench.harness.config import parse_set_options
    from medssl_bench.harness.runs import read_run

    overrides = dict(backbone=backbone, epochs=epochs, batch_size=batch_size, image_size=image_size,
                     base_lr=lr, seed=seed, amp=amp, augment=augment,
                     channels_last=channels_last, compile=compile_, init=str(init) if init else None,
                     labels_from=labels_from or None)
    request = PretrainRequest(method=method, profile=profile, corpus=corpus, overrides=overrides,
                              sets=parse_set_options(set_), workspace=Workspace.resolve(workspace), name=name,
                              resume=resume, stop_after_epoch=stop_after_epoch, num_workers=num_workers,
                              data_root=data_root, say=lambda line: console.print(line, markup=False, highlight=False))
    with ProgressBar(console) as bar:  # drawn only where steps are reported: the main process
        run_dir = run_pretraining(request, progress=bar)
    if run_dir is not None:  # the main process reports
        record = read_run(run_dir)
        console.print(f"[green]{record['status']}[/]: {record['name']}  epochs {record['epochs_done']}/"
                      f"{record['config']['epochs']}  last loss {record['last_loss']:.4f}  "
                      f"{record['images_per_second']:.1f} img/s")
        console.print(f"run folder:  {run_dir}", soft_wrap=True)
        console.print(f"checkpoint:  {record['backbone_path']}  (+ backbone.json sidecar)", soft_wrap=True)
        exports = json.loads((run_dir / "backbone.json").read_text()).get("exports") or {}
        if exports:  # e.g. Models Genesis' decoder, for the genesis_unet protocol
            console.print(f"also exported: {', '.join(str(run_dir / e['file']) for e in exports.values())}",
                          soft_wrap=True)


@pretrain_app.command(help="List pretraining runs in the workspace: status, progress, loss, corpus, checkpoint. "
                       "A run recorded as running whose process is gone (killed, or its machine rebooted) shows "
                       "as died; continue it with --resume.")
def runs(workspace: Path = workspace_option()):
    from medssl_bench.harness.config import profile_label
    from medssl_bench.harness.runs import list_runs

    ws = Workspace.resolve(workspace)
    records = list_runs(ws)
    if not records:
        console.print(f"no runs in {ws.runs}; start one with `bench pretrain --method simclr --corpus ID`")
        return
    table = Table(title=f"runs in {ws.runs}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", overflow="fold")
    table.add_column("method", min_width=12)
    for column in ("status", "epochs", "loss"):
        table.add_column(column, no_wrap=True)
    table.add_column("corpus", no_wrap=True, min_width=12)
    for r in records:
        loss = r.get("last_loss")
        # "benchmark (modified: image_size)" where the run changed a key its profile pins
        shown = profile_label(r["config"]) if "profile" in r.get("config", {}) else r.get("profile", "?")
        table.add_row(r.get("name", "?"), f"{r.get('method', '?')} {r.get('backbone', '?')} {shown}",
                      r.get("status", "?"), f"{r.get('epochs_done', 0)}/{r.get('config', {}).get('epochs', '?')}",
                      f"{loss:.4f}" if isinstance(loss, float) else "-", r.get("corpus", {}).get("id", "?"))
    console.print(table)
