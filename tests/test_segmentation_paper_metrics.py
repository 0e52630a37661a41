"""Issue 18: the paper's Dice at the protocol size beside the native one, prostate Dice per volume
beside per slice, and the 3D quick profile trained on the scored target only (binary)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_bench.downstream.registry import get_task
from medssl_bench.downstream.segmentation.metrics import PaperSegMetric, overlap_counts, resize_nearest, score


def _mask(h, w, pixels):
    m = torch.zeros(h, w, dtype=torch.long)
    for y, x in pixels:
        m[y, x] = 1
    return m


def _evaluate(metric, samples):
    from mmengine.evaluator import Evaluator

    evaluator = Evaluator([metric])
    evaluator.process(samples, {})
    return evaluator.evaluate(len(samples))


def test_dice_at_protocol_size_scores_the_small_prediction_against_the_nearest_resized_truth():
    # 8x8 truth: rows 1-2, cols 1-2 (4 px). Nearest resize to 4x4 with skimage's order-0 rule takes
    # input pixel floor((i + 0.5) * 2) = 2i + 1 -> rows/cols 1, 3, 5, 7: the small truth is (0, 0) only.
    truth = _mask(8, 8, [(1, 1), (1, 2), (2, 1), (2, 2)])
    assert resize_nearest(truth, (4, 4)).nonzero().tolist() == [[0, 0]]
    # (torch's mode="nearest" / cv2 INTER_NEAREST would take rows/cols 0, 2, 4, 6: (1, 1) instead)
    small_pred = _mask(4, 4, [(0, 0), (0, 1)])
    # native prediction = the small one upsampled: rows 0-1, cols 0-3 (8 px), 2 px shared with the truth
    native_pred = small_pred.repeat_interleave(2, 0).repeat_interleave(2, 1)
    empty8, empty4 = torch.zeros(8, 8, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long)
    samples = [{"pred_sem_seg": {"data": native_pred[None]}, "pred_at_size": {"data": small_pred[None]},
                "gt_sem_seg": {"data": truth[None]}, "sample_id": "a", "case": "a"},
               {"pred_sem_seg": {"data": empty8[None]}, "pred_at_size": {"data": empty4[None]},
                "gt_sem_seg": {"data": empty8[None]}, "sample_id": "b", "case": "b"}]
    metric = PaperSegMetric("dice", ["background", "lesion"])
    assert _evaluate(metric, samples) == pytest.approx({"dice": (2 * 2 / (8 + 4) + 1.0) / 2})  # native unchanged
    last = metric.last
    assert [c["dice_at_size"] for c in last["per_case"]] == pytest.approx([2 * 1 / (2 + 1), 1.0])  # empty/empty = 1
    assert last["metrics"]["dice_at_size"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert last["metrics"]["dice_at_size"] != pytest.approx(last["metrics"]["dice"])
    # without a small prediction (e.g. an older model) nothing is made up
    plain = PaperSegMetric("dice", ["background", "lesion"])
    _evaluate(plain, [{k: v for k, v in samples[0].items() if k != "pred_at_size"}])
    assert "dice_at_size" not in plain.last["metrics"]


def test_prostate_records_the_dice_per_volume_beside_the_dice_per_slice():
    # volume v: slice 0 truth 2 px, prediction 2 px, 1 shared (Dice 0.5); slice 1 empty/empty (1.0)
    # -> per slice (0.5 + 1) / 2 for v, per volume I = 1, P = 2, T = 2: 0.5. Volume w: perfect (1.0).
    gt0, pr0 = _mask(2, 4, [(0, 0), (0, 1)]), _mask(2, 4, [(0, 1), (0, 2)])
    empty = torch.zeros(2, 4, dtype=torch.long)
    rows = [{"id": "v0", "case": "v", "counts": overlap_counts(pr0, gt0, (1,), 2)},
            {"id": "v1", "case": "v", "counts": overlap_counts(empty, empty, (1,), 2)},
            {"id": "w0", "case": "w", "counts": overlap_counts(gt0, gt0, (1,), 2)}]
    result = score(rows, "dice", ["background", "prostate"])
    assert result["value"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert result["metrics"]["dice_3d"] == pytest.approx((0.5 + 1.0) / 2)
    task = get_task("prostate_hk")
    assert task.metric == "dice" and {"dice_3d", "dice_at_size"} <= set(task.metrics)
    assert "dice_at_size" in get_task("drive").metrics and "dice_at_size" not in get_task("brats").metrics


def test_3d_quick_profile_trains_the_scored_target_only_and_records_it():
    for name in ("brats", "mmwhs_ct", "mmwhs_mri"):
        task = get_task(name)
        quick, paper = task.protocol("finetune", "quick"), task.protocol("finetune", "paper")
        assert quick.target_only is True and paper.target_only is False  # the paper trains all classes
        assert quick.as_dict()["target_only"] is True and paper.as_dict()["target_only"] is False
        assert "scored target only" in quick.source
    for name in ("busi", "prostate_hk", "fgadr", "vindr_cxr"):  # not a property of the other families
        assert "target_only" not in get_task(name).protocol(get_task(name).protocols[0], "quick").as_dict()


def test_binary_model_is_scored_as_the_target_class_of_the_full_class_truth():
    from types import SimpleNamespace

    from medssl_bench.downstream.segmentation.run import target_labels

    data = SimpleNamespace(classes=["background", "lv", "la", "rv"], target_classes=(2,))
    assert target_labels(data) == (["background", "la"], {1: 0, 2: 1, 3: 0}, 2)
    brats = SimpleNamespace(classes=["background", "ncr", "ed", "et"], target_classes=(1, 2, 3))
    assert target_labels(brats) == (["background", "ncr+ed+et"], {2: 1, 3: 1}, 1)

    truth = torch.tensor([[2, 2, 1, 0], [3, 0, 0, 0]])   # la (target) 2 px, lv 1 px, rv 1 px
    binary = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]])  # the model's 1 = la
    metric = PaperSegMetric("iou_3d", data.classes, (2,), binary_as=2)
    assert _evaluate(metric, [{"pred_sem_seg": {"data": binary[None]}, "gt_sem_seg": {"data": truth[None]},
                               "sample_id": "v0", "case": "v"}]) == pytest.approx({"iou_3d": 1 / 3})
    per_class = metric.last["per_class"]
    assert per_class["la"]["iou_3d"] == pytest.approx(1 / 3) and per_class["lv"]["iou_3d"] == 0.0
