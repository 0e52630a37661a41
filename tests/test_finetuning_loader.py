"""Loader worker count of the shared fine-tuning (downstream.finetuning.loader_workers): worker
processes on several CPUs for real-size datasets, none on one CPU or for tiny (test) datasets."""
from __future__ import annotations

from medssl_bench.downstream import finetuning


def test_loader_workers(monkeypatch):
    monkeypatch.delenv("BENCH_LOADER_WORKERS", raising=False)
    big = finetuning.MIN_LOADER_ITEMS
    for cpus, expected in ((1, 0), (2, 1), (4, 3), (16, 4)):
        monkeypatch.setattr(finetuning, "available_cpus", lambda cpus=cpus: cpus)
        assert finetuning.loader_workers(big) == expected
        assert finetuning.loader_workers(big - 1) == 0  # tiny datasets stay in the main process
    cfg = finetuning.loader(list(range(big)), 8, True, 3)
    assert cfg["num_workers"] == 4 and cfg["persistent_workers"] is True and cfg["sampler"]["seed"] == 3
    assert finetuning.loader(list(range(10)), 8, True, 3)["num_workers"] == 0
    monkeypatch.setenv("BENCH_LOADER_WORKERS", "2")
    assert finetuning.loader_workers(1) == 2
