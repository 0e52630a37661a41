"""Detection `paper_finetune`: LVM-Med's mmdet recipe (frozen stem + layer1, norm_eval, last epoch tested)
beside bench's `finetune`, checked on the built model, the recorded config and the epoch rule (no training run)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from medssl_bench.downstream.finetuning import KeepBestHook
from medssl_bench.downstream.registry import get_task

DET_TASKS = ("vindr_cxr", "kvasir_det")


@pytest.mark.parametrize("name", DET_TASKS)
@pytest.mark.parametrize("profile", ["paper", "quick"])
def test_paper_finetune_is_optional_and_shares_finetunes_schedule(name, profile):
    task = get_task(name)
    assert "paper_finetune" in task.protocols and task.default_protocols == ("finetune",)
    ours, paper = task.protocol("finetune", profile), task.protocol("paper_finetune", profile)
    for field in ("image_size", "lr", "epochs", "batch_size", "weight_decay", "backbone", "optimizer",
                  "rois_per_image", "proposals"):
        assert getattr(paper, field) == getattr(ours, field), field
    recorded = paper.as_dict()
    assert (recorded["frozen_stages"], recorded["norm_eval"], recorded["test_epoch"]) == (1, True, "last")
    assert recorded["name"] == "paper_finetune" and "frozen_stages=1" in recorded["source"]
    # bench's finetune is unchanged: none of the recipe's fields, so its recorded config is as before
    assert not {"frozen_stages", "norm_eval", "test_epoch"} & set(ours.as_dict())
    assert ours.frozen_stages is None and ours.norm_eval is None and ours.test_epoch is None


def _built(protocol):
    from medssl_bench.downstream.detection.model import build_detector

    return build_detector("resnet18", 2, rois_per_image=8, proposals=16, frozen_stages=protocol.frozen_stages,
                          norm_eval=protocol.norm_eval)


def test_paper_finetune_detector_freezes_stem_and_layer1_and_keeps_batchnorm_in_eval():
    task = get_task("vindr_cxr")
    model = _built(task.protocol("paper_finetune", "quick"))
    resnet = model.backbone.resnet
    frozen = [*resnet.conv1.parameters(), *resnet.bn1.parameters(), *resnet.layer1.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for stage in (resnet.layer2, resnet.layer3, resnet.layer4) for p in stage.parameters())
    assert all(p.requires_grad for p in model.neck.parameters()) and all(p.requires_grad for p in model.roi_head.parameters())
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)  # norm_eval: statistics fixed in every stage
    assert model.training and model.neck.training and resnet.layer2[0].conv1.training


def test_finetune_detector_trains_every_layer_with_batchnorm_in_train_mode():
    model = _built(get_task("vindr_cxr").protocol("finetune", "quick"))
    assert all(p.requires_grad for p in model.backbone.parameters())
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.training for m in bns)


def _validate(hook, values):
    model = nn.Linear(1, 1)
    runner = SimpleNamespace(model=model, epoch=0)
    for epoch, value in enumerate(values, start=1):
        runner.epoch = epoch
        with torch.no_grad():
            model.weight.fill_(epoch)
        hook.after_val_epoch(runner, {"ap50": value})
    return hook


def test_last_epoch_rule_keeps_the_last_epoch_even_after_a_better_one():
    values = [0.1, 0.6, 0.3, 0.2]
    last = _validate(KeepBestHook("ap50", test_epoch="last"), values)
    assert last.best_epoch == 4 and last.best_state["weight"].item() == 4 and last.best_value == 0.2
    best = _validate(KeepBestHook("ap50"), values)
    assert best.best_epoch == 2 and best.best_state["weight"].item() == 2
    assert _validate(KeepBestHook("ap50", test_epoch="last"), [0.5, None]).best_epoch == 2  # no value: still last
    with pytest.raises(ValueError, match="test_epoch"):
        KeepBestHook("ap50", test_epoch="first")


@pytest.mark.parametrize("name,expect", [("finetune", (None, None, "best_val")), ("paper_finetune", (1, True, "last"))])
def test_detection_run_job_passes_the_protocols_recipe(monkeypatch, tmp_path, name, expect):
    from medssl_bench.downstream.detection import run

    seen = {}
    monkeypatch.setattr(run, "build_detector", lambda *a, **kw: seen.update(build=kw) or "model")
    monkeypatch.setattr(run, "coco_split", lambda *a, **kw: "split")
    monkeypatch.setattr(run, "PaperDetMetric", lambda *a, **kw: "metric")

    def fit(model, *a, **kw):
        seen["fit"] = kw
        return {"val": {}, "test": {}, "selected": {"epoch": kw["epochs"]}, "trained": {}}

    import medssl_bench.downstream.finetuning as finetuning
    monkeypatch.setattr(finetuning, "fit_best_on_val", fit)
    task = get_task("kvasir_det")
    data = SimpleNamespace(split=lambda s: [1, 2], classes=["polyp"], annotation_file=lambda s: tmp_path / s,
                           name="kvasir_det", root=tmp_path)
    ref = SimpleNamespace(backbone="resnet18")
    run.run_job(task, task.protocol(name, "quick"), data, ref, label_fraction=1.0, seed=0,
                device=torch.device("cpu"), work_root=tmp_path)
    assert (seen["build"]["frozen_stages"], seen["build"]["norm_eval"], seen["fit"]["test_epoch"]) == expect
