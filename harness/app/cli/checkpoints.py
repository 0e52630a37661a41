"""`bench import-checkpoint` and `bench checkpoints`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from medssl_bench.harness.app.cli.common import console, log_line, paragraphs, workspace_option
from medssl_bench.harness.workspace import Workspace

checkpoints_app = typer.Typer()


@checkpoints_app.command("import-checkpoint", help=paragraphs("""
    Import external backbone weights into bench, once and safely.

    SRC: a torchvision ImageNet weights file (resnet18-*.pth, resnet50-*.pth), LVM-Med's
    released lvmmed_resnet.torch, or another ResNet state dict (.pth .pt .torch .tar .ckpt
    .safetensors), bare or inside a training checkpoint (state_dict / model / teacher /
    student / backbone); module. backbone. encoder. model. prefixes and the fc classifier go.

    The file is read with safetensors or torch.load(weights_only=True): no code stored in a
    pickle is ever run, and a file that would need it is refused. The weights are checked by
    a strict load into the backbone, then written to the workspace as
    checkpoints/NAME/backbone.safetensors + backbone.json (the checkpoint contract every
    adapter loads; the source path and sha256 are recorded). Use the printed name or id
    wherever a checkpoint is asked for, or the path as `bench pretrain --init`."""))
def import_checkpoint_command(
    src: Path = typer.Argument(..., help="The weights file to import."),
    name: Optional[str] = typer.Option(None, help="Checkpoint name (default: the file name without extension)."),
    backbone: Optional[str] = typer.Option(None, help="resnet18 | resnet50 (default: inferred from the weights)."),
    workspace: Path = workspace_option(),
):
    from medssl_bench.harness.checkpoint_index import checkpoint_ref, import_checkpoint

    ws = Workspace.resolve(workspace)
    path = import_checkpoint(src, ws, name=name, backbone=backbone, log=log_line)
    ref = checkpoint_ref(path, ws)
    console.print(f"[green]imported[/]: {ref.name}  {ref.backbone}  id {ref.id}")
    console.print(f"checkpoint:  {path}  (+ backbone.json sidecar)", soft_wrap=True)


@checkpoints_app.command(help=paragraphs("""
    List the checkpoints evaluation can run: pretraining runs that exported a backbone, and imported
    weights; with their id (sha256 prefix of the weights file), method, backbone and corpus.

    'random' (random initialisation) and 'all' are also accepted wherever a checkpoint is named."""))
def checkpoints(workspace: Path = workspace_option()):
    from medssl_bench.harness.checkpoint_index import list_checkpoints

    ws = Workspace.resolve(workspace)
    refs = list_checkpoints(ws)
    if not refs:
        console.print(f"no checkpoints in {ws.root}; pretrain one (`bench pretrain`) or import one "
                      "(`bench import-checkpoint FILE`)")
        return
    table = Table(title=f"checkpoints in {ws.root}", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="also: random (random init), all")
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=16)
    for column in ("method", "backbone", "corpus"):
        table.add_column(column, no_wrap=True)
    table.add_column("path (in the workspace)", overflow="fold")
    for ref in refs:
        corpus = (ref.corpus_id or "-") + (" synthetic" if ref.synthetic else "")
        shown = ref.path.relative_to(ws.root) if ref.path.is_relative_to(ws.root) else ref.path
        table.add_row(ref.id, ref.name, ref.method, ref.backbone, corpus, str(shown))
    console.print(table)
