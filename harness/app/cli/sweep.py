"""`bench sweep` (tune a method with Optuna) and `bench sweep show`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from medssl_bench.harness.app.cli.common import (ProgressBar, console, log_line, paragraphs, show_outcome,
                                                workspace_option)
from medssl_bench.harness.workspace import Workspace

sweep_app = typer.Typer(no_args_is_help=False, add_completion=False)

HELP = paragraphs("""
Tune a pretraining method with Optuna, with an explicit budget of N trials.

Each trial pretrains with settings sampled from the method's search space (declared in its file
in methods/, the paper's values inside the ranges), scores the backbone every --report-every
epochs on the VALIDATION splits of --task (kNN or linear probe fitted on train; the median pruner
stops trials that trail), and ends with the objective: the mean over tasks of (val - random-init
val) / (1 - random-init val). Test splits are never read during a sweep. When the study has its N
trials, the best trial's checkpoint is evaluated on test once with `bench eval` and recorded with
the sweep (trial count, compute), so the leaderboard can say "tuned with N trials".

Storage: a SQLite file in the workspace by default; --storage postgresql://USER@HOST/DB lets
several --workers or machines join one study (run the same command on each). Re-running the
command continues a study; a killed worker's trial is retried. `optuna-dashboard URL` shows
the same storage in a browser.""")


@sweep_app.callback(invoke_without_command=True, help=HELP)
def sweep(ctx: typer.Context,
          method: Optional[str] = typer.Option(None, "--method", "-m", help="The method to tune (`bench pretrain --help` lists them)."),
          trials: int = typer.Option(8, help="Trials in the study (the tuning budget), whatever the number of workers."),
          corpus: Optional[str] = typer.Option(None, help="Corpus id (or prefix) from `bench corpus build`, a manifest.jsonl, or a folder of images."),
          task: list[str] = typer.Option([], "--task", help="Classification task scored on val (repeatable; default brain_tumor and fgadr)."),
          scoring: str = typer.Option("knn", help="knn (weighted kNN, k chosen on val) | linear (linear probe, lr/wd/epoch chosen on val)."),
          profile: str = typer.Option("quick", help="The method profile the search starts from (quick | paper)."),
          epochs: Optional[int] = typer.Option(None, help="Pretraining epochs per trial (default: the profile's)."),
          storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default sqlite file WORKSPACE/sweeps.db)."),
          study: Optional[str] = typer.Option(None, help="Study name (default METHOD-PROFILE); the same name continues a study."),
          workers: int = typer.Option(1, help="Local worker processes sharing the study."),
          report_every: int = typer.Option(1, help="Score on val (and let the pruner decide) every N epochs."),
          seed: int = typer.Option(0, help="Seed of pretraining and of a lone worker's sampler."),
          heartbeat: int = typer.Option(20, help="Seconds between a running trial's heartbeats; a trial silent for 3 is failed and retried."),
          final_eval: bool = typer.Option(True, "--final-eval/--no-final-eval", help="Evaluate the best checkpoint on test when the study completes."),
          final_seeds: int = typer.Option(3, help="Seeds of that final evaluation."),
          final_protocol: Optional[str] = typer.Option(None, help="Protocols of that final evaluation, comma-separated (default: each task's standard ones)."),
          data_root: Optional[Path] = typer.Option(None, help="Where `bench data prepare` wrote the datasets (default WORKSPACE/data)."),
          db: Optional[str] = typer.Option(None, help="Results store URL for the final evaluation (default WORKSPACE/results.db)."),
          workspace: Path = workspace_option()):
    if ctx.invoked_subcommand is not None:
        return
    from medssl_bench.harness.app.sweep import SweepRequest, prepare_study
    from medssl_bench.harness.app.sweep_worker import finalize, run_workers, worker_loop
    from medssl_bench.harness.errors import UserError

    if not method or not corpus:
        raise UserError("bench sweep needs --method and --corpus (`bench sweep --help`)")
    req = SweepRequest(method=method, trials=trials, corpus=corpus, workspace=Workspace.resolve(workspace).writable(),
                       tasks=task or ["brain_tumor", "fgadr"], scoring=scoring, profile=profile, epochs=epochs,
                       storage=storage, study=study, workers=workers, report_every=report_every, seed=seed,
                       heartbeat=heartbeat, data_root=data_root, db=db, final_seeds=final_seeds,
                       final_protocols=final_protocol.split(",") if final_protocol else None,
                       final_eval=final_eval)
    settings = prepare_study(req)
    console.print(f"study [bold]{escape(req.study_name)}[/] in {escape(redact_url(req.storage_url))}: "
                  f"{trials} trials of {method} ({settings['epochs']} epochs each), scored on val of "
                  f"{', '.join(req.tasks)} by {scoring}")
    # One worker shows its trials' training steps (each trial names itself); several, the finished trials.
    with ProgressBar(console, "" if workers == 1 else f"sweep {req.study_name}") as bar:
        if workers == 1:
            worker_loop(req, log=log_line, progress=bar)
        else:
            run_workers(req, progress=bar)
    with ProgressBar(console, "eval") as bar:
        final, evaluation = finalize(req, log=log_line, progress=bar)
    if evaluation is not None:
        show_outcome(evaluation, req.workspace, req.db, req.tasks)
    show_study(req.storage_url, req.study_name)
    if final is None:
        console.print("other workers are still running trials; the last one to finish evaluates the best")
    console.print(f"study storage: {redact_url(req.storage_url)}  (bench sweep show --study {req.study_name})",
                  soft_wrap=True, highlight=False)


@sweep_app.command("show", help="Print a study: its trials, the best settings and their importances.")
def show(study: Optional[str] = typer.Option(None, help="Study name (default: the only study in the storage)."),
         storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default sqlite file WORKSPACE/sweeps.db)."),
         workspace: Path = workspace_option()):
    import optuna

    from medssl_bench.harness.app.sweep import default_storage
    from medssl_bench.harness.errors import UserError

    url = storage or default_storage(Workspace.resolve(workspace))
    if not study:
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
            raise UserError(f"no sweep storage at {url}; run `bench sweep` first")
        names = [s.study_name for s in optuna.get_all_study_summaries(url)]
        if len(names) != 1:
            raise UserError(f"{len(names)} studies in {redact_url(url)} ({', '.join(names) or 'none'}): name one with --study")
        study = names[0]
    show_study(url, study)



def redact_url(url: str) -> str:
    from medssl_bench.harness.app.sweep import redact

    return redact(url)


def show_study(url: str, name: str) -> None:
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    from medssl_bench.harness.app.sweep import open_study

    study = open_study(url, name)
    trials = study.get_trials(deepcopy=False)
    table = Table(title=f"study {name}: {len(trials)} trials", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("trial", "state", "objective", "epochs", "minutes", "params / error"):
        table.add_column(column, overflow="fold" if column.startswith("params") else None)
    for t in trials:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        table.add_row(str(t.number), t.state.name, f"{t.value:.4f}" if t.value is not None else "-",
                      str(max(t.intermediate_values, default="-")), f"{t.user_attrs.get('seconds', 0) / 60:.1f}",
                      escape(t.user_attrs.get("error") or params))
    console.print(table)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return
    best = study.best_trial
    console.print(f"best: trial {best.number}, objective {best.value:.4f} ({study.user_attrs.get('scoring', '?')} on val "
                  f"of {', '.join(study.user_attrs.get('tasks', []))}), run {best.user_attrs.get('run')}", highlight=False)
    try:
        importances = get_param_importances(study)
        console.print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()), highlight=False)
    except (ValueError, RuntimeError) as err:  # too few trials, or no variation yet
        console.print(f"importances: not yet ({err})", highlight=False)
    final = study.user_attrs.get("final")
    if final:
        console.print(f"final test evaluation: {final}", highlight=False)
