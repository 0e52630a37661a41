"""`bench eval`: evaluate checkpoints on downstream tasks (the service is harness.app.evaluate), then
tabulate what the results store holds for them (common.show_outcome, shared with `bench sweep`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medssl_bench.harness.app.cli.common import (ProgressBar, console, log_line, paragraphs, show_outcome,
                                                workspace_option)
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.workspace import Workspace

eval_app = typer.Typer()


@eval_app.command("eval", help=paragraphs("""
    Evaluate checkpoints on downstream tasks and record every result in the results store.

    One job = checkpoint x task x protocol x label fraction x seed; jobs already in the store are
    skipped (--force re-runs them), a failed job is recorded with its reason and the others go on.

    Classification (LVM-Med Table 5): linear = one FC layer on frozen, cached features (lr, weight
    decay and epoch chosen on val, never on test); knn = weighted kNN on the same features;
    finetune = encoder + FC trained end to end, best-val epoch tested.

    Segmentation (Tables 7, 8): finetune = U-Net on the encoder through mmseg, CE + Dice, best-val
    epoch tested, scored by the paper's per-image Dice / per-volume 3D IoU; frozen (on request)
    trains the decoder only.

    Detection (App. B): finetune = Faster R-CNN R50-FPN through mmdet with the encoder as its
    backbone, Adam, best-val epoch tested, scored by AP at IoU 0.5 (and COCO mAP).

    `random` (random init, seeded per evaluation seed) is a baseline row."""))
def eval_(checkpoint: Optional[str] = typer.Option(None, help="PATH (.safetensors) | RUN name | imported name | id prefix | random | all. Default: every checkpoint plus random; done jobs are skipped."),
          task: list[str] = typer.Option([], "--task", help="Task name (repeatable); `bench tasks` lists them."),
          all_tasks: bool = typer.Option(False, "--all-tasks", help="The paper's 15 tasks (extras such as bccd run when named with --task)."),
          protocol: Optional[str] = typer.Option(None, help="linear | knn | finetune | frozen | paper_linear | paper_finetune | genesis_unet, comma-separated (default: each task's standard protocols; `bench tasks` lists which each task has)."),
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
    from medssl_bench.harness.app.evaluate import EvalRequest, evaluate

    try:
        fractions = tuple(float(x) for x in label_fraction.split(","))
    except ValueError:
        raise UserError(f"--label-fraction must be comma-separated numbers, not '{label_fraction}'") from None
    ws = Workspace.resolve(workspace).writable()
    req = EvalRequest(workspace=ws, checkpoints=checkpoint, tasks=task, all_tasks=all_tasks,
                      protocols=protocol.split(",") if protocol else None, label_fractions=fractions,
                      seeds=seeds, profile=profile, data_root=data_root, db=db, force=force, launcher=launcher,
                      jobs=jobs, image_size=image_size, slurm={"partition": slurm_partition})
    with ProgressBar(console, "eval") as bar:
        outcome = evaluate(req, progress=bar, log=log_line)
    show_outcome(outcome, req.workspace, req.db, req.tasks)
    if outcome.failed:
        raise typer.Exit(1)
