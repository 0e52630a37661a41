"""`bench sweep`: an Optuna study over a method's search space, with an explicit, equal budget.

A trial pretrains with hyperparameters sampled from the method's `search_space` (declared next to
its code), scores the backbone on the *validation* splits of the chosen classification tasks every
`report_every` epochs (Optuna's median pruner stops trials that trail), and returns the objective:

    mean over tasks of (val score - random-init val score) / (1 - random-init val score)

the share of the headroom above a random backbone that pretraining gains (1 = perfect, 0 = no better
than random init, negative = worse). Scores are kNN (default) or linear-probe accuracy, fitted on
train and selected on val. Test splits are never read: each task's data is sealed (its test samples
removed) before the sweep sees it; only the best trial's checkpoint meets test, once, via `bench eval`.

Workers (local processes, or other machines pointing at the same --storage) claim trials under a
storage-wide lock, so a study of N trials runs exactly N however many join. Each running trial
sends a heartbeat; a later worker fails a silent trial (its worker was killed) and retries its
parameters (Optuna's RetryHeartbeatStaleTrialCallback), so re-running the command resumes a study.
"""
from __future__ import annotations

import fcntl
import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.names import MAX_NAME, check_name
from medssl_bench.harness.workspace import Workspace

SCORING = ("knn", "linear")
# settings every trial of a study shares (--trials may grow between runs: the study continues)
STUDY_KEYS = ("method", "profile", "tasks", "scoring", "epochs", "corpus")


@dataclass
class SweepRequest:
    method: str
    trials: int
    corpus: str
    workspace: Workspace
    tasks: list[str] = field(default_factory=lambda: ["brain_tumor", "fgadr"])
    scoring: str = "knn"
    profile: str = "quick"
    epochs: int | None = None          # None: the profile's
    storage: str | None = None         # None: sqlite file in the workspace
    study: str | None = None           # None: "{method}-{profile}"
    workers: int = 1
    report_every: int = 1
    seed: int = 0
    heartbeat: int = 20                # seconds; a trial silent for 3 heartbeats is failed and retried
    data_root: Path | None = None
    db: str | None = None              # results store for the final test evaluation
    final_seeds: int = 3
    final_eval: bool = True
    final_protocols: list[str] | None = None  # None: each task's standard protocols

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage(self.workspace)

    @property
    def study_name(self) -> str:
        return self.study or f"{self.method}-{self.profile}"


def default_storage(workspace: Workspace) -> str:
    """The Optuna storage URL of a workspace's sweeps when --storage is not given."""
    return f"sqlite:///{workspace.sweeps_db}"


def redact(url: str) -> str:
    """A storage URL without its password (it goes into run records and the results store)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ----------------------------------------------------------------------------- storage
def open_study(url: str, name: str, *, heartbeat: int = 20, create: bool = False, seed: int = 0):
    import warnings

    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and stale-trial retries are marked experimental; they are what makes resuming work
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                             grace_period=3 * heartbeat,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as err:  # a bad URL, a server that is not there
        raise UserError(f"cannot open the sweep storage {redact(url)}: {type(err).__name__}: {err}") from None
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if create:
        return optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                   pruner=pruner, load_if_exists=True)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise UserError(f"no study '{name}' in {redact(url)} (studies: {known})") from None


@contextmanager
def study_lock(url: str, name: str):
    """One claimer at a time per study: a PostgreSQL advisory lock, or a file lock beside SQLite."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") & 0x7FFFFFFF
    if url.startswith("postgresql"):
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        engine = sa.create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
    elif url.startswith("sqlite:///"):
        with open(f"{url[len('sqlite:///'):]}.{key:08x}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        raise UserError(f"--storage {redact(url)}: use sqlite:///FILE or postgresql://USER@HOST/DB")


def claim_trial(study, url: str, target: int):
    """The next trial to run, or None when the study has `target` live or finished trials."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    with study_lock(url, study.study_name):
        fail_stale_trials(study)  # trials of killed workers -> FAIL, their parameters re-queued
        states = [t.state for t in study.get_trials(deepcopy=False)]
        counted = sum(s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
                      for s in states)
        if TrialState.WAITING in states or counted < target:
            trial = study.ask()
            # Beat at once, still under the lock: optuna fails only trials with a lapsed heartbeat, so a
            # worker killed between ask() and its first beat would leave a RUNNING trial that no one
            # ever fails, and every later worker would wait for it forever.
            record_heartbeat(study, trial)
            return trial
    return None


def record_heartbeat(study, trial) -> None:
    """One heartbeat of a running trial (RDBStorage API: ask/tell sends none)."""
    study._storage.record_heartbeat(trial._trial_id)


class Heartbeat:
    """Records a running trial's heartbeat in the storage until stopped."""

    def __init__(self, study, trial, interval: int):
        self._stop = threading.Event()
        beat = lambda: record_heartbeat(study, trial)  # noqa: E731
        beat()
        self._thread = threading.Thread(target=self._run, args=(beat, interval), daemon=True)
        self._thread.start()

    def _run(self, beat, interval):
        while not self._stop.wait(interval):
            beat()

    def stop(self):
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- scoring
def sealed_tasks(req: SweepRequest) -> list[tuple]:
    """(task, scoring protocol, data without its test split) for each sweep task."""
    from medssl_bench.downstream.families import get_family
    from medssl_bench.downstream.registry import get_task

    if req.scoring not in SCORING:
        raise UserError(f"--scoring {req.scoring}: choose one of {', '.join(SCORING)}")
    root = req.workspace.data_root(req.data_root)
    out = []
    for name in req.tasks:
        task = get_task(name)
        if task.family != "classification":
            raise UserError(f"--task {name}: sweeps score classification tasks (kNN / linear probe on val); "
                            f"{name} is {task.family}")
        folder = root / task.dataset
        try:
            data = get_family(task.family).load(folder)
        except UserError as err:
            raise UserError(f"{err}; prepare it with: bench data prepare {task.dataset} --src DIR") from None
        sealed = replace(data, samples=[s for s in data.samples if s.split != "test"])
        out.append((task, task.protocol(req.scoring, req.profile), sealed))
    return out


def score_backbone(backbone, tasks: list[tuple], baseline: dict[str, float] | None, seed: int) -> tuple[float, dict]:
    """(mean normalised val score, raw val score per task) of a backbone."""
    from medssl_bench.downstream.classification import validation_score
    from medssl_bench.harness.devices import default_device

    device = default_device()
    raw = {task.name: validation_score(backbone, data, protocol, seed, device) for task, protocol, data in tasks}
    if baseline is None:
        return float("nan"), raw
    gains = [(raw[t] - baseline[t]) / max(1.0 - baseline[t], 1e-6) for t in raw]
    return sum(gains) / len(gains), raw


def random_init_scores(tasks: list[tuple], backbone: str, seed: int) -> dict[str, float]:
    from medssl_bench.downstream.classification import build_encoder
    from medssl_bench.harness.checkpoint_index import random_checkpoint

    return score_backbone(build_encoder(random_checkpoint(backbone), seed), tasks, None, seed)[1]


def prepare_study(req: SweepRequest) -> dict:
    """Check the request, create (or join) the study, record its settings and the random-init
    baseline once. Joining a study with other settings is refused: its trials would not compare."""
    from medssl_bench.harness.config import INIT_REQUIRED, resolve_config
    from medssl_bench.harness.corpus import resolve_corpus
    from medssl_bench.methods import get_method

    # a trial's run is named sweep-STUDY-tNNNN: leave room for the prefix and the trial number
    check_name(req.study_name, "--study", max_len=MAX_NAME - len("sweep--t00000"))
    method = get_method(req.method)
    if method.uses_labels:
        raise UserError(f"method '{req.method}' pretrains on labelled datasets (--labels-from); sweeps tune "
                        "methods that pretrain on a corpus")
    if not method.search_space:
        raise UserError(f"method '{req.method}' declares no search space (methods/{req.method}.py: search_space)")
    if req.trials < 1 or req.workers < 1 or req.report_every < 1:
        raise UserError("--trials, --workers and --report-every must be at least 1")
    cfg = resolve_config(method, req.profile, {"epochs": req.epochs}, {})
    if cfg["init"] == INIT_REQUIRED:  # every trial would stop at it (harness.app.pretrain.require_init)
        raise UserError(f"profile '{req.profile}' of {req.method} starts from pretrained weights (--init), which "
                        "sweeps do not take; sweep another profile")
    req.epochs = cfg["epochs"]
    req.corpus = resolve_corpus(req.corpus, req.workspace).id
    tasks = sealed_tasks(req)
    settings = {"method": req.method, "profile": req.profile, "tasks": list(req.tasks), "scoring": req.scoring,
                "epochs": req.epochs, "trials": req.trials, "corpus": req.corpus}
    study = open_study(req.storage_url, req.study_name, heartbeat=req.heartbeat, create=True, seed=req.seed)
    with study_lock(req.storage_url, req.study_name):
        recorded = {k: study.user_attrs[k] for k in STUDY_KEYS if k in study.user_attrs}
        if recorded and recorded != {k: settings[k] for k in STUDY_KEYS}:
            diff = ", ".join(f"{k}={recorded.get(k)!r}" for k in STUDY_KEYS if recorded.get(k) != settings[k])
            raise UserError(f"study '{req.study_name}' in {redact(req.storage_url)} was created with {diff}; "
                            "name another --study to change settings")
        for key, value in settings.items():
            study.set_user_attr(key, value)
        if "random_init_val" not in study.user_attrs:
            study.set_user_attr("random_init_val", random_init_scores(tasks, cfg["backbone"], req.seed))
    return settings
