"""The paper's detection metric, AP at IoU 0.5 (LVM-Med Fig. 4; repo: mmdet's COCO bbox mAP_50), plus
COCO mAP@[.5:.95], through mmdet's CocoMetric and pycocotools' COCOeval.

`PaperDetMetric` is mmdet's CocoMetric (its ground truth loading, category mapping and official
numbers, which mmdet rounds to 3 decimals) with one more COCOeval pass over the same detections
for the unrounded values and what a leaderboard needs for confidence intervals: per-class AP50 and,
per test image, its ground-truth count per class and each detection as [class, score, matched at
IoU 0.5] (resampling images and recomputing AP from these gives a bootstrap CI).

`ap50` scores every test image, negatives (images without boxes, VinDr's "No finding") included,
so their false positives count. `ap50_positives` is a second COCOeval pass restricted to the images
with at least one ground-truth box: LVM-Med's VinDr test set holds only such images (its
convert_to_coco.py drops "No finding"), so that is the number to set beside the paper's. With no
negative image the two are equal.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from medssl_bench.downstream import mmcv_ops

mmcv_ops.install()  # before mmdet.evaluation imports mmcv.ops: CPU stand-in unless compiled mmcv exists

from mmdet.evaluation import CocoMetric  # noqa: E402
from mmdet.registry import METRICS  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

IOU50 = 0  # index of IoU 0.5 in COCOeval's default thresholds (.5:.05:.95)


def coco_scores(coco_gt, detections: list[dict], img_ids: list[int], cat_ids: list[int]) -> dict:
    """AP50, mAP, per-class AP50 and per-image matches of `detections` (COCO result dicts) against
    `coco_gt` (a pycocotools COCO). No detection at all scores 0."""
    per_image = {i: {"gt": {}, "detections": []} for i in img_ids}
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=img_ids, catIds=cat_ids)):
        counts = per_image[ann["image_id"]]["gt"]
        counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    if not detections:
        return {"ap50": 0.0, "map": 0.0, "per_class": {c: 0.0 for c in cat_ids}, "per_image": per_image}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary table
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        evaluator.params.imgIds, evaluator.params.catIds = list(img_ids), list(cat_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    n_area, n_img = len(evaluator.params.areaRng), len(evaluator.params.imgIds)
    for k, cat in enumerate(evaluator.params.catIds):
        for i, img in enumerate(evaluator.params.imgIds):
            found = evaluator.evalImgs[k * n_area * n_img + i]  # area range "all" comes first
            if found is None:
                continue
            matched = found["dtMatches"][IOU50] > 0
            per_image[img]["detections"] += [[cat, round(float(s), 5), bool(m)]
                                             for s, m in zip(found["dtScores"], matched)]
    precision = evaluator.eval["precision"][IOU50, :, :, 0, -1]  # (recall points, classes): area all, 100 dets
    per_class = {cat: float(np.mean(p[p > -1])) if np.any(p > -1) else float("nan")
                 for cat, p in zip(evaluator.params.catIds, precision.T)}  # nan: class absent from these images
    return {"ap50": float(evaluator.stats[1]), "map": float(evaluator.stats[0]), "per_class": per_class,
            "per_image": per_image}


@METRICS.register_module()
class PaperDetMetric(CocoMetric):
    """mmdet's CocoMetric (bbox) keeping the full, unrounded result of its last evaluation in `.last`."""

    default_prefix = ""  # keys stay plain ("ap50"): the best-epoch hook looks them up

    def __init__(self, ann_file: str, classes: list[str], **kwargs):
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while loading the file
            super().__init__(ann_file=ann_file, metric="bbox", **kwargs)
        self.classes, self.last = list(classes), None

    def compute_metrics(self, results: list) -> dict:
        with contextlib.redirect_stdout(io.StringIO()):
            official = super().compute_metrics(results)  # also sets self.cat_ids / self.img_ids
        detections = []
        for _, pred in results:
            for (x0, y0, x1, y1), score, label in zip(pred["bboxes"].tolist(), pred["scores"].tolist(),
                                                      pred["labels"].tolist()):
                detections.append({"image_id": pred["img_id"], "category_id": self.cat_ids[label],
                                   "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
        scored = coco_scores(self._coco_api, detections, self.img_ids, self.cat_ids)
        positive_ids = [i for i in self.img_ids if self._coco_api.getAnnIds(imgIds=[i], catIds=self.cat_ids)]
        positive = set(positive_ids)
        positives = coco_scores(self._coco_api, [d for d in detections if d["image_id"] in positive],
                                positive_ids, self.cat_ids) if positive_ids else {"ap50": 0.0, "map": 0.0}
        names = {c["id"]: c["name"] for c in self._coco_api.loadCats(self.cat_ids)}
        per_case = []
        for img_id, found in scored["per_image"].items():
            info = self._coco_api.imgs[img_id]
            per_case.append({"id": info.get("bench_id", str(img_id)),
                             "gt": {names[c]: n for c, n in found["gt"].items()},
                             "detections": [[names[c], s, m] for c, s, m in found["detections"]]})
        metrics = {"ap50": scored["ap50"], "map": scored["map"], "n_images": len(per_case),
                   "ap50_positives": positives["ap50"], "map_positives": positives["map"],
                   "n_images_positives": len(positive_ids),
                   "n_detections": len(detections),
                   **{f"mmdet_{k}": v for k, v in official.items() if k in ("bbox_mAP", "bbox_mAP_50")}}
        self.last = {"metric": "ap50", "value": scored["ap50"], "metrics": metrics,
                     "per_class": {names[c]: {"ap50": None if np.isnan(v) else v}
                                   for c, v in scored["per_class"].items()},
                     "per_case": per_case}
        return {"ap50": scored["ap50"], "map": scored["map"]}
