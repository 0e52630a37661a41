"""`paper_linear`: LVM-Med's frozen linear protocol (encoder requires_grad False, BN in train mode)."""
from __future__ import annotations

import torch

from medssl_bench.downstream import classification
from medssl_bench.downstream.classification import PAPER_LINEAR_TRANSFORMS, PaperLinearImageSet
from medssl_bench.downstream.datasets.canonical import load_classification_dataset
from medssl_bench.downstream.registry import get_task
from medssl_bench.harness.checkpoint_index import random_checkpoint


def test_registry_names_it_optional_with_the_repo_recipe_and_the_paper_numbers():
    for name, reported, lr, wd, batch, size, cfg in (
            ("fgadr", 68.33, 5e-4, 5e-3, 32, 480, "fgadr_endtoend_R50_frozen_1_fcn.yml"),
            ("brain_tumor", 66.33, 5e-4, 0.0, 64, 224, "brain_endtoend_R50_frozen_1_fcn.yml")):
        task = get_task(name)
        assert "paper_linear" in task.protocols and "paper_linear" not in task.default_protocols
        paper = task.protocol("paper_linear", "paper")
        assert (paper.lr, paper.weight_decay, paper.batch_size, paper.image_size, paper.epochs) == (lr, wd, batch, size, 20)
        assert "train_R50_classification.py" in paper.source and cfg in paper.source
        # the paper's linear number was measured with this protocol, not with bench's `linear`
        assert task.reported["paper_linear"] == reported and "linear" not in task.reported
        from medssl_bench.leaderboard.reference import reference

        assert reference(name, "paper_linear", "accuracy", [])[0] == reported  # its leaderboard column shows it
        value, why = reference(name, "linear", "accuracy", [])
        assert value is None and "paper_linear" in why  # bench's linear column says why not
        quick = task.protocol("paper_linear", "quick")
        assert quick.backbone == "resnet18" and quick.image_size == 64 and quick.source.startswith("quick (CPU)")


def test_fgadr_transforms_are_random_crops_repeated_exactly_on_eval_images(brain_tumor_root):
    data = load_classification_dataset(brain_tumor_root(96, 64) / "brain_tumor")
    samples = data.split("test")[:4]
    recipe = PAPER_LINEAR_TRANSFORMS["fgadr"]
    a = PaperLinearImageSet(samples, 32, recipe, eval_seed=7)
    b = PaperLinearImageSet(samples, 32, recipe, eval_seed=7)
    assert a[0]["inputs"].shape == (3, 32, 32) and a[0]["inputs"].dtype == torch.uint8
    assert all(torch.equal(a[i]["inputs"], b[i]["inputs"]) for i in range(4))  # eval crops are seeded
    other = PaperLinearImageSet(samples, 32, recipe, eval_seed=8)
    assert any(not torch.equal(a[i]["inputs"], other[i]["inputs"]) for i in range(4))
    # brain: Resize only, deterministic, no augmentation
    brain = PaperLinearImageSet(samples, 32, PAPER_LINEAR_TRANSFORMS["brain_tumor"])
    assert torch.equal(brain[1]["inputs"], classification.load_image(samples[1], 32))


def test_paper_linear_trains_with_bn_statistics_moving_and_encoder_weights_bit_identical(
        brain_tumor_root, tmp_path, monkeypatch):
    task = get_task("brain_tumor")
    data = load_classification_dataset(brain_tumor_root(96, 64) / "brain_tumor")
    protocol = task.protocol("paper_linear", "quick")
    seen = {}
    real_fit = classification.fit_best_on_val

    def spy(model, *args, **kwargs):
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["kwargs"] = kwargs
        out = real_fit(model, *args, **kwargs)
        seen["model"] = model
        return out

    monkeypatch.setattr(classification, "fit_best_on_val", spy)
    out = classification.run_job(task, protocol, data, random_checkpoint("resnet18"), label_fraction=1.0, seed=0,
                                 cache=None, device=torch.device("cpu"), work_root=tmp_path)
    # scored on val and test, every case named, its recipe recorded
    assert out["test"]["metric"] == "accuracy" and 0.0 <= out["test"]["value"] <= 1.0
    assert [c["id"] for c in out["test"]["per_case"]] == [s.id for s in data.split("test")]
    assert out["n_train"] == len(data.split("train"))
    selected = out["selected"]
    assert 1 <= selected["epoch"] <= protocol.epochs
    recipe = selected["recipe"]
    assert "requires_grad False" in recipe["encoder"] and "train() mode" in recipe["encoder"]
    assert recipe["clip_grad"] is None and recipe["best_val_ties"].startswith("last")
    assert recipe["trainable_parameters"] == 512 * 4 + 4  # the FC layer only (ResNet-18 width 512, 4 classes)
    assert seen["kwargs"]["clip_grad"] is None and seen["kwargs"]["last_tie"] is True

    # the defining property, on the trained model: conv / BN affine weights bit-identical,
    # BN running statistics moved, the FC layer trained
    model, before = seen["model"], seen["before"]
    after = model.state_dict()
    assert all(not p.requires_grad for p in model.backbone.parameters())
    params = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    convs = [k for k in params if ".conv" in k or k.startswith("backbone.conv") or "downsample.0" in k]
    assert convs and all(torch.equal(before[k], after[k]) for k in params)
    running = [k for k in after if k.endswith("running_mean") or k.endswith("running_var")]
    assert running and all(k.startswith("backbone.") for k in running)
    assert sum(not torch.equal(before[k], after[k]) for k in running) == len(running)
    tracked = [k for k in after if k.endswith("num_batches_tracked")]
    assert all(int(after[k]) > int(before[k]) for k in tracked)
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_bench_eval_runs_it_when_named_and_records_its_recipe(brain_tumor_root, tmp_path):
    from medssl_bench.harness.app.cli import main
    from medssl_bench.harness.store import ResultsStore
    from medssl_bench.harness.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    args = ["eval", "--checkpoint", "random", "--task", "brain_tumor", "--protocol", "paper_linear", "--seeds", "1",
            "--workspace", str(ws.root), "--data-root", str(brain_tumor_root(96, 64)), "--jobs", "1"]
    assert main(args) == 0
    store = ResultsStore.open(None, ws)
    assert [(e["protocol"], e["status"]) for e in store.evaluations()] == [("paper_linear", "done")]
    rows = {r["split"]: r for r in store.results()}
    config = rows["test"]["protocol_config"]
    assert config["name"] == "paper_linear" and config["profile"] == "quick" and config["lr"] == 5e-4
    assert "train_R50_classification.py" in config["source"]
    assert config["selected"]["recipe"]["clip_grad"] is None
    assert "BN in train() mode" in config["selected"]["recipe"]["encoder"]
