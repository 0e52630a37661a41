"""Supervised fine-tuning through mmengine's Runner, shared by every downstream family.

`fit_best_on_val` trains with the paper's recipe (Adam, gradient-norm clip 1, LVM-Med App. B),
validates every epoch, keeps the weights of the epoch with the best validation score (the
paper's repo tests its best-val checkpoint) and scores that epoch on val and test.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
import tempfile
import uuid
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.runner import Runner

from medssl_bench.harness.data import derived_seed
from medssl_bench.harness.provenance import available_cpus


TEST_EPOCHS = ("best_val", "last")


class KeepBestHook(Hook):
    """Keeps (in memory) the weights of the epoch with the best validation value of `key`, or with
    `test_epoch="last"` those of the last validated epoch (mmdet's / LVM-Med's detection testing)."""

    def __init__(self, key: str, last_tie: bool = False, test_epoch: str = "best_val"):
        if test_epoch not in TEST_EPOCHS:
            raise ValueError(f"test_epoch {test_epoch!r}: choose one of {', '.join(TEST_EPOCHS)}")
        self.key, self.best_value, self.best_state, self.best_epoch = key, float("-inf"), None, 0
        self.last_tie = last_tie  # True: a later epoch that ties the best replaces it (`>=`)
        self.test_epoch = test_epoch

    def after_val_epoch(self, runner, metrics=None) -> None:
        value = (metrics or {}).get(self.key)
        if self.test_epoch == "last":  # every validated epoch replaces the one before: the last is kept
            better = True
            value = float("nan") if value is None else value
        else:
            better = value is not None and (value >= self.best_value if self.last_tie else value > self.best_value)
        if better:  # runner.epoch counts finished epochs: 1-based here
            self.best_value, self.best_epoch = value, runner.epoch
            self.best_state = copy.deepcopy(runner.model.state_dict())


MIN_LOADER_ITEMS = 256  # below this, starting worker processes costs more than they save (docs/tasks.md)
MAX_LOADER_WORKERS = 4


def loader_workers(n_items: int) -> int:
    """Loader worker processes for a dataset of `n_items`: min(4, CPUs - 1), 0 on one CPU or for a
    dataset under MIN_LOADER_ITEMS; BENCH_LOADER_WORKERS (an integer) overrides. mmengine seeds each
    worker (default_worker_init_fn: seed + worker id, the Runner's randomness seed), so a run is
    reproducible for a given worker count; random augmentations (the detection flip) draw from
    other streams with another count."""
    forced = os.environ.get("BENCH_LOADER_WORKERS", "").strip()
    if forced:
        return max(0, int(forced))
    cpus = available_cpus()
    return 0 if cpus <= 1 or n_items < MIN_LOADER_ITEMS else min(MAX_LOADER_WORKERS, cpus - 1)


def loader(dataset, batch_size: int, shuffle: bool, seed: int, collate: str = "default_collate") -> dict:
    workers = loader_workers(len(dataset))
    return dict(dataset=dataset, batch_size=batch_size, sampler=dict(type="DefaultSampler", shuffle=shuffle, seed=seed),
                collate_fn=dict(type=collate), num_workers=workers, persistent_workers=workers > 0)


def fit_best_on_val(model, train_set, val_set, test_set, *, val_metric, test_metric, key: str, epochs: int,
                    lr: float, weight_decay: float, batch_size: int, seed: int, work_root: Path,
                    collate: str = "default_collate", scope: str = "mmengine", trained: dict | None = None,
                    clip_grad: float | None = 1.0, last_tie: bool = False, test_epoch: str = "best_val") -> dict:
    """Train `model` (an mmengine BaseModel) for `epochs`, test its best-validation epoch
    (`test_epoch="last"`: its last epoch, validated every epoch all the same).

    `val_metric` / `test_metric` are mmengine metrics that keep their full result in `.last`;
    returns {"val": val_metric.last, "test": test_metric.last, "selected": {"epoch": n},
    "trained": {"state": best weights, "epoch": n}}. Passing an earlier run's `trained` skips the
    training and only scores those weights (tasks that share training but test elsewhere).
    `clip_grad=None` trains without gradient-norm clipping; `last_tie=True` keeps the last of
    equally good validation epochs (LVM-Med's classification script saves on `>=`).
    """
    from medssl_bench.harness.engine import QuietMMEngine

    keep = KeepBestHook(key, last_tie, test_epoch)
    work_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_root) as work_dir:
        runner = Runner(
            model=model, work_dir=work_dir, experiment_name=f"finetune-{uuid.uuid4().hex[:8]}",
            train_dataloader=loader(train_set, batch_size, True, seed, collate),
            val_dataloader=loader(val_set, batch_size, False, seed, collate),
            test_dataloader=loader(test_set, batch_size, False, seed, collate),
            train_cfg=dict(by_epoch=True, max_epochs=epochs, val_interval=1),
            val_cfg=dict(), test_cfg=dict(), val_evaluator=[val_metric], test_evaluator=[test_metric],
            optim_wrapper=dict(optimizer=dict(type="Adam", lr=lr, weight_decay=weight_decay),
                               clip_grad=dict(max_norm=clip_grad) if clip_grad is not None else None),
            default_hooks=dict(timer=dict(type="IterTimerHook"), logger=dict(type="LoggerHook", interval=50),
                               checkpoint=dict(type="CheckpointHook", interval=-1, save_last=False)),
            custom_hooks=[keep], randomness=dict(seed=derived_seed(seed, 2)),
            # keep the process's start method (eval workers are spawned; mmengine would force fork)
            env_cfg=dict(mp_cfg=dict(mp_start_method=multiprocessing.get_start_method(allow_none=True) or "fork")),
            log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"), default_scope=scope)
        runner.logger.addFilter(QuietMMEngine())
        if trained is None:
            runner.train()
            trained = {"state": keep.best_state, "epoch": keep.best_epoch}
        runner.model.load_state_dict(trained["state"])
        runner.val()
        runner.test()
    return {"val": val_metric.last, "test": test_metric.last, "selected": {"epoch": trained["epoch"]},
            "trained": trained}
