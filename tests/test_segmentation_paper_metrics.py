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


def test_the_dice_term_and_target_weight_are_recorded_per_profile():
    """Paper: LVM-Med's batch Dice, unweighted; 2D quick: the per-image foreground Dice; 3D quick: batch
    Dice with the target weighted x10 in the cross-entropy. Every choice is in the recorded protocol."""
    for name in ("kvasir_seg", "brats", "prostate_hk"):
        paper = get_task(name).protocol("finetune", "paper").as_dict()
        assert paper["dice_loss"] == "batch" and "target_weight" not in paper
    assert get_task("kvasir_seg").protocol("finetune", "quick").as_dict()["dice_loss"] == "per_image_foreground"
    quick_3d = get_task("mmwhs_ct").protocol("finetune", "quick")
    assert quick_3d.as_dict()["dice_loss"] == "batch" and quick_3d.as_dict()["target_weight"] == 10.0
    assert "weighted x10.0" in quick_3d.source
    assert "dice_loss" not in get_task("fgadr").protocol("linear", "quick").as_dict()


def test_batch_dice_loss_equals_lvmmed_dice_by_hand():
    """Two 1x2 images, 2 classes, logits giving p(class 1) = 0.8 / 0.2 / 0.6 / 0.5 (softmax of
    [0, log 4], [0, log 1/4], [0, log 1.5], [0, 0]); labels [1, 0] and [0, 255] (255 ignored).
    Class 1 over the batch: inter 0.8, sum p 0.8 + 0.2 + 0.6 = 1.6, sum t 1 -> dice 1.6 / 2.6.
    Class 0: p = 0.2 / 0.8 / 0.4; inter 0.8 + 0.4 = 1.2, sum p 1.4, sum t 2 -> dice 2.4 / 3.4.
    A per-image Dice would differ: the second image has no class 1 and 0.6 predicted, a Dice of ~0."""
    from medssl_bench.downstream.segmentation.losses import BatchDiceLoss, batch_dice_loss

    log = np.log
    logits = torch.tensor([[[[0.0, 0.0]], [[log(4), log(0.25)]]], [[[0.0, 0.0]], [[log(1.5), 0.0]]]],
                          dtype=torch.float32)  # (N=2, C=2, H=1, W=2)
    target = torch.tensor([[[1, 0]], [[0, 255]]])
    eps = 1e-6
    dice1, dice0 = (1.6 + eps) / (2.6 + eps), (2.4 + eps) / (3.4 + eps)
    expected = 1 - (dice0 + dice1) / 2
    assert batch_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)
    assert batch_dice_loss(logits, target, include_background=False).item() == pytest.approx(1 - dice1, abs=1e-6)
    assert BatchDiceLoss(loss_weight=2.0)(logits, target, ignore_index=255).item() == pytest.approx(2 * expected,
                                                                                                    abs=1e-6)


def test_target_weight_reaches_the_cross_entropy_of_the_binary_model():
    from medssl_bench.downstream.segmentation.model import build_segmentor

    weighted = build_segmentor("resnet18", 2, class_weight=[1.0, 10.0])
    ce, dice = weighted.decode_head.loss_decode
    assert list(ce.class_weight) == [1.0, 10.0] and type(dice).__name__ == "BatchDiceLoss"
    plain = build_segmentor("resnet18", 2, dice_loss="per_image_foreground")
    assert plain.decode_head.loss_decode[0].class_weight is None
    assert type(plain.decode_head.loss_decode[1]).__name__ == "DiceLoss"
    with pytest.raises(ValueError, match="dice_loss"):
        build_segmentor("resnet18", 2, dice_loss="pooled")


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
