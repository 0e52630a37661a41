"""Running a sweep: the worker loop (claim a trial, pretrain, score on val, tell), local worker
processes, and the single test evaluation of the best trial (see harness.app.sweep for the protocol).

Nothing here prints: lines for the user go to a `log` callback and step counts to a `progress`
callback (harness.progress); `bench sweep` passes ones that print."""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time

from mmengine.hooks import Hook

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.progress import Log, Progress
from medssl_bench.harness.app.sweep import SweepRequest, claim_trial, open_study, redact, score_backbone, sealed_tasks, study_lock

OBJECTIVE = "mean over tasks of (val - random-init val) / (1 - random-init val)"


class ScoreHook(Hook):
    """Every `every` epochs: score the backbone on val, report it to Optuna, stop if pruned."""

    priority = "VERY_LOW"  # after the epoch's backbone export

    def __init__(self, trial, tasks: list[tuple], baseline: dict, seed: int, every: int):
        self.trial, self.tasks, self.baseline, self.seed, self.every = trial, tasks, baseline, seed, every
        self.value, self.raw, self.pruned = None, None, False

    def after_train_epoch(self, runner) -> None:
        from medssl_bench.harness.engine import unwrap

        epoch = runner.epoch + 1
        if epoch % self.every and epoch != runner.max_epochs:
            return
        self.value, self.raw = score_backbone(unwrap(runner.model).method.backbone, self.tasks, self.baseline,
                                              self.seed)
        self.trial.report(self.value, epoch)
        if epoch != runner.max_epochs and self.trial.should_prune():
            self.pruned = True
            runner.train_loop.stop_training = True


def suggest(trial, name: str, dist):
    """Sample one setting from an Optuna distribution through the trial's public API."""
    from optuna.distributions import FloatDistribution, IntDistribution

    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def run_trial(study, trial, req: SweepRequest, tasks: list[tuple], baseline: dict, log: Log | None = None,
              progress: Progress | None = None) -> str:
    """Pretrain with sampled settings (its steps go to `progress`), score, tell the study; returns the
    trial's final state name."""
    from optuna.trial import TrialState

    from medssl_bench.harness.app.pretrain import PretrainRequest, run_pretraining
    from medssl_bench.harness.app.sweep import Heartbeat
    from medssl_bench.methods import get_method

    method = get_method(req.method)
    params = {name: suggest(trial, name, dist) for name, dist in method.search_space.items()}
    run_name = f"sweep-{req.study_name}-t{trial.number:04d}"
    hook = ScoreHook(trial, tasks, baseline, req.seed, req.report_every)
    pretrain = PretrainRequest(
        method=req.method, profile=req.profile, corpus=req.corpus, workspace=req.workspace, name=run_name,
        overrides={**params, "epochs": req.epochs, "seed": req.seed}, hooks=[hook],
        run_fields={"sweep": {"study": req.study_name, "storage": redact(req.storage_url), "trial": trial.number,
                              "best": False}})
    trial.set_user_attr("run", run_name)
    started, beat = time.perf_counter(), Heartbeat(study, trial, req.heartbeat)
    try:
        run_pretraining(pretrain, progress)
        error = None if hook.value is None or math.isfinite(hook.value) else "the score is not finite"
    except Exception as err:  # a diverging or impossible setting fails its trial, not the sweep
        error = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
    finally:
        beat.stop()
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
    if hook.raw:
        trial.set_user_attr("val_scores", hook.raw)
    if error:
        trial.set_user_attr("error", error[:500])
        study.tell(trial, state=TrialState.FAIL)
        if log:
            log(f"trial {trial.number} failed: {error}")
        return "FAIL"
    if hook.pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return "PRUNED"
    study.tell(trial, hook.value)
    if log:
        log(f"trial {trial.number}: objective {hook.value:.4f}  {params}")
    return "COMPLETE"


def worker_loop(req: SweepRequest, log: Log | None = None, progress: Progress | None = None, index: int = 0) -> dict:
    """Claim and run trials until the study has its N trials; wait for other workers' running
    trials (one may belong to a killed worker and come back for retry). Returns state counts."""
    from optuna.trial import TrialState

    # A lone worker samples deterministically; parallel ones must not draw the same start points.
    seed = req.seed if req.workers == 1 and index == 0 else hash((req.seed, index, os.getpid())) % 2**31
    study = open_study(req.storage_url, req.study_name, heartbeat=req.heartbeat, seed=seed)
    tasks, baseline = sealed_tasks(req), study.user_attrs["random_init_val"]
    counts: dict[str, int] = {}
    while True:
        trial = claim_trial(study, req.storage_url, req.trials)
        if trial is None:
            if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
                time.sleep(min(req.heartbeat, 5))
                continue
            return counts
        state = run_trial(study, trial, req, tasks, baseline, log, progress)
        counts[state] = counts.get(state, 0) + 1
        if counts.get("FAIL", 0) > max(2, req.trials):
            raise UserError(f"study '{req.study_name}': {counts['FAIL']} trials failed in this worker; "
                            "see `bench sweep show` for their errors")


def _worker_process(req: SweepRequest, index: int, threads: int, parent_pid: int) -> None:
    from medssl_bench.harness.process import die_with_parent

    die_with_parent(parent_pid)  # a killed `bench sweep` leaves no worker training on
    import torch

    torch.set_num_threads(threads)
    try:
        worker_loop(req, index=index)  # silent: the parent process shows the study's progress
    except UserError as err:
        print(f"error: sweep worker {index}: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches the process group: the parent says so; the trial is retried later
        sys.exit(130)


def run_workers(req: SweepRequest, progress: Progress | None = None) -> None:
    """Run `req.workers` local worker processes; `progress(trials_finished, trials)` every second."""
    from medssl_bench.harness.provenance import available_cpus

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    threads = max(1, available_cpus() // req.workers)
    procs = [context.Process(target=_worker_process, args=(req, i, threads, os.getpid())) for i in range(req.workers)]
    try:
        for proc in procs:
            proc.start()
        study = open_study(req.storage_url, req.study_name, heartbeat=req.heartbeat)
        report = progress or (lambda done, total=None, **fields: None)
        while any(p.is_alive() for p in procs):
            report(len(finished_trials(study)), req.trials)
            time.sleep(1.0)
        report(len(finished_trials(study)), req.trials)
    finally:  # Ctrl-C or an error here: no worker outlives this call (their running trials are retried)
        _stop(procs)
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise UserError(f"sweep workers {failed} stopped with an error (see above); the study keeps "
                        "their finished trials: re-run the command to continue it")


def _stop(procs: list) -> None:
    """End the worker processes still running: 5 s to end on their own (Ctrl-C reached them too),
    then SIGTERM, then SIGKILL."""
    started = [p for p in procs if p.pid is not None]
    deadline = time.monotonic() + 5
    for proc in started:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in started:
        if proc.is_alive():
            proc.terminate()
    for proc in started:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def sweep_summary(study) -> dict:
    """What a checkpoint tuned by this study records: trial counts, compute, the winner."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = lambda state: sum(t.state == state for t in trials)  # noqa: E731
    best = study.best_trial
    return {"study": study.study_name, "objective": OBJECTIVE, "trials": len(finished_trials(study)),
            "complete": count(TrialState.COMPLETE), "pruned": count(TrialState.PRUNED),
            "failed": count(TrialState.FAIL), "compute_s": round(sum(t.user_attrs.get("seconds", 0.0) for t in trials), 2),
            "best_trial": best.number, "best_value": best.value, "best_params": best.params,
            "settings": {k: study.user_attrs.get(k) for k in ("method", "profile", "tasks", "scoring", "epochs")}}


def finalize(req: SweepRequest, log: Log | None = None, progress: Progress | None = None) -> tuple[dict | None, object]:
    """Once the study is complete: mark the best trial's run as the sweep's checkpoint (its sidecar
    records the sweep) and evaluate it on test (the `bench eval` service), exactly once per study.

    Returns (final, evaluation): `final` as recorded in the study ({run, status, done, failed}; None
    while other workers still run trials) and the harness.app.evaluate.EvalOutcome of the test
    evaluation this call ran (None when it ran none)."""
    from optuna.trial import TrialState

    from medssl_bench.harness.checkpoint import sidecar_path
    from medssl_bench.harness.fsutil import write_json_atomic
    from medssl_bench.harness.runs import BACKBONE_FILE, read_run, update_run

    study = open_study(req.storage_url, req.study_name, heartbeat=req.heartbeat)
    with study_lock(req.storage_url, req.study_name):
        trials = study.get_trials(deepcopy=False)
        if len(finished_trials(study)) < req.trials or any(t.state == TrialState.RUNNING for t in trials):
            return None, None  # other workers still at it: the last one finalises
        if study.user_attrs.get("final") or not any(t.state == TrialState.COMPLETE for t in trials):
            return study.user_attrs.get("final"), None
        summary = {**sweep_summary(study), "storage": redact(req.storage_url)}
        run_dir = req.workspace.runs / study.best_trial.user_attrs["run"]
        update_run(run_dir, sweep={**read_run(run_dir)["sweep"], "best": True, **summary})
        sidecar = sidecar_path(run_dir / BACKBONE_FILE)
        write_json_atomic(sidecar, {**json.loads(sidecar.read_text()), "sweep": summary})
        study.set_user_attr("final", {"run": run_dir.name, "status": "evaluating"})
    log = log or (lambda line: None)
    log(f"best trial {summary['best_trial']} (objective {summary['best_value']:.4f}, "
        f"{summary['trials']} trials, {summary['compute_s'] / 3600:.3f} h): run {run_dir}")
    outcome = None
    if req.final_eval:
        from medssl_bench.harness.app.evaluate import EvalRequest, evaluate

        log("evaluating the best trial's checkpoint on test, once:")
        outcome = evaluate(EvalRequest(
            workspace=req.workspace, checkpoints=run_dir.name, tasks=req.tasks, protocols=req.final_protocols,
            seeds=req.final_seeds, profile=req.profile, data_root=req.data_root, db=req.db), progress, log)
    final = {"run": run_dir.name, "status": "evaluated" if req.final_eval else "selected",
             "done": outcome.done if outcome else 0, "failed": outcome.failed if outcome else 0}
    study.set_user_attr("final", final)
    return final, outcome
