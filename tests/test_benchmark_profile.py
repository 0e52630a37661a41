"""`--profile benchmark`: one budget for every method (harness.config.BENCHMARK_BUDGET: backbone, initial weights,
image size, epochs x global batch, so on one corpus the same images seen), each method's own views, loss and
paper settings; a run that changes a budget key is recorded as having left it, so it is never ranked as
benchmark."""
from __future__ import annotations

import json

import pytest
import torch

from medssl_bench.harness import config
from medssl_bench.harness.app.cli import main
from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.config import (BENCHMARK_BUDGET, INIT_REQUIRED, profile_label, profile_settings,
                                         resolve_config)
from medssl_bench.harness.method_api import SSLMethod
from medssl_bench.methods import METHOD_NAMES, get_method
from tests.pretrain_helpers import pretrain

BUDGET_KEYS = ("backbone", "init", "image_size", "epochs", "batch_size")


def test_every_method_resolves_the_same_budget_and_keeps_its_paper_settings():
    budgets = {}
    for name in METHOD_NAMES:
        cls = get_method(name)
        cfg = resolve_config(cls, "benchmark", {}, {})
        budgets[name] = {key: cfg[key] for key in BUDGET_KEYS}
        paper = resolve_config(cls, "paper", {}, {})
        own = cls.profiles["benchmark"]  # what the budget forces the method to change, nothing else
        for key in ("optimizer", "base_lr", "lr_scaling", "weight_decay", *cls.views, *config.section_defaults(
                cls)["model"]):
            assert cfg[key] == (own[key] if key in own else paper[key]), (name, key)
        assert profile_label(cfg) == "benchmark"
    assert BENCHMARK_BUDGET == {"backbone": "resnet50", "init": INIT_REQUIRED, "image_size": 224, "epochs": 100,
                                "batch_size": 256}
    assert all(b == BENCHMARK_BUDGET for b in budgets.values()), budgets


def test_a_method_cannot_set_the_shared_budget():
    class OwnBudget(SSLMethod):
        profiles = {"paper": dict(epochs=10), "benchmark": dict(image_size=448)}

    with pytest.raises(TypeError, match="budget keys image_size"):
        profile_settings(OwnBudget, "benchmark")


def test_changing_a_budget_key_leaves_the_benchmark_but_tuning_a_method_setting_does_not():
    simclr = get_method("simclr")
    assert profile_label(resolve_config(simclr, "benchmark", {"image_size": 128}, {})) == \
        "benchmark (modified: image_size)"
    assert profile_label(resolve_config(simclr, "benchmark", {}, {"backbone": "resnet18", "epochs": "5"})) == \
        "benchmark (modified: backbone, epochs)"
    assert profile_label(resolve_config(simclr, "benchmark", {"init": "none"}, {})) == "benchmark (modified: init)"
    # a sweep's sampled values, or an explicit per-method choice: still the benchmark budget
    tuned = resolve_config(simclr, "benchmark", {"base_lr": 0.5, "init": "/w/imagenet.safetensors"},
                           {"temperature": "0.2"})
    assert profile_label(tuned) == "benchmark" and tuned["profile_changes"] == []


@pytest.fixture
def tiny_budget(monkeypatch):
    """The benchmark budget at CPU size (what tests/pretrain_helpers.TINY passes anyway: 32 px, batch 16)."""
    tiny = {"backbone": "resnet18", "init": INIT_REQUIRED, "image_size": 32, "epochs": 1, "batch_size": 16}
    monkeypatch.setattr(config, "BENCHMARK_BUDGET", tiny)
    return tiny


def test_two_methods_on_the_benchmark_record_the_same_budget(tiny_corpus, tiny_budget, capsys, monkeypatch):
    workspace, corpus_id = tiny_corpus
    torch.manual_seed(2026)  # weights of their own, so the import is not a duplicate of another test's
    backbone, _ = build_backbone("resnet18")
    source = workspace / "bench-init-resnet18.pth"
    torch.save(backbone.state_dict(), source)
    assert main(["import-checkpoint", str(source), "--name", "bench-init-resnet18", "--workspace",
                 str(workspace)]) == 0
    weights = workspace / "checkpoints" / "bench-init-resnet18" / "backbone.safetensors"

    sidecars = {}
    for method in ("simclr", "byol"):
        assert pretrain(workspace, corpus_id, "--method", method, "--profile", "benchmark", "--init", str(weights),
                        "--name", f"bench-{method}") == 0
        sidecars[method] = json.loads((workspace / "runs" / f"bench-{method}" / "backbone.json").read_text())
    simclr, byol = sidecars["simclr"], sidecars["byol"]
    assert simclr["profile"] == byol["profile"] == "benchmark"
    assert simclr["budget"] == byol["budget"]  # backbone, size, init sha256, epochs, batch, images seen
    assert simclr["budget"]["images_seen"] == 96 // 16 * 16 and simclr["budget"]["backbone"] == "resnet18"
    assert simclr["budget"]["init"] == simclr["init"]["sha256"] == byol["init"]["sha256"]
    assert simclr["config"]["optimizer"] == "lars" and simclr["config"]["temperature"] == 0.1  # its own recipe

    # the same run at another image size left the benchmark, and says which key did it
    assert pretrain(workspace, corpus_id, "--method", "simclr", "--profile", "benchmark", "--init", str(weights),
                    "--image-size", "48", "--name", "bench-simclr-48") == 0
    moved = json.loads((workspace / "runs" / "bench-simclr-48" / "backbone.json").read_text())
    assert moved["profile"] == "benchmark (modified: image_size)" and moved["budget"]["image_size"] == 48
    from medssl_bench.harness.app.cli.common import console

    monkeypatch.setattr(console, "width", 200)  # `bench runs` says so too
    capsys.readouterr()
    assert main(["runs", "--workspace", str(workspace)]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "benchmark (modified: image_size)" in listed["bench-simclr-48"]
    assert "benchmark" in listed["bench-byol"] and "modified" not in listed["bench-byol"]


def test_a_benchmark_run_without_weights_stops_with_one_line(tiny_corpus, tiny_budget, capsys):
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "moco", "--profile", "benchmark", "--name", "bench-no-init") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "as every method of the benchmark budget" in " ".join(err.split())
    assert not (workspace / "runs" / "bench-no-init").exists()
