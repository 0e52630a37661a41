"""Segmentation metrics exactly as LVM-Med computes them (docs/tasks.md).

- 2D tasks (ISIC, JSRT, Kvasir, DRIVE, BUSI) and the prostate sites: Dice of the foreground per
  image, averaged over images; an image with an empty ground truth and an empty prediction scores
  1 (the repo's convention).
- 3D tasks (BraTS, MMWHS): slice predictions are stacked per volume and the IoU of the target is
  computed over the whole volume, then averaged over volumes.

mmseg's own IoUMetric aggregates intersections over the whole dataset (one number, no per-image
mean), which is a different quantity; `PaperSegMetric` is the paper's metric as an mmengine metric
(registered in mmseg's METRICS), and it keeps per-image / per-volume values for confidence intervals.
The target is the union of a task's target classes (1 for binary tasks; BraTS whole tumour {1,2,3};
MMWHS left atrium {2}); per-structure values are reported beside it.

Two scoring resolutions (docs/tasks.md "Which Dice compares with the paper's"):
- `dice`: at the original image resolution (mmseg resizes the logits back to the full-size mask).
- `dice_at_size`: at the protocol's network size, as LVM-Med scores (its dataloader/dataset_ete.py
  resizes the ground truth with skimage `resize(order=0, anti_aliasing=False)` to 224/256/512 and
  evaluate.py takes the per-image Dice there): the network's own prediction at that size (before
  mmseg's resize, `pred_at_size`, kept by downstream.segmentation.model.BenchEncoderDecoder) against
  the ground truth nearest-resized to it, same per-image rule (empty/empty = 1). The resize is
  torch's `interpolate(mode="nearest-exact")`: output pixel i takes input pixel floor((i + 0.5) * in/out),
  the pixel-centre rule of skimage's order-0 warp (input coordinate (i + 0.5) * in/out - 0.5, rounded).
  `mode="nearest"` and cv2's INTER_NEAREST take floor(i * in/out) instead, half an output pixel off.
Prostate (Dice per slice over every slice of the test volumes) records the per-volume Dice
`dice_3d` beside it (slice counts summed per volume, then averaged over volumes).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmseg.registry import METRICS


def overlap_counts(pred: torch.Tensor, gt: torch.Tensor, target_classes, num_classes: int) -> np.ndarray:
    """(num_classes, 3) int64 rows [intersection, predicted, true] pixel counts: row 0 for the
    target (union of `target_classes`), row c for foreground class c. Pixels labelled 255 (padding,
    ignore) are left out."""
    valid = gt != 255
    pred, gt = pred[valid], gt[valid]
    rows = np.zeros((num_classes, 3), np.int64)
    targets = torch.as_tensor(list(target_classes), device=pred.device)
    for c in range(num_classes):
        p, g = (torch.isin(pred, targets), torch.isin(gt, targets)) if c == 0 else (pred == c, gt == c)
        rows[c] = (int((p & g).sum()), int(p.sum()), int(g.sum()))
    return rows


def resize_nearest(mask: torch.Tensor, size) -> torch.Tensor:
    """`mask` (H, W) nearest-resized to `size` (h, w) with skimage's order-0 rule (module docstring)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    out = torch.nn.functional.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest-exact")
    return out[0, 0].to(mask.dtype)


def dice(inter, pred, true) -> float:
    return 1.0 if pred + true == 0 else 2.0 * inter / (pred + true)


def iou(inter, pred, true) -> float:
    union = pred + true - inter
    return 1.0 if union == 0 else inter / union


def score(rows: list[dict], metric: str, classes: list[str]) -> dict:
    """The result of one split. `rows`: one per image, {"id", "case", "counts": overlap_counts}.
    metric "dice": mean per-image Dice; "iou_3d": mean per-volume IoU (counts summed over a case's
    slices). Both views are computed; the other one is reported beside the paper's."""
    per_image = [{"id": r["id"], "case": r["case"], "dice": dice(*r["counts"][0]), "iou": iou(*r["counts"][0])}
                 for r in rows]
    at_size = bool(rows) and all(r.get("counts_at_size") is not None for r in rows)
    if at_size:  # the paper's scoring resolution (module docstring)
        for p, r in zip(per_image, rows):
            p["dice_at_size"] = dice(*r["counts_at_size"][0])
    volumes: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((len(classes), 3), np.int64))
    for r in rows:
        volumes[r["case"]] += r["counts"]
    per_volume = [{"id": case, "iou": iou(*c[0]), "dice": dice(*c[0]),
                   "iou_per_class": [iou(*c[k]) for k in range(1, len(classes))]} for case, c in volumes.items()]
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    metrics = {"dice": mean([p["dice"] for p in per_image]), "iou": mean([p["iou"] for p in per_image]),
               "iou_3d": mean([v["iou"] for v in per_volume]), "dice_3d": mean([v["dice"] for v in per_volume]),
               "n_images": len(per_image), "n_volumes": len(per_volume)}
    if at_size:
        metrics["dice_at_size"] = mean([p["dice_at_size"] for p in per_image])
    if len(classes) > 2:  # e.g. MMWHS all seven structures, BraTS sub-regions
        metrics["iou_3d_all"] = mean([float(np.mean(v["iou_per_class"])) for v in per_volume])
    if metric == "iou_3d":
        per_class = {classes[k]: {"iou_3d": mean([v["iou_per_class"][k - 1] for v in per_volume])}
                     for k in range(1, len(classes))}
        per_case = [{k: v[k] for k in ("id", "iou", "dice")} for v in per_volume]
    else:
        per_class = {classes[k]: {"dice": mean([dice(*r["counts"][k]) for r in rows])} for k in range(1, len(classes))}
        per_case = per_image
    return {"metric": metric, "value": metrics[metric], "metrics": metrics, "per_class": per_class,
            "per_case": per_case}


@METRICS.register_module()
class PaperSegMetric(BaseMetric):
    """mmengine metric over mmseg predictions: the paper's Dice / 3D IoU (see module docstring).
    The full result of the last evaluation (per image / per volume too) is kept in `self.last`."""

    default_prefix = ""  # metric keys stay plain ("dice", "iou_3d"): the best-epoch hook looks them up

    def __init__(self, metric: str, classes: list[str], target_classes=(1,), binary_as: int | None = None, **kwargs):
        """`binary_as`: the predictions come from a binary (target vs background) model, and a
        predicted 1 is scored as this class of `classes` (Protocol.target_only)."""
        super().__init__(**kwargs)
        self.metric, self.classes, self.target_classes, self.last = metric, list(classes), tuple(target_classes), None
        self.binary_as = binary_as

    def process(self, data_batch, data_samples) -> None:
        for sample in data_samples:
            as_class = (lambda p: p) if self.binary_as is None else (lambda p: (p == 1).long() * self.binary_as)
            pred = as_class(sample["pred_sem_seg"]["data"][0])
            gt = sample["gt_sem_seg"]["data"][0].to(pred.device)
            counts_at_size = None
            if sample.get("pred_at_size") is not None:  # the prediction at the network's input size
                small = as_class(sample["pred_at_size"]["data"][0].to(pred.device))
                counts_at_size = overlap_counts(small, resize_nearest(gt, small.shape[-2:]), self.target_classes,
                                                len(self.classes))
            self.results.append({"id": sample.get("sample_id", str(len(self.results))),
                                 "case": sample.get("case") or sample.get("sample_id", str(len(self.results))),
                                 "counts": overlap_counts(pred, gt, self.target_classes, len(self.classes)),
                                 "counts_at_size": counts_at_size})

    def compute_metrics(self, results: list) -> dict:
        self.last = score(results, self.metric, self.classes)
        return {self.metric: self.last["value"]}
