"""Detection family: AP50 by hand through mmdet's CocoMetric, the Faster R-CNN from a bench checkpoint, one job end to end."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from medssl_bench.downstream.datasets.canonical_det import BoxLedger, DetItem, load_detection_dataset, write_detection_dataset
from medssl_bench.downstream.registry import get_task
from medssl_bench.harness.checkpoint import save_backbone
from medssl_bench.harness.checkpoint_index import random_checkpoint


def _coco_file(path, images, boxes, classes):
    """A COCO ground-truth file: images [(id, w, h)], boxes [(image id, class id, x0, y0, x1, y1)]."""
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h, "bench_id": f"img{i}"} for i, w, h in images],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": (x1 - x0) * (y1 - y0), "iscrowd": 0} for k, (i, c, x0, y0, x1, y1) in enumerate(boxes, 1)],
        "categories": [{"id": k, "name": n} for k, n in enumerate(classes, 1)]}))
    return str(path)


def _pred(img_id, boxes, scores, labels):
    return {"img_id": img_id, "bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.long)}


def _evaluate(metric, preds):
    metric.dataset_meta = {"classes": tuple(metric.classes)}
    metric.results = [({}, p) for p in preds]  # mmdet's CocoMetric ignores the gt half when it has ann_file
    return metric.compute_metrics(metric.results)


def test_ap50_equals_the_hand_computed_101_point_value(tmp_path):
    from medssl_bench.downstream.detection.metrics import PaperDetMetric

    # two images, one polyp each, and a negative image. Ranked detections: 0.9 hit (img 1), 0.8 miss
    # (img 1, IoU 0), 0.7 hit (img 2). Precision/recall: (1, 1/2), (1/2, 1/2), (2/3, 1). COCO's
    # interpolated precision is 1 at recall <= 0.5 (51 of 101 points) and 2/3 above (50 points).
    ann = _coco_file(tmp_path / "gt.json", [(1, 100, 80), (2, 100, 80), (3, 100, 80)],
                     [(1, 1, 10, 10, 50, 50), (2, 1, 20, 20, 60, 40)], ["polyp"])
    metric = PaperDetMetric(ann, ["polyp"])
    preds = [_pred(1, [[11, 10, 50, 51], [60, 60, 90, 75]], [0.9, 0.8], [0, 0]),
             _pred(2, [[20, 21, 60, 40]], [0.7], [0]), _pred(3, [], [], [])]
    result = _evaluate(metric, preds)
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert result["ap50"] == pytest.approx(expected)
    last = metric.last
    assert last["metrics"]["mmdet_bbox_mAP_50"] == pytest.approx(round(expected, 3))  # mmdet's own number agrees
    assert {c["id"]: c["gt"] for c in last["per_case"]} == {"img1": {"polyp": 1}, "img2": {"polyp": 1}, "img3": {}}
    per_image = {c["id"]: c["detections"] for c in last["per_case"]}
    assert per_image["img1"] == [["polyp", 0.9, True], ["polyp", 0.8, False]] and per_image["img3"] == []

    # a false positive on the negative image with the top score: ranks (0.95 miss, 0.9 hit, 0.8 miss,
    # 0.7 hit) -> precision at recall 0.5 is 1/2, at recall 1 it is 2/4: AP = 0.5
    preds[2] = _pred(3, [[5, 5, 30, 30]], [0.95], [0])
    assert _evaluate(PaperDetMetric(ann, ["polyp"]), preds)["ap50"] == pytest.approx(0.5)



def test_ap50_on_the_positive_images_beside_all_images(tmp_path):
    """LVM-Med's VinDr test holds only images with findings: ap50_positives scores those alone.
    Two polyp images and a negative one. Detections: 0.9 hit (img 1), 0.8 false positive on the
    negative img 3, 0.7 hit (img 2). All images: precision/recall (1, 1/2), (1/2, 1/2), (2/3, 1) ->
    AP = (51 * 1 + 50 * 2/3) / 101. Positive images only: the 0.8 box is not scored, two hits
    ranked first -> precision 1 at every recall: AP = 1."""
    from medssl_bench.downstream.detection.metrics import PaperDetMetric

    ann = _coco_file(tmp_path / "gt.json", [(1, 100, 80), (2, 100, 80), (3, 100, 80)],
                     [(1, 1, 10, 10, 50, 50), (2, 1, 20, 20, 60, 40)], ["polyp"])
    metric = PaperDetMetric(ann, ["polyp"])
    result = _evaluate(metric, [_pred(1, [[11, 10, 50, 51]], [0.9], [0]), _pred(2, [[20, 21, 60, 40]], [0.7], [0]),
                                _pred(3, [[5, 5, 30, 30]], [0.8], [0])])
    metrics = metric.last["metrics"]
    assert result["ap50"] == metrics["ap50"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert metrics["ap50_positives"] == pytest.approx(1.0) and metrics["ap50_positives"] != metrics["ap50"]
    assert metrics["n_images"] == 3 and metrics["n_images_positives"] == 2
    assert metrics["map_positives"] >= metrics["map"]

def test_per_class_ap_and_a_class_absent_from_the_test_images(tmp_path):
    from medssl_bench.downstream.detection.metrics import PaperDetMetric

    ann = _coco_file(tmp_path / "gt.json", [(1, 64, 64)], [(1, 1, 0, 0, 20, 20), (1, 2, 30, 30, 60, 60)],
                     ["WBC", "RBC", "Platelets"])
    metric = PaperDetMetric(ann, ["WBC", "RBC", "Platelets"])
    # WBC found; RBC only boxed as WBC (a wrong class is a miss for both classes)
    result = _evaluate(metric, [_pred(1, [[0, 0, 20, 20], [30, 30, 60, 60]], [0.9, 0.8], [0, 0])])
    per_class = metric.last["per_class"]
    assert per_class["WBC"]["ap50"] == pytest.approx(1.0) and per_class["RBC"]["ap50"] == pytest.approx(0.0)
    assert per_class["Platelets"]["ap50"] is None  # no ground truth: undefined, not zero
    assert result["ap50"] == pytest.approx(0.5)  # COCO averages over the classes that have ground truth


def test_no_detection_at_all_scores_zero(tmp_path):
    from medssl_bench.downstream.detection.metrics import PaperDetMetric

    ann = _coco_file(tmp_path / "gt.json", [(1, 64, 64)], [(1, 1, 0, 0, 20, 20)], ["polyp"])
    metric = PaperDetMetric(ann, ["polyp"])
    assert _evaluate(metric, [_pred(1, [], [], [])]) == {"ap50": 0.0, "map": 0.0}
    assert metric.last["per_case"] == [{"id": "img1", "gt": {"polyp": 1}, "detections": []}]


def _square_batch(model, rng, n=4, size=96):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    images, samples = [], []
    for _ in range(n):
        img = np.clip(rng.normal(90, 15, (3, size, size)), 0, 255)
        x, y = rng.integers(8, size - 40, 2)
        img[:, y:y + 28, x:x + 28] = 230  # a bright square: the object
        images.append(torch.from_numpy(img.astype(np.uint8)))
        s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0)))
        s.gt_instances = InstanceData(bboxes=torch.tensor([[x, y, x + 28, y + 28]], dtype=torch.float32),
                                      labels=torch.tensor([0]))
        samples.append(s)
    return images, samples


def test_detector_from_a_bench_checkpoint_loads_it_trains_with_falling_loss_and_predicts_boxes(tmp_path):
    from medssl_bench.downstream.detection.model import build_detector
    from medssl_bench.harness.backbones import build_backbone

    torch.manual_seed(1)
    backbone, _ = build_backbone("resnet18")
    weights = save_backbone(backbone, tmp_path / "backbone.safetensors", {"method": "test", "backbone": "resnet18"})
    model = build_detector("resnet18", 1, checkpoint=str(weights), rois_per_image=64)
    assert torch.equal(model.backbone.resnet.layer3[0].conv1.weight, backbone.layer3[0].conv1.weight)
    assert model.roi_head.bbox_head.num_classes == 1 and model.train_cfg.rcnn.sampler.num == 64
    # fine-tuned as random init is: every layer trains, BatchNorm in training mode
    assert all(p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert model.backbone.resnet.layer1[0].bn1.training

    images, samples = _square_batch(model, np.random.default_rng(0))
    batch = model.data_preprocessor({"inputs": images, "data_samples": samples}, True)
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(12):
        parts = model(**batch, mode="loss")
        loss = sum(v if torch.is_tensor(v) else sum(v) for k, v in parts.items() if "loss" in k)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= set(parts)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    model.eval()
    with torch.no_grad():
        pred = model(**model.data_preprocessor({"inputs": images, "data_samples": samples}, False), mode="predict")
    boxes = pred[0].pred_instances.bboxes
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    assert torch.all(pred[0].pred_instances.labels == 0)


def test_bench_resnet_freezes_stages_as_mmdet_resnet_does():
    from medssl_bench.downstream.bench_backbone import BenchResNet

    trunk = BenchResNet("resnet18", out_indices=(1, 2, 3, 4), frozen_stages=1, norm_eval=True)
    assert not trunk.resnet.conv1.weight.requires_grad and not trunk.resnet.layer1[0].conv1.weight.requires_grad
    assert trunk.resnet.layer2[0].conv1.weight.requires_grad
    trunk.train()
    assert not trunk.resnet.layer1[0].bn1.training and not trunk.resnet.layer3[0].bn1.training
    assert [f.shape[1] for f in trunk(torch.zeros(1, 3, 64, 64))] == [64, 128, 256, 512]


def _square_dataset(root, n=24, size=96, seed=0):
    """Bright squares (class 0) and dark discs (class 1) on noise; a few negatives."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]

    def items():
        for i in range(n):
            img = np.clip(rng.normal(110, 12, (size, size)), 0, 255)
            boxes, labels = [], []
            for label in (0, 1)[: 0 if i % 6 == 5 else 2]:
                x, y, s = *rng.integers(4, size - 36, 2), int(rng.integers(18, 30))
                if label == 0:
                    img[y:y + s, x:x + s] = 235
                else:
                    img[(yy - y - s / 2) ** 2 + (xx - x - s / 2) ** 2 < (s / 2) ** 2] = 20
                boxes.append([x, y, x + s, y + s])
                labels.append(label)
            split = "train" if i < n * 2 // 3 else ("val" if i % 2 else "test")
            yield DetItem(f"im{i:02d}", img.astype(np.uint8), np.array(boxes, float).reshape(-1, 4), labels, split)

    folder = write_detection_dataset(root, "squares", ["square", "disc"], items(), source={"src": "test"},
                                     split_method="test", seed=seed, synthetic=True, ledger=BoxLedger())
    return load_detection_dataset(folder)


@pytest.mark.slow
def test_detection_job_end_to_end_records_ap50_and_per_image_matches(tmp_path):
    from medssl_bench.downstream.detection.run import run_job

    data = _square_dataset(tmp_path / "data")
    task = get_task("bccd")
    protocol = replace(task.protocol("finetune", "quick"), image_size=96, epochs=3, batch_size=4, lr=2e-4)
    out = run_job(task, protocol, data, random_checkpoint("resnet18"), label_fraction=1.0, seed=0,
                  device=torch.device("cpu"), work_root=tmp_path / "work")
    assert out["n_train"] == 16 and 1 <= out["selected"]["epoch"] <= 3
    test = out["test"]
    assert test["metric"] == "ap50" and 0.0 <= test["value"] <= 1.0 and 0.0 <= test["metrics"]["map"] <= test["value"]
    assert sorted(c["id"] for c in test["per_case"]) == sorted(r["id"] for r in data.split("test"))
    assert set(test["per_class"]) == {"square", "disc"}
    half = run_job(task, replace(protocol, epochs=1), data, random_checkpoint("resnet18"), label_fraction=0.5,
                   seed=0, device=torch.device("cpu"), work_root=tmp_path / "work")
    assert half["n_train"] == 8


def test_writer_refuses_a_box_the_adapter_did_not_admit(tmp_path):
    from medssl_bench.downstream.datasets.canonical_det import BoxLedger
    from medssl_bench.harness.errors import UserError

    item = DetItem("a", np.zeros((20, 30), np.uint8), np.array([[0, 0, 31, 10]], float), [0], "train")
    with pytest.raises(UserError, match="outside the 30x20 image"):
        write_detection_dataset(tmp_path, "d", ["x"], [item], source={}, split_method="", seed=0, synthetic=True)
    assert not (tmp_path / "d").exists()
    ledger = BoxLedger()
    assert ledger.admit([-2, 0, 10, 10], 30, 20, "f row 2").tolist() == [0, 0, 10, 10]
    assert ledger.admit([5, 5, 5, 9], 30, 20, "f row 3") is None
    assert ledger.admit([40, 0, 50, 10], 30, 20, "f row 4") is None
    assert [s["count"] for s in ledger.summary().values()] == [1, 1, 1]
    assert any("f row 3" in w for w in ledger.warnings())


@pytest.mark.slow
def test_eval_cli_runs_a_detection_task_and_records_its_provenance(tmp_path, capsys):
    from medssl_bench.harness.app.cli import main
    from medssl_bench.harness.store import ResultsStore
    from medssl_bench.harness.workspace import Workspace

    ws, raw = tmp_path / "ws", tmp_path / "raw"
    assert main(["data", "synth", "bccd", "--out", str(raw), "--n", "12", "--size", "96"]) == 0
    assert main(["data", "prepare", "bccd", "--src", str(raw), "--workspace", str(ws)]) == 0
    assert main(["eval", "--checkpoint", "random", "--task", "bccd", "--seeds", "1", "--workspace", str(ws),
                 "--jobs", "1"]) == 0
    assert "bccd" in capsys.readouterr().out
    store = ResultsStore.open(None, Workspace(ws))
    (test,) = store.results(task="bccd", split="test")
    data = load_detection_dataset(ws / "data" / "bccd")
    assert test["metric"] == "ap50" and set(test["metrics"]) >= {"ap50", "map", "mmdet_bbox_mAP_50"}
    assert sorted(c["id"] for c in test["per_case"]) == sorted(r["id"] for r in data.split("test"))
    config = test["protocol_config"]
    assert config["image_size"] == 128 and config["rois_per_image"] == 64 and config["proposals"] == 256
    assert test["provenance"]["data"]["synthetic"] is True
