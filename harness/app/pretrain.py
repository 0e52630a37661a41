"""`bench pretrain`: resolve config, corpus and run directory, then train with the engine.

The same code runs as one process or under `torchrun` (DDP): rank 0 resolves names and writes
records, every rank trains.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

from medssl_bench.harness.config import BENCHMARK, INIT_NONE, INIT_REQUIRED, profile_label
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.progress import Progress
from medssl_bench.harness.names import check_name
from medssl_bench.harness.runlock import RunLock
from medssl_bench.harness.runs import (BACKBONE_FILE, check_owner, find_run, latest_resumable, new_run_name,
                                       own_checkpoint, read_run, update_run)
from medssl_bench.harness.workspace import Workspace

# torchvision's ImageNet-1K weights (IMAGENET1K_V1), from https://download.pytorch.org/models/<file>
TORCHVISION_IMAGENET = {"resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth"}


@dataclass
class PretrainRequest:
    method: str
    profile: str = "quick"
    corpus: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # typed CLI options (None = not given)
    sets: dict[str, str] = field(default_factory=dict)  # --set KEY=VALUE
    workspace: Workspace = field(default_factory=Workspace.resolve)
    name: str | None = None
    resume: bool = False
    stop_after_epoch: int | None = None
    num_workers: int | None = None
    hooks: list = field(default_factory=list)  # extra mmengine hooks (a sweep's scoring/pruning hook)
    run_fields: dict[str, Any] = field(default_factory=dict)  # extra run.json fields (a sweep's trial)
    data_root: Path | None = None  # where --labels-from finds prepared datasets (default WORKSPACE/data)
    say: Callable[[str], None] = print  # notices on the main process (a stale lock taken over)


def _main_first(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 and hand its (picklable) result to every rank."""
    from medssl_bench.harness.engine import is_main_process, world_size

    if world_size() == 1:
        return fn()
    box: list[Any] = [None]
    if is_main_process():
        try:
            box[0] = fn()
        except UserError as err:
            box[0] = err
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], UserError):
        raise box[0]
    return box[0]


def _resolve_run(req: PretrainRequest, method_cls) -> tuple[Path, dict, Path | None]:
    """(run dir, resolved config, the run's own checkpoint when resuming) — the stored config when resuming."""
    from medssl_bench.harness.config import resolve_config

    asked = resolve_config(method_cls, req.profile, req.overrides, req.sets)
    if req.name is not None:
        check_name(req.name)  # a folder inside runs/, never a path
    if not req.resume:
        name = req.name or new_run_name(req.method, asked["backbone"])
        run_dir = req.workspace.runs / name
        if run_dir.exists():
            raise _name_taken(req, name)
        return run_dir, asked, None
    run_dir = find_run(req.workspace, req.name) if req.name else latest_resumable(req.workspace, asked)
    if run_dir is None:
        raise UserError("--resume: no unfinished run with this configuration; name one with --name "
                        "(`bench runs` lists them)")
    record = read_run(run_dir)
    if record.get("status") == "done":
        raise UserError(f"run '{run_dir.name}' already finished all {record['config']['epochs']} epochs")
    own = own_checkpoint(run_dir)
    check_owner(own, record)
    stored = record["config"]
    given = {k for k, v in req.overrides.items() if v is not None} | set(req.sets)
    changed = sorted(k for k in given if k in stored and asked.get(k) != stored[k])
    if record.get("method") != req.method or changed:
        what = ", ".join(f"{k}={stored[k]!r}" for k in changed) or f"method={record.get('method')}"
        raise UserError(f"run '{run_dir.name}' was started with {what}; a resumed run keeps its configuration")
    return run_dir, stored, own


def _name_taken(req: PretrainRequest, name: str) -> UserError:
    return UserError(f"run '{name}' already exists in {req.workspace.runs}; choose another --name, "
                     "or pass --resume to continue it")


def _labelled_data(req: PretrainRequest, method_cls, cfg: dict, run_dir: Path, resuming: bool):
    """The --labels-from datasets of a label-using method (harness.app.labelled), else None."""
    if not method_cls.uses_labels:
        if cfg.get("labels_from"):
            raise UserError(f"method '{req.method}' pretrains without labels; drop --labels-from")
        return None
    from medssl_bench.harness.app.labelled import DEFAULT_POLICY, load_labelled

    if req.corpus:
        raise UserError(f"method '{req.method}' pretrains on --labels-from datasets, not on a corpus; drop --corpus")
    policy = {key: cfg[key] for key in DEFAULT_POLICY if key in cfg}  # the method's uncertain/missing-label keys
    labelled = load_labelled(cfg.get("labels_from"), req.workspace.data_root(req.data_root), cfg["image_size"],
                             cfg["batch_size"], req.method, policy, cfg["seed"])
    if resuming and read_run(run_dir)["corpus"]["id"] != labelled.corpus_info["id"]:
        raise UserError(f"run '{run_dir.name}': its --labels-from datasets changed since it started; "
                        "a resumed run keeps its data")
    return labelled


def require_init(cfg: dict, workspace: Workspace) -> None:
    """A profile that starts from pretrained weights (init INIT_REQUIRED: a paper that did, or the benchmark
    budget) runs only once the user names them (--init PATH) or chooses random weights (--init none, which
    the run records as a change of its profile); checked before anything is written."""
    if cfg["init"] != INIT_REQUIRED:
        return
    weights = TORCHVISION_IMAGENET.get(cfg["backbone"], f"{cfg['backbone']}-*.pth")
    name = f"imagenet-{cfg['backbone']}"
    why = "as every method of the benchmark budget" if cfg["profile"] == BENCHMARK else "as its paper"
    raise UserError(f"profile '{cfg['profile']}' of {cfg['method']} starts from ImageNet-1K weights, {why}: "
                    f"import torchvision's once with `bench import-checkpoint {weights} --name {name} --workspace "
                    f"{workspace.root}` (https://download.pytorch.org/models/{weights}), then pass --init "
                    f"{workspace.checkpoints / name / BACKBONE_FILE}; or pass --init none to train from random weights")


def budget(cfg: dict, sizes: list[int], init_info) -> dict:
    """What the run is given to learn from, comparable across methods: images seen = epochs x whole batches
    per epoch x batch (a partial last batch is dropped; labelled sets: per set), at what size, from which
    weights (their sha256)."""
    per_epoch = sum(n // cfg["batch_size"] * cfg["batch_size"] for n in sizes)
    init = init_info.get("sha256") if isinstance(init_info, dict) else init_info
    return {"backbone": cfg["backbone"], "image_size": cfg["image_size"], "init": init or "none",
            "epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "images_per_epoch": per_epoch,
            "images_seen": cfg["epochs"] * per_epoch}


def load_init(backbone, cfg: dict) -> dict:
    """Start from a bench backbone checkpoint (strictly the same architecture); returns its identity."""
    from medssl_bench.harness.checkpoint import load_backbone_state
    from medssl_bench.harness.fsutil import sha256_file

    state, meta = load_backbone_state(cfg["init"])
    if meta.get("backbone") not in (None, cfg["backbone"]):
        raise UserError(f"--init holds a {meta['backbone']} backbone, but this run trains {cfg['backbone']}",
                        cfg["init"])
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"--init does not fit {cfg['backbone']}: {len(missing)} missing keys "
                        f"(e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})", cfg["init"])
    return {"path": str(cfg["init"]), "sha256": sha256_file(cfg["init"]), "name": meta.get("name"),
            "method": meta.get("method"), "run": meta.get("run")}


def run_pretraining(req: PretrainRequest, progress: Progress | None = None) -> Path | None:
    """Train; return the run folder on the main process (None on other DDP ranks). The main process
    reports every step to `progress(steps_done, steps_total, description=, stats=)`. Only the main process
    locks the run (harness.runlock) and writes its records."""
    from medssl_bench.harness.corpus import resolve_corpus
    from medssl_bench.harness.packed_reader import packed_for_run
    from medssl_bench.harness.data import balances_datasets, epoch_shares
    from medssl_bench.harness.backbones import check_compile
    from medssl_bench.harness.engine import check_sync_bn, init_distributed, is_main_process, world_size
    from medssl_bench.harness.provenance import code_version, host_info, package_versions
    from medssl_bench.methods import get_method

    init_distributed()
    main = is_main_process()
    if main:
        req.workspace.writable()
    method_cls = get_method(req.method)
    run_dir, cfg, resuming = _main_first(lambda: _resolve_run(req, method_cls))
    require_init(cfg, req.workspace)
    labelled = _labelled_data(req, method_cls, cfg, run_dir, resuming)
    entries = None
    if labelled is None:
        corpus_ref = read_run(run_dir)["corpus"]["id"] if resuming else req.corpus
        if not corpus_ref:
            raise UserError("--corpus is required: a corpus id from `bench corpus build`, a manifest.jsonl, "
                            "or a folder of images")
        corpus_id = _main_first(lambda: resolve_corpus(corpus_ref, req.workspace).id)
        corpus = resolve_corpus(corpus_id, req.workspace)
        entries = corpus.entries
        if cfg["batch_size"] > len(entries):
            raise UserError(f"--batch-size {cfg['batch_size']} is larger than corpus {corpus.id} "
                            f"({len(entries)} images); lower --batch-size or add images")
        corpus_info = {"id": corpus.id, "n_images": len(entries), "synthetic": corpus.info.get("synthetic")}
        packed = packed_for_run(corpus, cfg["image_size"], read_run(run_dir)["corpus"] if resuming else None)
        if packed is not None:  # decoded once by `bench corpus pack`: the run reads its shards
            corpus_info["packed"] = packed
        shares = epoch_shares(entries, cfg)  # checks dataset_weights' names before a run folder exists
        if shares is not None:
            corpus_info["epoch_shares"] = shares
    else:
        if balances_datasets(cfg):
            raise UserError("dataset_balance / dataset_weights apply to a corpus; a label-using method visits "
                            "its --labels-from datasets in turn, one whole pass each")
        corpus_info = labelled.corpus_info
    if cfg["batch_size"] % world_size():
        raise UserError(f"--batch-size {cfg['batch_size']} must divide evenly over {world_size()} processes")
    method_cls.check_config(cfg, world_size())
    check_sync_bn(cfg)
    check_compile(cfg)

    if cfg["init"] and cfg["init"] != INIT_NONE:
        cfg["init"] = str(Path(cfg["init"]).resolve())
        if not Path(cfg["init"]).is_file():  # checked before a run folder exists
            raise UserError("--init checkpoint not found", cfg["init"])
    provenance = {**code_version(), "versions": package_versions(), "host": host_info()}
    labels_info = {"category": "supervised", "labels_consumed": labelled.consumed} if labelled else {}
    fields = dict(status="running", method=req.method, backbone=cfg["backbone"], profile=cfg["profile"],
                  config=cfg, corpus=corpus_info, provenance=provenance, world_size=world_size(),
                  backbone_path=str(run_dir / BACKBONE_FILE), **labels_info, **req.run_fields)
    lock, run_id = _main_first(lambda: _claim_run(req, run_dir, resuming, fields))
    try:
        with _terminate_as_interrupt():
            return _train(req, progress, method_cls, cfg, run_dir, resuming, run_id, labelled, entries,
                          corpus_info, provenance, labels_info)
    finally:
        if main:
            lock.release()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), recorded as `interrupted` as Ctrl-C is."""


@contextmanager
def _terminate_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    owner = os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:  # a forked loader worker: die as SIGTERM would have it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _claim_run(req: PretrainRequest, run_dir: Path, resuming: Path | None, fields: dict) -> tuple[RunLock, str]:
    """Create (a new run: exclusively) and lock the run folder, then record the run as running; returns the
    lock and the run's id, which stamps its checkpoints."""
    try:
        run_dir.mkdir(parents=True, exist_ok=bool(resuming))
    except FileExistsError:  # another process started a run of this name since _resolve_run
        raise _name_taken(req, run_dir.name) from None
    lock = RunLock.acquire(run_dir, req.say)
    try:
        record = read_run(run_dir) if resuming else {}
        run_id = record.get("run_id") or uuid.uuid4().hex
        if not resuming:
            fields.update(name=run_dir.name, created=time.strftime("%Y-%m-%dT%H:%M:%S"), epochs_done=0,
                          wall_seconds=0.0)
        elif record.get("name") != run_dir.name:  # a copied or renamed run folder continues under its own name
            fields.update(name=run_dir.name, earlier_names=[*record.get("earlier_names", []), record.get("name")])
        update_run(run_dir, run_id=run_id, **fields)
    except BaseException:
        lock.release()
        raise
    return lock, run_id


def corpus_views(entries: list[dict], packed: dict | None, device_views: bool = False) -> Callable:
    """ViewsDataset over the corpus: image k read from the packed shards when there are some, else decoded
    from entry k's source file. Device views take the packed pixels as stored (no PIL image is made)."""
    from medssl_bench.harness.data import ViewsDataset

    if packed is None:
        return partial(ViewsDataset, entries)
    from medssl_bench.harness.packed_reader import PackedImages

    images = PackedImages(packed["folder"])
    return partial(ViewsDataset, range(len(entries)), loader=images.pixels if device_views else images.rgb)


def _train(req, progress, method_cls, cfg, run_dir, resuming, run_id, labelled, entries, corpus_info, provenance,
           labels_info) -> Path | None:
    from mmengine.runner import set_random_seed

    from medssl_bench.harness.backbones import build_backbone
    from medssl_bench.harness.config import build_transform, method_kwargs
    from medssl_bench.harness.device_views import DeviceViewsTransform, check_device_views
    from medssl_bench.harness.data import corpus_sampler, default_num_workers
    from medssl_bench.harness.engine import (MethodHook, PretrainModel, ProgressHook, RunIdentityHook, RunRecordHook,
                                             build_runner, is_main_process, leave_distributed, world_size)

    main = is_main_process()
    set_random_seed(cfg["seed"])  # the same initial weights on every rank and every run
    backbone, feat_dim = build_backbone(cfg["backbone"])
    # before the method copies the backbone (EMA teachers); "none (chosen)": random weights by the user's choice
    init_info = "none (chosen)" if cfg["init"] == INIT_NONE else load_init(backbone, cfg) if cfg["init"] else None
    kwargs = {**method_kwargs(method_cls, cfg), **({"labels": labelled.layout} if labelled else {})}
    plan = check_device_views(method_cls, cfg)  # augment "device": workers decode and draw, the device makes views
    model = PretrainModel(method_cls(backbone, feat_dim, **kwargs), plan)
    make_views = labelled.views if labelled else corpus_views(entries, corpus_info.get("packed"), plan is not None)
    transform, n_image_views = (DeviceViewsTransform(plan), 0) if plan else build_transform(method_cls, cfg)
    dataset = make_views(transform, seed=cfg["seed"], n_image_views=n_image_views)
    # profile: what the leaderboard ranks the row under (harness.config.profile_label); budget: what it was given
    sidecar = {"method": req.method, "backbone": cfg["backbone"], "profile": profile_label(cfg), "config": cfg,
               "budget": budget(cfg, getattr(dataset, "sizes", [len(dataset)]), init_info), "seed": cfg["seed"],
               "corpus": corpus_info, "init": init_info, "run": run_dir.name, "git_sha": provenance["git_sha"],
               "dirty": provenance["dirty"], "versions": provenance["versions"], "host": provenance["host"],
               **labels_info}
    record_hook = RunRecordHook(run_dir, sidecar, req.stop_after_epoch)
    hooks = [MethodHook(), record_hook, RunIdentityHook(run_dir.name, run_id, resuming), *req.hooks]
    if main and progress:
        hooks.append(ProgressHook(progress, f"{req.method} {cfg['backbone']}", cfg["batch_size"]))
    workers = req.num_workers if req.num_workers is not None else (
        cfg["num_workers"] if cfg["num_workers"] >= 0 else default_num_workers())
    sampler = labelled.sampler(cfg["batch_size"] // world_size(), cfg["seed"]) if labelled else \
        corpus_sampler(entries, cfg)
    runner = build_runner(model, dataset, cfg, run_dir, resume=resuming, num_workers=workers, hooks=hooks,
                          sampler=sampler)

    started = time.perf_counter()
    status, error = "failed", None
    try:
        runner.train()
        status = "done" if runner.epoch >= cfg["epochs"] else "stopped"
    except UserError as err:
        error = str(err)
        raise
    except KeyboardInterrupt as err:
        status = "interrupted"
        error = "stopped by SIGTERM" if isinstance(err, Terminated) else "interrupted by the user"
        raise
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        if main:
            seconds = time.perf_counter() - started
            total = read_run(run_dir).get("wall_seconds", 0.0) + seconds
            update_run(run_dir, status=status, error=error, epochs_done=runner.epoch, last_loss=record_hook.last_loss,
                       images_per_second=round(record_hook.steps * cfg["batch_size"] / max(seconds, 1e-9), 2),
                       wall_seconds=round(total, 2), device_hours=round(total * world_size() / 3600, 5),
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if world_size() > 1 and status != "failed":
            del runner  # leave_distributed frees the DDP wrapper before the group goes
            leave_distributed()
    return run_dir if main else None
