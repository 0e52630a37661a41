"""`loader_nice`: bench's loader workers run at the niceness asked (the training process keeps the cores it
computes on), keep mmengine's per-worker seeding, and the setting is not a recipe change."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Dataset

from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.config import method_kwargs, resolve_config
from medssl_bench.harness.engine import PretrainModel, build_runner
from medssl_bench.methods import get_method


class WorkerFacts(Dataset):
    """Each sample: the niceness, torch seed and pid of the process that made it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, item):
        return {"inputs": [torch.tensor([os.nice(0), torch.initial_seed(), os.getpid()])]}


@pytest.mark.parametrize("nice", [0, 7])
def test_workers_run_at_the_niceness_asked_and_are_seeded_as_mmengine_seeds_them(tmp_path, nice):
    method = get_method("simclr")
    cfg = resolve_config(method, "quick", {"batch_size": 2}, {"loader_nice": str(nice), "seed": "5"})
    backbone, width = build_backbone(cfg["backbone"])
    model = PretrainModel(method(backbone, width, **method_kwargs(method, cfg)))
    runner = build_runner(model, WorkerFacts(), cfg, tmp_path, resume=False, num_workers=1, hooks=[])
    (facts,) = next(iter(runner.build_dataloader(runner._train_dataloader)))["inputs"]
    assert facts[:, 2].ne(os.getpid()).all()  # made in a worker process
    assert facts[:, 0].tolist() == [min(19, os.nice(0) + nice)] * 2
    assert facts[:, 1].tolist() == [5, 5]  # mmengine's rule: num_workers * rank + worker_id + seed


def test_loader_nice_is_recorded_and_keeps_a_run_on_its_profile():
    method = get_method("simclr")
    cfg = resolve_config(method, "quick", {}, {"loader_nice": "10"})
    assert cfg["loader_nice"] == 10
    assert cfg["profile_changes"] == resolve_config(method, "quick", {}, {})["profile_changes"]
