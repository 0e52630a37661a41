"""Segmentation family: the paper's metrics by hand, the mmseg model from a bench checkpoint, one job end to end."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medssl_bench.downstream.datasets.canonical_seg import SegItem, load_segmentation_dataset, write_segmentation_dataset
from medssl_bench.downstream.registry import get_task
from medssl_bench.downstream.segmentation.metrics import PaperSegMetric, overlap_counts, score
from medssl_bench.harness.checkpoint import save_backbone
from medssl_bench.harness.checkpoint_index import random_checkpoint
from medssl_bench.harness.errors import UserError


def _mask(h, w, pixels):
    m = torch.zeros(h, w, dtype=torch.long)
    for y, x, v in pixels:
        m[y, x] = v
    return m


def test_dice_per_image_matches_hand_computation_including_empty_masks():
    # image a: truth 4 px, prediction 2 px both inside -> 2*2/(2+4); b: both empty -> 1; c: truth empty, 3 px predicted -> 0
    gt_a = _mask(4, 4, [(0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 1)])
    pr_a = _mask(4, 4, [(0, 0, 1), (1, 1, 1)])
    empty = torch.zeros(4, 4, dtype=torch.long)
    pr_c = _mask(4, 4, [(3, 3, 1), (3, 2, 1), (2, 3, 1)])
    rows = [{"id": i, "case": i, "counts": overlap_counts(p, g, (1,), 2)}
            for i, p, g in (("a", pr_a, gt_a), ("b", empty, empty), ("c", pr_c, empty))]
    result = score(rows, "dice", ["background", "lesion"])
    assert [c["dice"] for c in result["per_case"]] == pytest.approx([4 / 6, 1.0, 0.0])
    assert result["value"] == pytest.approx((4 / 6 + 1.0 + 0.0) / 3)
    assert result["metrics"]["iou"] == pytest.approx((2 / 4 + 1.0 + 0.0) / 3)


def test_iou_3d_stacks_the_slices_of_each_volume_and_ignores_padding():
    # volume v: slice 0 truth 2 px / predicted 2 px, 1 shared; slice 1 truth 2 px, nothing predicted
    # -> I = 1, P = 2, T = 4: IoU = 1 / (2 + 4 - 1) = 0.2 (a per-slice mean would give 1/3 / 2)
    s0_gt, s0_pr = _mask(2, 4, [(0, 0, 1), (0, 1, 1)]), _mask(2, 4, [(0, 1, 1), (0, 2, 1)])
    s1_gt = _mask(2, 4, [(1, 0, 1), (1, 1, 1)])
    s1_gt[1, 3] = 255  # padding / ignore: must not count
    s1_pr = torch.zeros(2, 4, dtype=torch.long)
    s1_pr[1, 3] = 1
    # volume w: a perfect prediction of a 3-class map, target classes {1, 2}
    w_gt = _mask(2, 4, [(0, 0, 1), (0, 1, 2)])
    rows = [{"id": "v0", "case": "v", "counts": overlap_counts(s0_pr, s0_gt, (1, 2), 3)},
            {"id": "v1", "case": "v", "counts": overlap_counts(s1_pr, s1_gt, (1, 2), 3)},
            {"id": "w0", "case": "w", "counts": overlap_counts(w_gt, w_gt, (1, 2), 3)}]
    result = score(rows, "iou_3d", ["background", "a", "b"])
    per_volume = {c["id"]: c["iou"] for c in result["per_case"]}
    assert per_volume == pytest.approx({"v": 0.2, "w": 1.0})
    assert result["value"] == pytest.approx(0.6)
    assert result["metrics"]["dice_3d"] == pytest.approx((2 / 6 + 1.0) / 2)


def test_metric_runs_as_an_mmengine_metric_on_mmseg_samples():
    from mmengine.evaluator import Evaluator

    metric = PaperSegMetric("dice", ["background", "lesion"])
    gt = _mask(3, 3, [(1, 1, 1)])
    samples = [{"pred_sem_seg": {"data": gt[None]}, "gt_sem_seg": {"data": gt[None]}, "sample_id": "x", "case": "x"},
               {"pred_sem_seg": {"data": torch.ones(1, 3, 3, dtype=torch.long)}, "gt_sem_seg": {"data": gt[None]},
                "sample_id": "y", "case": "y"}]
    evaluator = Evaluator([metric])
    evaluator.process(samples, {})
    assert evaluator.evaluate(2) == pytest.approx({"dice": (1.0 + 2 / 10) / 2})
    assert [c["id"] for c in metric.last["per_case"]] == ["x", "y"]


# ----------------------------------------------------------------------------- model
def _blob_dataset(root, n_train=16, n_val=4, n_test=4, size=48, domains=("",)):
    """Bright-ish discs of random size and place on noise: learnable in a few epochs."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    items = []
    for domain in domains:
        for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
            for i in range(count):
                cy, cx, r = rng.uniform(12, size - 12, 2).tolist() + [rng.uniform(5, 10)]
                mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.uint8)
                img = np.clip(rng.normal(90, 25, (size, size)) + 90 * mask, 0, 255).astype(np.uint8)
                items.append(SegItem(f"{domain}{split}{i}", img, mask, split, domain=domain))
    folder = write_segmentation_dataset(root, "blobs", "2d", ["background", "blob"], items, source={"src": "test"},
                                        split_method="fixture", seed=0, synthetic=True)
    return load_segmentation_dataset(folder)


def test_segmentor_from_a_bench_checkpoint_loads_it_and_its_loss_falls(tmp_path):
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    from medssl_bench.downstream.segmentation.model import build_segmentor
    from medssl_bench.harness.backbones import build_backbone

    torch.manual_seed(1)
    backbone, _ = build_backbone("resnet18")
    weights = save_backbone(backbone, tmp_path / "backbone.safetensors", {"method": "test", "backbone": "resnet18"})
    model = build_segmentor("resnet18", 2, checkpoint=str(weights))
    assert torch.equal(model.backbone.resnet.layer3[0].conv1.weight, backbone.layer3[0].conv1.weight)

    rng = np.random.default_rng(0)
    images, samples = [], []
    for _ in range(4):
        mask = np.zeros((64, 64), np.int64)
        y, x = rng.integers(8, 40, 2)
        mask[y:y + 16, x:x + 16] = 1
        images.append(torch.from_numpy(np.clip(rng.normal(100, 20, (3, 64, 64)) + 80 * mask, 0, 255).astype(np.uint8)))
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.from_numpy(mask)[None]))
        s.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(s)
    batch = model.data_preprocessor({"inputs": images, "data_samples": samples}, True)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(16):
        parts = model(**batch, mode="loss")
        loss = sum(v for k, v in parts.items() if "loss" in k)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert set(parts) >= {"decode.loss_ce", "decode.loss_dice"}
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    model.eval()
    with torch.no_grad():
        pred = model(**batch, mode="predict")
    assert pred[0].pred_sem_seg.data.shape == (1, 64, 64)


@pytest.mark.slow
def test_finetune_job_end_to_end_learns_and_records_per_case_values(tmp_path):
    from medssl_bench.downstream.segmentation.run import run_job
    from medssl_bench.downstream.segmentation.model import build_segmentor  # noqa: F401  (registers the modules)

    data = _blob_dataset(tmp_path / "data")
    task = get_task("busi")
    protocol = replace(task.protocol("finetune", "quick"), image_size=64, epochs=4, batch_size=4, lr=1e-3)
    ref = random_checkpoint("resnet18")
    out = run_job(task, protocol, data, ref, label_fraction=1.0, seed=0, device=torch.device("cpu"),
                  work_root=tmp_path / "work")
    assert out["n_train"] == 16 and 1 <= out["selected"]["epoch"] <= 4
    test = out["test"]
    assert test["metric"] == "dice" and 0.0 <= test["value"] <= 1.0
    assert sorted(c["id"] for c in test["per_case"]) == sorted(s.id for s in data.split("test"))
    assert test["value"] == pytest.approx(np.mean([c["dice"] for c in test["per_case"]]))
    assert out["val"]["value"] > 0.3  # discs on noise: 16 steps already find them

    half = run_job(task, replace(protocol, epochs=1), data, ref, label_fraction=0.5, seed=0,
                   device=torch.device("cpu"), work_root=tmp_path / "work")
    assert half["n_train"] == 8


def test_frozen_protocol_trains_the_decoder_only():
    from medssl_bench.downstream.segmentation.model import build_segmentor

    model = build_segmentor("resnet18", 2, frozen=True)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("backbone.") for n in trainable)
    assert not model.backbone.resnet.training  # BatchNorm statistics stay fixed too

    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample = SegDataSample(gt_sem_seg=PixelData(data=(torch.rand(1, 64, 64) > 0.5).long()))
    sample.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
    batch = model.data_preprocessor({"inputs": [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)] * 2,
                                     "data_samples": [sample, sample]}, True)
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sum(v for k, v in model(**batch, mode="loss").items() if "loss" in k).backward()
    optim.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decode_head.") for k in changed)  # weights and BN stats


def test_ood_task_trains_on_bmc_and_tests_on_its_site_and_names_a_missing_site(tmp_path):
    from medssl_bench.downstream.segmentation.run import run_job

    data = _blob_dataset(tmp_path / "data", n_train=4, n_val=2, n_test=3, size=32, domains=("BMC", "HK", "RUNMC"))
    task = get_task("prostate_hk")
    assert (task.train_domain, task.test_domain) == ("BMC", "HK")
    protocol = replace(task.protocol("finetune", "quick"), image_size=32, epochs=1)
    job = lambda name, seed: run_job(get_task(name), protocol, data, random_checkpoint("resnet18"),  # noqa: E731
                                     label_fraction=1.0, seed=seed, device=torch.device("cpu"),
                                     work_root=tmp_path / "work")
    out = job("prostate_hk", 0)
    assert out["n_train"] == 4 and not out["selected"]["reused_training"]
    assert {c["id"] for c in out["test"]["per_case"]} == {s.id for s in data.split("test", "HK")}
    # the paper's Dice at the protocol size (the model's own 32 px prediction) and the per-volume Dice beside it
    assert {"dice", "dice_at_size", "dice_3d"} <= set(out["test"]["metrics"])
    assert all(0.0 <= c["dice_at_size"] <= 1.0 for c in out["test"]["per_case"])
    # the next site trains the same model (BMC, same seed): it is trained once and tested twice
    runmc = job("prostate_runmc", 0)
    assert runmc["selected"]["reused_training"] and runmc["val"]["value"] == out["val"]["value"]
    assert {c["id"] for c in runmc["test"]["per_case"]} == {s.id for s in data.split("test", "RUNMC")}
    assert not job("prostate_runmc", 1)["selected"]["reused_training"]  # another seed trains anew
    with pytest.raises(UserError, match="site BIDMC is not in the prepared blobs data"):
        run_job(get_task("prostate_bidmc"), protocol, data, random_checkpoint("resnet18"), label_fraction=1.0,
                seed=0, device=torch.device("cpu"), work_root=tmp_path / "work")


def test_balanced_slices_key_on_the_scored_target_not_any_structure(tmp_path):
    from medssl_bench.downstream.segmentation.run import balanced_slices

    items = []
    for z in range(10):  # class 2 (the target) on slices 0-1, class 1 only on 2-5, nothing on 6-9
        mask = np.zeros((8, 8), np.uint8)
        if z < 6:
            mask[:2, :2] = 1
        if z < 2:
            mask[4:, 4:] = 2
        items.append(SegItem(f"v_{z}", np.full((8, 8), 50, np.uint8), mask, "train", case="v", slice=z))
    folder = write_segmentation_dataset(tmp_path, "vol", "3d", ["bg", "other", "target"], items, source={"src": "t"},
                                        split_method="fixture", seed=0, synthetic=True, target_classes=(2,))
    train = load_segmentation_dataset(folder).split("train")
    chosen = balanced_slices(train, (2,), seed=0)
    assert len(chosen) == 4 and {s.slice for s in chosen} >= {0, 1}
    assert chosen == balanced_slices(train, (2,), seed=0)  # drawn with the seed: reproducible
