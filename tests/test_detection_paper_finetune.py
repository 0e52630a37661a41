"""Detection `paper_finetune` run for real (issue #18, item 5): `bench eval` records it done with LVM-Med's
mmdet recipe and its last epoch tested; a real fine-tuning run (run_job -> mmengine Runner) keeps the stem
and layer1 fixed and every BatchNorm in eval mode, where bench's `finetune` trains them all."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from medssl_bench.downstream.datasets.canonical_det import load_detection_dataset
from medssl_bench.downstream.finetuning import KeepBestHook
from medssl_bench.downstream.registry import get_task
from medssl_bench.harness.checkpoint_index import random_checkpoint

pytestmark = pytest.mark.slow
TASK = "kvasir_det"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A workspace holding a tiny synthetic Kvasir detection set (12 images, 96 px), prepared by the CLI."""
    from medssl_bench.harness.app.cli import main

    root = tmp_path_factory.mktemp("paper_finetune")
    ws, raw = root / "ws", root / "raw"
    assert main(["data", "synth", TASK, "--out", str(raw), "--n", "12", "--size", "96"]) == 0
    assert main(["data", "prepare", TASK, "--src", str(raw), "--workspace", str(ws)]) == 0
    return ws


def test_bench_eval_records_paper_finetune_done_with_its_recipe_and_last_epoch(prepared):
    from medssl_bench.harness.app.cli import main
    from medssl_bench.harness.store import ResultsStore
    from medssl_bench.harness.workspace import Workspace

    # the quick profile's schedule (4 epochs; the CLI has no epoch override), 64 px to keep it short
    assert main(["eval", "--checkpoint", "random", "--task", TASK, "--protocol", "paper_finetune", "--seeds", "1",
                 "--image-size", "64", "--workspace", str(prepared), "--jobs", "1"]) == 0
    with ResultsStore.open(None, Workspace(prepared)) as store:
        (job,) = store.evaluations(task=TASK)
        (test,) = store.results(task=TASK, split="test")
    assert (job["status"], job["protocol"]) == ("done", "paper_finetune")
    config = test["protocol_config"]
    assert (config["frozen_stages"], config["norm_eval"], config["test_epoch"]) == (1, True, "last")
    assert config["image_size"] == 64 and config["epochs"] >= 2
    assert config["selected"] == {"epoch": config["epochs"]}  # the last epoch, whatever validation said
    assert test["metric"] == "ap50" and 0.0 <= test["value"] <= 1.0


class _ValFallsAfterEpochOne(KeepBestHook):
    """KeepBestHook whose validation value falls after epoch 1 (0.9, then 0.1): the best-val epoch
    (1) is not the last, so which rule each protocol reaches fit_best_on_val with shows."""

    def after_val_epoch(self, runner, metrics=None):
        super().after_val_epoch(runner, {**(metrics or {}), self.key: 0.9 if runner.epoch == 1 else 0.1})


def _trained(prepared, tmp_path, monkeypatch, protocol_name: str):
    """Fine-tune for 2 epochs (half the training images: one step each) through run_job as `bench eval`
    does; returns (run_job's output, the detector's backbone state before, after, and the BatchNorm
    modes seen in training forwards)."""
    from medssl_bench.downstream import finetuning
    from medssl_bench.downstream.detection import run

    task = get_task(TASK)
    protocol = replace(task.protocol(protocol_name, "quick"), image_size=64, epochs=2)
    seen = {"before": None, "bn_training": set()}
    build = run.build_detector

    def spy(*args, **kwargs):  # the real detector, with a snapshot and BatchNorm-mode hooks
        model = build(*args, **kwargs)
        seen["before"] = {k: v.clone() for k, v in model.backbone.state_dict().items()}

        def record(bn, _):
            if model.training:  # a training forward (validation runs the detector in eval mode)
                seen["bn_training"].add(bn.training)

        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(record)
        seen["model"] = model
        return model

    monkeypatch.setattr(run, "build_detector", spy)
    monkeypatch.setattr(finetuning, "KeepBestHook", _ValFallsAfterEpochOne)
    data = load_detection_dataset(prepared / "data" / TASK)
    out = run.run_job(task, protocol, data, random_checkpoint("resnet18"), label_fraction=0.5, seed=0,
                      device=torch.device("cpu"), work_root=tmp_path)
    after = seen["model"].backbone.state_dict()  # the tested epoch's weights (loaded back into the model)
    return out, seen["before"], after, seen["bn_training"]


def _changed(before, after, prefix: str, suffixes=("weight", "bias")) -> dict[str, bool]:
    return {k: not torch.equal(before[k], after[k]) for k in before
            if k.startswith(prefix) and k.endswith(suffixes)}


def test_paper_finetune_trains_with_stem_and_layer1_fixed_batchnorm_in_eval_and_tests_the_last_epoch(
        prepared, tmp_path, monkeypatch):
    out, before, after, bn_modes = _trained(prepared, tmp_path, monkeypatch, "paper_finetune")
    assert out["selected"] == {"epoch": 2}  # the last, though epoch 1 validated better
    fixed = {**_changed(before, after, "resnet.conv1."), **_changed(before, after, "resnet.bn1."),
             **_changed(before, after, "resnet.layer1.")}
    assert fixed and not any(fixed.values()), [k for k, v in fixed.items() if v]
    trained = _changed(before, after, "resnet.layer2.", ("conv1.weight", "conv2.weight"))
    assert trained and all(trained.values())  # the rest of the trunk does train
    assert bn_modes == {False}  # every BatchNorm forward while training ran in eval mode ...
    stats = _changed(before, after, "resnet.", ("running_mean", "running_var", "num_batches_tracked"))
    assert stats and not any(stats.values())  # ... so no running statistic moved, in any stage


def test_finetune_of_the_same_task_trains_the_stem_and_batchnorm(prepared, tmp_path, monkeypatch):
    out, before, after, bn_modes = _trained(prepared, tmp_path, monkeypatch, "finetune")
    assert out["selected"] == {"epoch": 1}  # bench's rule: the best-validation epoch
    assert _changed(before, after, "resnet.conv1.", "weight") == {"resnet.conv1.weight": True}
    assert any(_changed(before, after, "resnet.layer1.").values())
    assert bn_modes == {True}
    assert _changed(before, after, "resnet.bn1.", ("running_mean", "num_batches_tracked")) == {
        "resnet.bn1.running_mean": True, "resnet.bn1.num_batches_tracked": True}
