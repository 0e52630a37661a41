"""`bench eval`: plan checkpoint x task x protocol x label fraction x seed jobs, skip the ones
the results store already holds, fan the rest out, record each one atomically.

A *unit* is one checkpoint on one dataset (the tasks that share it: the three prostate sites):
it loads the data once, computes the frozen features once (cached on disk too) and runs its jobs
one after another, writing each to the store as it finishes. Units run in a local process pool
(default) or through submitit (Slurm, or its local executor); a job that fails is recorded as
failed with its reason and the rest go on. A pool worker that dies (the OOM killer, a segfault in
native code) costs the job it was running, recorded with the signal; its unit's other jobs go on in a
fresh worker. Pool workers die with the process that started them.
"""
from __future__ import annotations

import fnmatch
import os
import signal
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from medssl_bench.harness.devices import default_device
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.progress import Log, Progress
from medssl_bench.harness.provenance import available_cpus
from medssl_bench.harness.workspace import Workspace

LAUNCHERS = ("pool", "slurm", "submitit-local")
# Fault injection for tests (tests/test_faults_eval.py), not a user setting: a job whose
# "checkpoint_id/task/protocol/label_fraction/seed" matches this glob kills its own worker with SIGKILL
# as it starts, as the OOM killer would.
FAULT_KILL_JOB = "BENCH_FAULT_KILL_JOB"


@dataclass
class EvalRequest:
    workspace: Workspace
    checkpoints: str | None = None          # None: every checkpoint (jobs already done are skipped)
    tasks: list[str] = field(default_factory=list)
    all_tasks: bool = False
    protocols: list[str] | None = None      # None: every protocol of each task
    label_fractions: tuple[float, ...] = (1.0,)
    seeds: int = 3
    profile: str = "quick"
    data_root: Path | None = None
    db: str | None = None
    force: bool = False
    launcher: str = "pool"
    jobs: int | None = None
    image_size: int | None = None           # overrides the protocol's image size (recorded)
    slurm: dict = field(default_factory=dict)


@dataclass
class Unit:
    checkpoint: object   # harness.checkpoint_index.CheckpointRef
    dataset: str         # the tasks of `keys` all read this dataset
    keys: list           # harness.store.EvalKey


def plan(req: EvalRequest, store) -> tuple[list[Unit], int]:
    """Units with the jobs still to run, and the number of jobs skipped because they are done."""
    from medssl_bench.downstream.registry import select_tasks
    from medssl_bench.harness.checkpoint_index import list_checkpoints, random_checkpoint, resolve_checkpoints
    from medssl_bench.harness.store import EvalKey, label_fraction_ppm

    if req.launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher '{req.launcher}'; choose one of: {', '.join(LAUNCHERS)}")
    for fraction in req.label_fractions:
        label_fraction_ppm(fraction)  # (0, 1] and exactly storable, or a UserError now rather than in a worker
    if req.seeds < 1:
        raise UserError("--seeds must be at least 1")
    tasks = select_tasks(req.tasks, req.all_tasks)
    # random init gets the profile's backbone (quick: ResNet-18, paper: ResNet-50)
    random_backbone = tasks[0].protocol(tasks[0].protocols[0], req.profile).backbone
    if req.checkpoints:
        refs = resolve_checkpoints(req.checkpoints, req.workspace, backbone=random_backbone)
    else:
        refs = [*list_checkpoints(req.workspace), random_checkpoint(random_backbone)]
    for protocol in req.protocols or []:
        if not any(protocol in t.protocols for t in tasks):
            raise UserError(f"no selected task has a '{protocol}' protocol")
    units, skipped = [], 0
    for ref in refs:
        store.upsert_checkpoint(ref.as_record())
        done = set() if req.force else store.done_keys(checkpoint_id=ref.id)
        by_dataset: dict[str, list] = {}
        for task in tasks:
            protocols = list(task.default_protocols) if req.protocols is None else \
                [p for p in task.protocols if p in req.protocols]
            keys = [EvalKey(ref.id, task.name, p, f, s) for p in protocols for f in req.label_fractions
                    for s in range(req.seeds)]
            todo = [k for k in keys if k not in done]
            skipped += len(keys) - len(todo)
            by_dataset.setdefault(task.dataset, []).extend(todo)
        # jobs that differ only in task run back to back: tasks sharing a dataset may share training
        order = lambda k: (k.protocol, k.label_fraction, k.seed, k.task)  # noqa: E731
        units.extend(Unit(ref, dataset, sorted(keys, key=order)) for dataset, keys in by_dataset.items() if keys)
    return units, skipped


def run_unit(spec: dict, report=None) -> dict:
    """Run one unit's jobs (in a worker process or a Slurm job); every job is recorded.
    `report(event, index[, status])` hears ("start", i) and ("end", i, "done" | "failed") per job."""
    import torch

    from medssl_bench.downstream import classification
    from medssl_bench.downstream.families import get_family
    from medssl_bench.downstream.registry import get_task
    from medssl_bench.harness.provenance import code_version, host_info, package_versions
    from medssl_bench.harness.store import ResultsStore

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    ws = Workspace(Path(spec["workspace"]))
    store = ResultsStore.open(spec["db"], ws)
    ref = spec["checkpoint"]
    report = report or (lambda *event: None)
    family = get_family(get_task(spec["keys"][0].task).family)  # a unit's tasks share one dataset
    device = default_device()
    cache = classification.FeatureCache(ws.cache / "features")
    counts = {"done": 0, "failed": 0}
    data, data_error, folder = None, None, Path(spec["data_root"]) / spec["dataset"]
    try:
        data = family.load(folder)
    except UserError as err:
        data_error = f"{err}; prepare it with: bench data prepare {spec['dataset']} --src DIR --out {spec['data_root']}"
    base = {**_job_identity(spec), "pretrain_config": ref.sidecar.get("config"),
            "code": code_version(), "packages": package_versions(), "host": host_info()}
    if data is not None:
        base["data"] = {"dataset": data.name, "content_hash": data.meta["content_hash"],
                        "synthetic": data.meta["synthetic"], "source": data.meta.get("source"),
                        "split": data.meta.get("split")}
    base.update(transfer_status(ref.sidecar, spec["dataset"], data))
    overlap = _overlap_check(ws, ref.sidecar, folder, data)
    for index, key in enumerate(spec["keys"]):
        task, protocol, config = _job_config(spec, key)
        provenance = {**base, "seed": key.seed, "protocol": config}
        report("start", index)
        if fnmatch.fnmatchcase(_job_label(key), os.environ.get(FAULT_KILL_JOB) or "\0"):
            os.kill(os.getpid(), signal.SIGKILL)
        if overlap is not None:
            provenance["test_overlap"] = overlap(task.test_domain)
        start = time.perf_counter()
        try:
            if data_error:
                raise UserError(data_error)
            out = family.run_module().run_job(
                task, protocol, data, ref, label_fraction=key.label_fraction, seed=key.seed, cache=cache,
                device=device, work_root=ws.cache / "work")
            config.update(selected=out.pop("selected"), n_train=out.pop("n_train"))
            store.record_done(key, splits=out, protocol=config, provenance=provenance,
                              wall_time_s=time.perf_counter() - start, force=spec["force"])
            status = "done"
        except Exception as err:  # a failed job is recorded and the others go on
            reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            if not isinstance(err, UserError):
                provenance["traceback"] = traceback.format_exc()[-4000:]
            store.record_failed(key, reason=reason, protocol=config, provenance=provenance,
                                wall_time_s=time.perf_counter() - start)
            status = "failed"
        counts[status] += 1
        report("end", index, status)
    store.close()
    return {**counts, "features_computed": cache.computed}


def _job_config(spec: dict, key) -> tuple:
    """(task, protocol, protocol record) of one job of a unit."""
    from medssl_bench.downstream.registry import get_task

    task = get_task(key.task)
    protocol = task.protocol(key.protocol, spec["profile"])
    if spec.get("image_size"):
        protocol = replace(protocol, image_size=spec["image_size"])
    return task, protocol, {**protocol.as_dict(), "profile": spec["profile"], "label_fraction": key.label_fraction}


def _job_identity(spec: dict) -> dict:
    """The provenance every job of a unit shares: its checkpoint (without the sidecar), method, profile."""
    ref = spec["checkpoint"]
    return {"checkpoint": {k: v for k, v in ref.as_record().items() if k != "sidecar"}, "method": ref.method,
            "profile": spec["profile"]}


def _job_label(key) -> str:
    return f"{key.checkpoint_id}/{key.task}/{key.protocol}/{key.label_fraction:g}/{key.seed}"


def _overlap_check(ws: Workspace, sidecar: dict, folder: Path, data):
    """domain -> the test-overlap record of a task (harness.app.leakage), or None without data."""
    if data is None:
        return None
    from medssl_bench.harness.app import leakage

    try:
        hashes = leakage.hash_test_images(folder, data.meta["content_hash"], ws.cache / "test_hashes")
        corpus_id, seen, unknown = leakage.corpus_hashes(sidecar, ws)
    except UserError as err:  # a damaged manifest or cache: the overlap is unknown, the jobs still run
        record = {"corpus": (sidecar.get("corpus") or {}).get("id"), "seen": None, "unknown": str(err)}
        return lambda domain: record
    return lambda domain: leakage.overlap_record(hashes, corpus_id, seen, unknown, domain)


def transfer_status(sidecar: dict, dataset: str, data) -> dict:
    """{"transfer": False, "transfer_reason": ...} when the checkpoint's pretraining consumed this dataset's labels
    (its sidecar's labels_consumed names it, or holds its content hash): that is in-domain continued training, not
    transfer (docs/methods.md, Ark); else {"transfer": True}."""
    digest = data.meta.get("content_hash") if data is not None else None
    for used in sidecar.get("labels_consumed") or []:
        if used.get("dataset") == dataset or (digest and used.get("content_hash") == digest):
            reason = (f"pretraining consumed the {used.get('split')} labels of {used.get('dataset')} "
                      f"(content {str(used.get('content_hash'))[:12]}, {used.get('n_images')} images)")
            return {"transfer": False, "transfer_reason": reason}
    return {"transfer": True}


def default_jobs() -> int:
    if default_device().type == "cuda":  # one GPU: jobs would only queue for it
        return 1
    return max(1, min(4, available_cpus() // 2))


@dataclass
class EvalOutcome:
    """What one evaluation did; the caller decides how to show it (`bench eval` prints a table)."""
    store_url: str                          # password masked
    jobs: int                               # jobs planned and run
    units: int
    skipped: int                            # jobs already in the store
    done: int = 0
    failed: int = 0
    checkpoint_ids: list[str] = field(default_factory=list)  # the checkpoints of the jobs run


def evaluate(req: EvalRequest, progress: Progress | None = None, log: Log | None = None) -> EvalOutcome:
    """Plan, run and record an evaluation: the service behind `bench eval` and a sweep's final test.
    `log` hears the plan (jobs to run, skipped, store) before anything runs; `progress(jobs_finished,
    jobs)` follows the jobs as they finish."""
    from medssl_bench.harness.store import ResultsStore

    with ResultsStore.open(req.db, req.workspace) as store:
        units, skipped = plan(req, store)
        jobs = sum(len(u.keys) for u in units)
        if log:
            log(f"{jobs} jobs to run in {len(units)} units ({skipped} already done, skipped); store: {store.url}")
        outcome = EvalOutcome(store.url, jobs, len(units), skipped,
                              checkpoint_ids=sorted({u.checkpoint.id for u in units}))
        if units:
            report = (lambda finished: progress(finished, jobs)) if progress else None  # noqa: E731
            totals = launch(req, units, store, progress=report)
            outcome.done, outcome.failed = totals["done"], totals["failed"]
    return outcome


def launch(req: EvalRequest, units: list[Unit], store, progress=None) -> dict:
    """Run the units with the chosen launcher; `progress(n_finished)` is called as jobs finish
    (counted from the store, so it works for every launcher). Returns the summed counts."""
    jobs = req.jobs or default_jobs()
    cpus = available_cpus()
    root = req.workspace.data_root(req.data_root)
    specs = [dict(workspace=str(req.workspace.root), db=req.db, dataset=u.dataset, checkpoint=u.checkpoint, keys=u.keys,
                  profile=req.profile, data_root=str(root), force=req.force, image_size=req.image_size,
                  threads=max(1, cpus // jobs) if req.launcher == "pool" else None) for u in units]
    planned = {k for u in units for k in u.keys}

    checkpoint_ids = sorted({u.checkpoint.id for u in units})

    def stamps() -> dict:
        rows = (r for c in checkpoint_ids for r in store.evaluations(checkpoint_id=c))
        return {_key(r): str(r["updated"]) for r in rows if _key(r) in planned}

    before = stamps()  # a job is finished once its record is new or rewritten (robust to clocks)

    def finished() -> int:
        return sum(1 for key, stamp in stamps().items() if before.get(key) != stamp)

    tick = lambda: progress and progress(finished())  # noqa: E731
    if req.launcher == "pool":  # harness.app.eval_pool: what survives a dead worker or a killed parent
        from medssl_bench.harness.app.eval_pool import run_pool

        totals = run_pool(specs, jobs, record_dead=lambda *dead: _record_dead(store, *dead), tick=tick)
        tick()
        return totals
    import submitit

    folder = req.workspace.submitit / time.strftime("%Y%m%d-%H%M%S")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm" if req.launcher == "slurm" else "local")
    executor.update_parameters(timeout_min=req.slurm.get("timeout_min", 24 * 60), **_slurm_params(req))
    futures = [executor.submit(run_unit, spec) for spec in specs]
    while not all(j.done() for j in futures):
        time.sleep(1.0)
        tick()
    tick()
    totals = {"done": 0, "failed": 0, "features_computed": 0}
    for outcome in (j.result() for j in futures):
        for k in totals:
            totals[k] += outcome[k]
    return totals


def _record_dead(store, spec: dict, index: int, reason: str, seconds: float, worker: dict) -> None:
    """The pool's report of a worker that died running job `index` of unit `spec`: record it failed."""
    key = spec["keys"][index]
    _, _, config = _job_config(spec, key)
    provenance = {**_job_identity(spec), "seed": key.seed, "protocol": config, "worker": worker}
    store.record_failed(key, reason=reason, protocol=config, provenance=provenance, wall_time_s=seconds)


def _slurm_params(req: EvalRequest) -> dict:
    if req.launcher != "slurm":
        return {}
    params = {"slurm_partition": req.slurm.get("partition")} if req.slurm.get("partition") else {}
    if req.slurm.get("gpus"):
        params["gpus_per_node"] = req.slurm["gpus"]
    return params


def _key(row: dict):
    from medssl_bench.harness.store import EvalKey

    return EvalKey(row["checkpoint_id"], row["task"], row["protocol"], row["label_fraction"], row["seed"])
