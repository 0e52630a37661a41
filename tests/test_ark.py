"""Ark: labelled multi-dataset pretraining (harness.app.labelled + methods/ark.py) through the real CLI, the cyclic
pass sampler, head routing, the c / teacher-momentum ramps, train-split-only loading and leakage provenance."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.data import collate_views
from medssl_bench.harness.app.labelled import CyclicPassSampler, LabelledSet, LabelledViews, load_labelled
from medssl_bench.harness.method_api import LabelLayout, StepInfo
from medssl_bench.harness.runs import read_run
from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace
from medssl_bench.methods.ark import Ark
from tests.pretrain_helpers import TINY


@pytest.fixture
def brain_root(brain_tumor_root):
    """Synthetic Brain-Tumor MRI prepared into a data root (train, val and test splits)."""
    return brain_tumor_root(64, 48)


def toy_sets(sizes, n_classes=(2, 1, 3)) -> list[LabelledSet]:
    rng = np.random.default_rng(0)
    return [LabelledSet(f"set{k}", "multilabel", [f"c{j}" for j in range(c)], [f"set{k}_{i}" for i in range(n)],
                        rng.integers(0, 2, (n, c)).astype(np.float32), f"hash{k}", True,
                        images=[rng.integers(0, 255, (12, 12), dtype=np.uint8) for _ in range(n)])
            for k, (n, c) in enumerate(zip(sizes, n_classes))]


def tiny_ark(pass_steps=(2, 1, 3), **kwargs) -> Ark:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    layout = LabelLayout(("a", "b", "c"), (2, 1, 3), pass_steps)
    return Ark(backbone, 8, labels=layout, proj_dim=16, **kwargs)


def batch_of(k: int, n_classes: int, size: int = 4) -> list[torch.Tensor]:
    return [torch.randn(size, 3, 16, 16), torch.randn(size, 3, 16, 16), torch.full((size,), k),
            torch.randint(0, 2, (size, n_classes)).float()]


def test_loss_falls_through_the_cli_on_synthetic_labelled_sets(tmp_path):
    """Quick profile on two phantom sets (multi-label CT findings, 8-way modality): the supervised BCE of the last
    epoch is clearly below the first's (0.73-0.75 of it over seeds 0-2)."""
    ws = tmp_path / "ws"
    args = ["pretrain", "--method", "ark", "--workspace", str(ws), "--labels-from", "phantom_ct", "--labels-from",
            "phantom_modality", *TINY, "--epochs", "4", "--name", "falls"]
    assert main(args) == 0
    run = read_run(ws / "runs" / "falls")
    assert run["status"] == "done" and run["category"] == "supervised" and run["corpus"]["synthetic"] is True
    assert [d["dataset"] for d in run["labels_consumed"]] == ["phantom_ct", "phantom_modality"]
    rows = [json.loads(line) for line in (ws / "runs" / "falls" / "metrics.jsonl").open()]
    assert len(rows) == 4 * 2 * (128 // 16)
    bce = {e: np.mean([r["bce"] for r in rows if r["epoch"] == e]) for e in (1, 4)}
    assert bce[4] < 0.9 * bce[1], bce


def test_cyclic_sampler_yields_whole_passes_in_order_and_batches_never_mix():
    sets = toy_sets([37, 20, 50])
    data = LabelledViews(sets, lambda image: [torch.zeros(3, 4, 4)], seed=0, n_image_views=1)
    sampler = CyclicPassSampler(data, batch_size=8, seed=3)
    assert sampler.pass_steps == [4, 2, 6] and len(sampler) == 12 * 8
    loader = DataLoader(data, batch_size=8, sampler=sampler, collate_fn=collate_views, drop_last=True)
    sources = [batch["inputs"][1] for batch in loader]
    assert all(bool((s == s[0]).all()) for s in sources)  # one dataset per batch
    assert [int(s[0]) for s in sources] == [0] * 4 + [1] * 2 + [2] * 6  # whole passes, in the given order
    first = [i for _, i in sampler]
    for k, (lo, n, steps) in enumerate(zip(data.offsets, data.sizes, sampler.pass_steps)):
        part = [i for i in first if lo <= i < lo + n]
        assert len(part) == len(set(part)) == steps * 8  # a pass: distinct samples, cut to whole batches
    sampler.set_epoch(1)
    assert [e for e, _ in sampler] == [1] * 96 and [i for _, i in sampler] != first  # reshuffled per epoch
    shards = []
    for rank in (0, 1):  # two DDP ranks: disjoint shards, the same steps per pass
        sampler = CyclicPassSampler(data, batch_size=4, seed=3)
        sampler.rank, sampler.world_size = rank, 2
        sampler.pass_steps = [n // 8 for n in data.sizes]
        shards.append([i for _, i in sampler])
    assert len(shards[0]) == len(shards[1]) == 12 * 4 and not set(shards[0]) & set(shards[1])


def test_a_batch_of_dataset_k_trains_head_k_only():
    ark = tiny_ark()
    optimizer = torch.optim.SGD([p for p in ark.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                weight_decay=0.1)
    for k, n_classes in ((0, 2), (1, 1)):  # a step on dataset 0 gives the other heads momentum to lose
        before = [h.weight.detach().clone() for h in ark.student["heads"]]
        out = ark.training_loss(batch_of(k, n_classes), StepInfo(0, 0, 12, 2))
        (out["loss_cls"] + out["loss_consistency"]).backward()
        ark.after_backward(StepInfo())
        grads = [h.weight.grad for h in ark.student["heads"]]
        assert grads[k] is not None and grads[k].abs().sum() > 0
        assert all(g is None for j, g in enumerate(grads) if j != k)
        optimizer.step()
        optimizer.zero_grad()
        after = [h.weight.detach() for h in ark.student["heads"]]
        assert [not torch.equal(a, b) for a, b in zip(after, before)] == [j == k for j in range(3)]
    mixed = batch_of(0, 2)
    mixed[2][1] = 1
    with pytest.raises(RuntimeError, match="mixes"):
        ark.training_loss(mixed, StepInfo())


@pytest.mark.parametrize("ema_mode", ["epoch", "iteration"])
def test_consistency_weight_and_teacher_momentum_follow_cosine_ramps_over_passes(ema_mode):
    ark = tiny_ark(ema_mode=ema_mode)  # passes of 2, 1 and 3 steps, 2 epochs: P = 6 passes, 12 steps
    passes = [0, 0, 1, 2, 2, 2, 3, 3, 4, 5, 5, 5]
    classes = {0: 2, 1: 1, 2: 3}
    for step, p in enumerate(passes):
        info = StepInfo(step // 6, step, 12, 2)
        out = ark.training_loss(batch_of(p % 3, classes[p % 3]), info)
        c = 0.25 * (1 - math.cos(math.pi * p / 5))  # 0 -> 0.5
        m = 1 - 0.05 * (1 + math.cos(math.pi * p / 5))  # 0.9 -> 1
        assert out["consistency_weight"].item() == pytest.approx(c)
        with torch.no_grad():
            for param in ark.student.parameters():  # stands in for an optimizer step
                param.add_(torch.randn_like(param))
        student = [q.detach().clone() for q in ark.student.parameters()]
        teacher = [q.detach().clone() for q in ark.teacher.parameters()]
        ark.after_step(info)
        ends_pass = step + 1 == len(passes) or passes[step + 1] != p
        for s, t, new in zip(student, teacher, ark.teacher.parameters()):
            expected = m * t + (1 - m) * s if ema_mode == "iteration" or ends_pass else t
            torch.testing.assert_close(new, expected)
    assert ark.backbone is ark.teacher["backbone"]  # the teacher is what gets exported


def test_views_share_their_geometry_and_only_the_student_is_jittered():
    from PIL import Image

    from medssl_bench.methods.ark import SharedGeometryViews

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))  # noise
    ranks = lambda view: view.flatten().argsort().argsort().double()  # noqa: E731
    views, jittered, rank_corr = SharedGeometryViews(24), 0, []
    for seed in range(40):
        torch.manual_seed(seed)
        student, teacher = views(image)
        assert student.shape == teacher.shape == (3, 24, 24)
        if not torch.equal(student, teacher):  # brightness/contrast/gamma: monotone maps of the same crop
            jittered += 1
            rank_corr.append(np.corrcoef(ranks(student), ranks(teacher))[0, 1])
    assert 4 <= jittered <= 22 and min(rank_corr) > 0.95, (jittered, rank_corr)  # p 0.3 of 40
    torch.manual_seed(0)
    first, _ = views(image)
    assert abs(np.corrcoef(ranks(first), ranks(views(image)[1]))[0, 1]) < 0.5  # another draw: another crop


def test_only_the_train_split_is_ever_loaded(brain_root):
    from medssl_bench.downstream.families import get_family

    prepared = get_family("classification").load(brain_root / "brain_tumor")
    train = {s.id: s.label for s in prepared.split("train")}
    held_out = {s.id for s in prepared.samples if s.split != "train"}
    assert held_out  # the dataset has val/test samples to keep out
    data = load_labelled(["brain_tumor"], brain_root, 32, 8, "ark")
    labelled = data.sets[0]
    assert set(labelled.ids) == set(train) and labelled.record()["n_images"] == len(train)
    views = data.views(lambda image: [torch.zeros(3, 2, 2)], seed=0, n_image_views=1)
    loaded = Counter()
    for epoch in (0, 1):
        sampler = CyclicPassSampler(views, batch_size=8, seed=0)
        sampler.set_epoch(epoch)
        for key in sampler:
            sid = views.entries[key[1]]["id"]
            target = views[key]["inputs"][2]
            assert target.argmax().item() == train[sid] and target.sum() == 1  # one-hot of its own label
            loaded[sid] += 1
    assert set(loaded) <= set(train) and not set(loaded) & held_out


def test_sidecar_records_labels_consumed_and_eval_of_a_consumed_task_is_not_transfer(brain_root, tmp_path):
    from medssl_bench.downstream.families import get_family

    ws = Workspace(tmp_path / "ws")
    common = ["--workspace", str(ws.root), "--data-root", str(brain_root)]
    assert main(["pretrain", "--method", "ark", *common, "--labels-from", "brain_tumor", "--labels-from", "phantom_mr",
                 *TINY, "--epochs", "1", "--name", "ark-brain"]) == 0
    sidecar = json.loads((ws.runs / "ark-brain" / "backbone.json").read_text())
    prepared = get_family("classification").load(brain_root / "brain_tumor")
    assert sidecar["category"] == "supervised"
    assert sidecar["labels_consumed"][0] == {
        "dataset": "brain_tumor", "split": "train", "n_images": len(prepared.split("train")),
        "content_hash": prepared.meta["content_hash"], "classes": prepared.classes, "task": "multiclass",
        "synthetic": True}
    assert sidecar["labels_consumed"][1]["dataset"] == "phantom_mr"

    assert main(["eval", "--checkpoint", "ark-brain,random", "--task", "brain_tumor", "--protocol", "knn",
                 "--seeds", "1", "--image-size", "32", "--jobs", "1", *common]) == 0
    store = ResultsStore.open(None, ws)
    records = {e["checkpoint_id"]: e for e in store.evaluations()}
    assert {e["status"] for e in records.values()} == {"done"}
    ark = next(e for cid, e in records.items() if not cid.startswith("random"))
    assert ark["provenance"]["transfer"] is False and "brain_tumor" in ark["provenance"]["transfer_reason"]
    assert records["random-resnet18"]["provenance"]["transfer"] is True


def test_bad_label_input_is_one_clear_line(tmp_path, capsys):
    ws = ["--workspace", str(tmp_path / "ws")]
    cases = [(["--method", "ark", *TINY], "pass --labels-from"),
             (["--method", "ark", "--labels-from", "nope", *TINY], "--labels-from nope"),
             (["--method", "ark", "--labels-from", "phantom_ct", "--batch-size", "256"], "fewer than --batch-size"),
             (["--method", "simclr", "--corpus", "x", "--labels-from", "phantom_ct"], "drop --labels-from")]
    for args, expected in cases:
        capsys.readouterr()
        assert main(["pretrain", *ws, *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
