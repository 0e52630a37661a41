"""`--set sync_bn=true`: under DDP on GPUs every BatchNorm becomes a SyncBatchNorm before the DDP wrap; without
DDP nothing changes; on CPU processes (gloo), where torch's SyncBatchNorm cannot run, it is refused in one line."""
from __future__ import annotations

import pytest
import torch

import medssl_bench.harness.engine as engine
from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.config import resolve_config
from medssl_bench.harness.errors import UserError
from medssl_bench.methods import get_method


def bn_counts(model: torch.nn.Module) -> tuple[int, int]:
    sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    plain = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()) - sync
    return plain, sync


def test_sync_bn_is_a_recorded_setting_off_by_default():
    method = get_method("simclr")
    assert resolve_config(method, "quick", {}, {})["sync_bn"] is False
    assert resolve_config(method, "quick", {}, {"sync_bn": "true"})["sync_bn"] is True


def test_under_ddp_on_gpus_every_batchnorm_becomes_synced(monkeypatch):
    monkeypatch.setattr(engine, "world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model, _ = build_backbone("resnet18")
    keys = list(model.state_dict())
    assert bn_counts(model) == (20, 0)  # resnet18: 20 BatchNorm2d
    converted = engine.sync_batchnorm(model, {"sync_bn": True})
    assert bn_counts(converted) == (0, 20) and list(converted.state_dict()) == keys  # the export is unchanged
    assert bn_counts(engine.sync_batchnorm(build_backbone("resnet18")[0], {"sync_bn": False})) == (20, 0)


def test_without_ddp_sync_bn_changes_nothing(monkeypatch):
    monkeypatch.setattr(engine, "world_size", lambda: 1)
    assert bn_counts(engine.sync_batchnorm(build_backbone("resnet18")[0], {"sync_bn": True})) == (20, 0)


def test_on_cpu_processes_it_is_refused(monkeypatch):
    monkeypatch.setattr(engine, "world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="sync_bn needs CUDA GPUs"):
        engine.check_sync_bn({"sync_bn": True})
    engine.check_sync_bn({"sync_bn": False})
