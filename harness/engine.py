"""Training engine: an `SSLMethod` trained by mmengine's Runner.

mmengine gives the loop, full checkpoints and resume, parameter schedules, AMP and DDP; this
module adapts a method to it. Three details matter:
- `PretrainModel.train_step` calls the method's `after_backward` between backward and the
  optimizer step (DINO cancels its last-layer gradients there); `MethodDDP` routes DDP through
  the same step so the method behaves identically on one process and many.
- Under DDP, BN statistics are averaged over ranks after every epoch (mmengine's
  SyncBuffersHook), so all ranks hold identical weights; the exported sidecar records a digest
  per rank as proof.
- Views are seeded per (seed, epoch, index) (harness.data), so resume is exact.
- BN statistics within a step are per process unless `sync_bn` (GPU only) makes them global.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from mmengine.hooks import Hook, SyncBuffersHook
from mmengine.model import BaseModel, MMDistributedDataParallel, is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner

from medssl_bench.harness.checkpoint import new_export_id, save_backbone, save_export, state_digest
from medssl_bench.harness.config import scaled_lr
from medssl_bench.harness.data import EpochIndexSampler, ViewsPreprocessor, collate_views
from medssl_bench.harness.errors import CorruptImageError, UserError
from medssl_bench.harness.method_api import SSLMethod, StepInfo
from medssl_bench.harness.torch_compat import trusted_mmengine_checkpoint


class PretrainModel(BaseModel):
    """mmengine model around a method: forward returns the method's losses. `views_plan` (harness.device_views,
    `augment: device`): the batch holds decoded images and view parameters, and the views are made on the device."""

    def __init__(self, method: SSLMethod, views_plan: list | None = None):
        if views_plan:
            from medssl_bench.harness.device_views import DeviceViewsPreprocessor

            preprocessor = DeviceViewsPreprocessor(views_plan)
        else:
            preprocessor = ViewsPreprocessor()
        super().__init__(data_preprocessor=preprocessor)
        self.method = method
        self.step_info = StepInfo()

    def forward(self, inputs: list[torch.Tensor], data_samples=None, mode: str = "loss"):
        return self.method.training_loss(inputs, self.step_info)

    def train_step(self, data: dict, optim_wrapper: OptimWrapper, forward=None) -> dict:
        if "error" in data:  # a file failed to decode in a loader worker
            raise CorruptImageError(data["error"])
        forward = forward or self
        with optim_wrapper.optim_context(forward):
            data = self.data_preprocessor(data, True)
            losses = forward(inputs=data["inputs"], mode="loss")
        loss, log_vars = self.parse_losses(losses)
        optim_wrapper.backward(optim_wrapper.scale_loss(loss))
        self.method.after_backward(self.step_info)
        if optim_wrapper.should_update():
            optim_wrapper.step()
            optim_wrapper.zero_grad()
        return log_vars


@MODEL_WRAPPERS.register_module(force=True)
class MethodDDP(MMDistributedDataParallel):
    """DDP that runs `PretrainModel.train_step`, forwarding through DDP for gradient sync."""

    def train_step(self, data: dict, optim_wrapper: OptimWrapper) -> dict:
        return self.module.train_step(data, optim_wrapper, forward=self)


class BenchRunner(Runner):
    """mmengine's Runner; resuming reads the run's own checkpoint under a scoped allow-list."""

    def resume(self, filename, *args, **kwargs):
        from medssl_bench.harness.run_files import check_resume_checkpoint

        filename = str(check_resume_checkpoint(filename, Path(self.work_dir)))  # damage: one line, not a traceback
        with trusted_mmengine_checkpoint():
            return super().resume(filename, *args, **kwargs)


class RunIdentityHook(Hook):
    """Stamps every full checkpoint with its run's id (run.json `run_id`); a resumed run refuses a
    checkpoint stamped by another run (one copied in by hand), instead of continuing it as its own."""

    def __init__(self, run_name: str, run_id: str | None, resume_from: Path | None = None):
        self.run_name, self.run_id, self.resume_from = run_name, run_id, resume_from

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["meta"]["bench_run"] = {"name": self.run_name, "id": self.run_id}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # checked before anything is written (runs.check_owner); again here, on what is actually loaded
        from medssl_bench.harness.runs import refuse_foreign

        refuse_foreign(checkpoint.get("meta"), self.run_id, self.run_name, self.resume_from)


def unwrap(model) -> PretrainModel:
    return model.module if is_model_wrapper(model) else model


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def leave_distributed() -> None:
    """Leave the process group together, once the caller has dropped its runner. The DDP wrapper's
    reducer holds the process group: with the runner alive, the gloo group outlived
    `destroy_process_group` (checked with a weakref) and was torn down whenever the runner's
    reference cycles were, possibly during interpreter shutdown, when gloo's threads can no longer
    take the GIL. Collecting first frees it here. A rank aborting at exit ("terminate called
    without an active exception") after a finished run failed 2-rank CI runs."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class MethodHook(Hook):
    """Tells the method where training is, and runs its post-step hook (EMA updates)."""

    priority = "ABOVE_NORMAL"

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        unwrap(runner.model).step_info = StepInfo(runner.epoch, runner.iter, runner.max_iters, runner.max_epochs)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = unwrap(runner.model)
        model.method.after_step(model.step_info)


def training_batches(runner, model: PretrainModel):
    """A fresh pass over this process's training batches, preprocessed as `training_loss` gets them (the
    sampler's current epoch: the same batches in a resumed run)."""
    for data in runner.train_dataloader:
        if "error" in data:
            raise CorruptImageError(data["error"])
        yield model.data_preprocessor(data, False)["inputs"]


class RunRecordHook(Hook):
    """Writes metrics.jsonl every step and exports the backbone (+ the method's further exports) + sidecar
    every epoch.

    Also stops training after `stop_after_epoch` epochs (a full checkpoint is still saved),
    which is how a run is split into resumable pieces on preemptible machines.
    """

    priority = "LOW"  # after SyncBuffersHook (NORMAL), so exported BN statistics are synced

    def __init__(self, run_dir: Path, sidecar: dict, stop_after_epoch: int | None = None):
        self.run_dir = run_dir
        self.sidecar = sidecar
        self.stop_after_epoch = stop_after_epoch
        self.metrics_path = run_dir / "metrics.jsonl"
        self._last = time.perf_counter()
        self.last_loss: float | None = None
        self.steps = 0  # steps run by this process (a resumed run counts from its restart)

    def before_train(self, runner):
        self._last = self._started = time.perf_counter()
        # a resumed run's earlier sessions count towards its compute (run.json keeps their total)
        record = self.run_dir / "run.json"
        self._earlier_seconds = json.loads(record.read_text()).get("wall_seconds", 0.0) if record.is_file() else 0.0
        if is_main_process() and self.metrics_path.exists():
            from medssl_bench.harness.run_files import keep_metrics_until

            # A resumed run restarts after its last full checkpoint: drop steps past it (and a line cut by a kill).
            keep_metrics_until(self.metrics_path, runner.iter, note=runner.logger.warning)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        now = time.perf_counter()
        values = {k: float(v.detach()) for k, v in (outputs or {}).items()}
        self.last_loss = values.get("loss")
        self.steps += 1
        if is_main_process():
            row = {"step": runner.iter + 1, "epoch": runner.epoch + 1, **values,
                   "lr": runner.optim_wrapper.get_lr()["lr"][0], "seconds": round(now - self._last, 5)}
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        self._last = now

    def after_train_epoch(self, runner):
        model = unwrap(runner.model)
        epochs_done = runner.epoch + 1
        digests = [state_digest(model.method.backbone)]
        if world_size() > 1:
            gathered: list[Any] = [None] * world_size()
            dist.all_gather_object(gathered, digests[0])
            digests = gathered
        exported = model.method.export(lambda: training_batches(runner, model))  # every rank: it may sync BN
        if is_main_process():
            seconds = self._earlier_seconds + time.perf_counter() - self._started
            sidecar = {**self.sidecar, "epoch": epochs_done, "step": runner.iter + 1, "wall_seconds": round(seconds, 2),
                       "world_size": world_size(),
                       "ddp": {"world_size": world_size(), "rank_digests": digests,
                               "in_sync": len(set(digests)) == 1}}
            export_id = new_export_id()  # one per epoch's files: a crash between them leaves a visible mismatch
            extra = {name: save_export(module, self.run_dir / f"{name}.safetensors", export_id)
                     for name, module in exported.items() if name != "backbone"}
            if extra:  # written first, so the sidecar names only files that exist
                sidecar["exports"] = extra
            save_backbone(exported["backbone"], self.run_dir / "backbone.safetensors", sidecar, export_id)
        if self.stop_after_epoch is not None and epochs_done >= self.stop_after_epoch:
            runner.train_loop.stop_training = True


class ProgressHook(Hook):
    """Reports every training step to `progress(steps_done, steps_total, description=, stats=)`
    (harness.progress: the caller decides how to show it; the CLI draws one rich bar)."""

    priority = "VERY_LOW"

    def __init__(self, progress, label: str, batch_size: int):
        self.progress = progress
        self.label = label
        self.batch_size = batch_size

    def before_train(self, runner):
        self.start = (time.perf_counter(), runner.iter)  # a resumed run counts its rate from here
        self.progress(runner.iter, runner.max_iters, description=self.label, stats="")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        seconds, first_iter = time.perf_counter() - self.start[0], self.start[1]
        rate = (runner.iter + 1 - first_iter) * self.batch_size / max(seconds, 1e-9)
        loss = float(outputs["loss"].detach()) if outputs else float("nan")
        stats = f"epoch {runner.epoch + 1}/{runner.max_epochs}  loss {loss:.4f}  {rate:.1f} img/s"
        self.progress(runner.iter + 1, runner.max_iters, stats=stats)


def build_optim_wrapper(model: torch.nn.Module, cfg: dict) -> OptimWrapper:
    """The optimizer named by cfg; biases and norm parameters get no weight decay (as in the
    SimCLR/BYOL/DINO recipes)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    lr, name = scaled_lr(cfg), cfg["optimizer"]
    if name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"])
    elif name == "lars":
        from lightly.utils.lars import LARS

        optimizer = LARS(groups, lr=lr, momentum=cfg["momentum"])
    elif name == "adam":
        optimizer = torch.optim.Adam(groups, lr=lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr)
    extra = {"clip_grad": {"max_norm": cfg["clip_grad"]}} if cfg.get("clip_grad") else {}
    if cfg.get("amp"):
        if not torch.cuda.is_available():
            raise UserError("--amp needs a CUDA GPU (mixed precision is not used on CPU)")
        # bf16 has float32's range: no loss scaling (a GradScaler would add a host sync per step)
        return AmpOptimWrapper(optimizer=optimizer, dtype="bfloat16", loss_scale={"enabled": False}, **extra)
    return OptimWrapper(optimizer=optimizer, **extra)


def param_schedulers(cfg: dict) -> list[dict]:
    """Linear warm-up, then cosine decay or step decay, stepped every iteration."""
    warmup, epochs = cfg["warmup_epochs"], cfg["epochs"]
    schedulers = []
    if warmup > 0:
        schedulers.append(dict(type="LinearLR", start_factor=1e-3, by_epoch=True, begin=0, end=warmup,
                               convert_to_iter_based=True))
    if cfg["lr_schedule"] == "step":
        milestones = cfg["lr_milestones"] or [round(epochs * k / 5) for k in range(1, 5)]
        schedulers.append(dict(type="MultiStepLR", milestones=list(milestones), gamma=cfg["lr_gamma"], by_epoch=True,
                               begin=warmup, end=epochs, convert_to_iter_based=True))
    else:
        schedulers.append(dict(type="CosineAnnealingLR", T_max=epochs - warmup, by_epoch=True, begin=warmup,
                               end=epochs, eta_min=scaled_lr(cfg) * cfg["min_lr_ratio"], convert_to_iter_based=True))
    return schedulers


class QuietMMEngine(logging.Filter):
    """Drops mmengine/mmseg/mmdet messages that say nothing about a run: mmseg infers a batch of
    differently sized images fine (each prediction is resized back to its own image); a detector
    with no detection yet (an early epoch) scores AP 0, which mmdet's CocoMetric logs as an error."""

    BENIGN = ("has no metainfo", '"FileClient" will be deprecated', '"HardDiskBackend" is the alias',
              "Image shapes are different in the batch", "The testing results of the whole dataset is empty")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.BENIGN)


def check_sync_bn(cfg: dict) -> None:
    """`sync_bn` under DDP needs GPUs: torch's SyncBatchNorm raises in its forward on CPU (gloo)."""
    if cfg.get("sync_bn") and world_size() > 1 and not torch.cuda.is_available():
        raise UserError("sync_bn needs CUDA GPUs: torch's SyncBatchNorm does not run on CPU processes (gloo); "
                        "drop --set sync_bn=true")


def sync_batchnorm(model: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    """With `sync_bn` under DDP, every BatchNorm becomes a SyncBatchNorm (batch statistics over all processes,
    as one large batch); without DDP, or by default, BN keeps per-process statistics. Done before the DDP
    wrap and the optimizer; parameters and buffers keep their names, so the exported backbone is unchanged."""
    check_sync_bn(cfg)
    if not cfg.get("sync_bn") or world_size() <= 1:
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def speed_options(model: PretrainModel, cfg: dict) -> None:
    """`channels_last`: every 4-D weight of the method in NHWC order; a convolution whose weight is channels_last
    returns channels_last maps, so the views need no conversion. `compile`: every ResNet copy in the method (student,
    momentum and teacher copies) compiled in place; its losses and heads stay eager (LVM-Med's solver, DINO's
    centring: Python and graph breaks for little arithmetic). Neither changes a parameter's name or value."""
    if cfg.get("channels_last"):
        model.method.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        from torchvision.models import ResNet

        from medssl_bench.harness.backbones import compile_resnet

        for module in model.method.modules():
            if isinstance(module, ResNet):
                compile_resnet(module)


def build_runner(model: PretrainModel, dataset, cfg: dict, run_dir: Path, *, resume: Path | bool | None,
                 num_workers: int, hooks: list[Hook], sampler: dict | None = None) -> BenchRunner:
    """`resume`: the run's own full checkpoint to continue from, named explicitly (mmengine's auto-resume
    would follow train/last_checkpoint's absolute path, possibly into another run's folder); None/False:
    a fresh start. `sampler`: an mmengine sampler config yielding (epoch, index); default a seeded shuffle."""
    distributed = world_size() > 1
    cuda = torch.cuda.is_available()
    model = sync_batchnorm(model, cfg)
    speed_options(model, cfg)
    collate = collate_views
    if cfg.get("augment") == "device":  # decoded images of any size + parameters (harness.device_views)
        from medssl_bench.harness.device_views import collate_device_views as collate
    per_rank_batch = cfg["batch_size"] // world_size()
    wrapper = None
    if distributed:
        device_ids = [int(os.environ.get("LOCAL_RANK", "0"))] if cuda else None
        wrapper = dict(type="MethodDDP", device_ids=device_ids, broadcast_buffers=False)
        hooks = [SyncBuffersHook(), *hooks]
    runner = BenchRunner(
        model=model,
        work_dir=str(run_dir / "train"),
        # unique per Runner: mmengine keys its global logger/visualizer instances on this name
        experiment_name=f"{run_dir.name}-{time.strftime('%Y%m%d_%H%M%S')}-{uuid.uuid4().hex[:6]}",
        train_dataloader=dict(
            dataset=dataset,
            sampler=sampler or dict(type=EpochIndexSampler, shuffle=True, seed=cfg["seed"]),
            collate_fn=collate,
            batch_size=per_rank_batch,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=cuda,
            drop_last=True,
        ),
        train_cfg=dict(by_epoch=True, max_epochs=cfg["epochs"]),
        optim_wrapper=build_optim_wrapper(model, cfg),
        param_scheduler=param_schedulers(cfg),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=50),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=2, save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        custom_hooks=hooks,
        launcher="pytorch" if distributed else "none",
        cfg=dict(model_wrapper_cfg=wrapper),  # mmengine reads the DDP wrapper from its config
        env_cfg=dict(cudnn_benchmark=cuda, dist_cfg=dict(backend="nccl" if cuda else "gloo")),
        randomness=dict(seed=cfg["seed"]),
        load_from=str(resume) if resume else None,
        resume=bool(resume),
        log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        default_scope="mmengine",
    )
    runner.logger.addFilter(QuietMMEngine())
    return runner
