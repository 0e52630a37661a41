"""Detection tasks (VinDr-CXR, Kvasir polyps; BCCD as an extra) through mmdetection.

Protocol (LVM-Med App. B; repo: object_detection/command.sh + base_config_track.py): Faster R-CNN
R50-FPN (downstream.detection.model) whose ResNet is the pretrained one, fine-tuned with Adam and
gradient-norm clip 1, no warm-up; images resized to the protocol's side keeping their aspect
(padded to a multiple of 32), random horizontal flip. Validated every epoch; the best-validation
epoch is tested (the repo tested its last epoch; every `bench` family tests its best-val epoch).
The optional `paper_finetune` protocol is the repo's own recipe: the same schedule, mmdet's
`frozen_stages=1, norm_eval=True` backbone and the last epoch tested (Protocol.frozen_stages,
.norm_eval, .test_epoch; recorded in the result's protocol config).
Scored by AP at IoU 0.5 over the test images, mAP@[.5:.95] beside it (downstream.detection.metrics).
Images without boxes (VinDr's "No finding") stay in every split as negatives. Label fractions
subsample training images. Left out from the repo's pipeline: Albumentations'
RandomSizedBBoxSafeCrop and the class-balanced oversampling (ClassBalancedDataset, thr 0.4).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from mmengine.registry import DefaultScope

from medssl_bench.downstream.datasets.canonical_det import DetectionDataset
from medssl_bench.downstream.detection.metrics import PaperDetMetric
from medssl_bench.downstream.detection.model import build_detector
from medssl_bench.downstream.registry import Protocol, Task
from medssl_bench.harness.data import derived_seed
from medssl_bench.harness.errors import UserError

from mmdet.datasets import CocoDataset  # noqa: E402  (after detection.model installed the mmcv ops stand-in)

META_KEYS = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction")


def coco_split(data: DetectionDataset, split: str, size: int, *, train: bool,
               indices: list[int] | None = None) -> CocoDataset:
    """One split of a prepared dataset as mmdet's CocoDataset, with the protocol's pipeline."""
    resize = dict(type="Resize", scale=(size, size), keep_ratio=True)
    boxes = dict(type="LoadAnnotations", with_bbox=True)
    steps = [boxes, resize, dict(type="RandomFlip", prob=0.5)] if train else [resize, boxes]
    with DefaultScope.overwrite_default_scope("mmdet"), contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
        return CocoDataset(data_root=str(data.root), ann_file=str(data.annotation_file(split)),
                           data_prefix=dict(img=""), metainfo=dict(classes=tuple(data.classes)),
                           filter_cfg=dict(filter_empty_gt=False), test_mode=not train, indices=indices,
                           pipeline=[dict(type="LoadBenchImage"), *steps,
                                     dict(type="PackDetInputs", meta_keys=META_KEYS)])


def image_fraction(n: int, fraction: float, seed: int) -> list[int] | None:
    """Indices of a seeded `fraction` of n training images (at least one); None keeps all."""
    if fraction >= 1.0:
        return None
    keep = max(1, int(np.floor(n * fraction + 0.5)))
    return sorted(np.random.default_rng(derived_seed(seed, 3)).permutation(n)[:keep].tolist())


def run_job(task: Task, protocol: Protocol, data: DetectionDataset, ref, *, label_fraction: float, seed: int,
            device: torch.device, work_root: Path, cache=None) -> dict:
    """One evaluation: fine-tune the detector, test its best-val epoch (paper_finetune: its last).
    Returns {"val": ..., "test": ..., "selected": ..., "n_train": ...}."""
    from medssl_bench.downstream.finetuning import fit_best_on_val

    n_train = len(data.split("train"))
    for name in ("train", "val", "test"):
        if not data.split(name):
            raise UserError(f"the {name} split of {data.name} is empty; re-prepare it with more images", data.root)
    indices = image_fraction(n_train, label_fraction, seed)
    size = protocol.image_size
    torch.manual_seed(derived_seed(seed, 0x5EED))  # random init (and the heads) differ per seed
    model = build_detector(ref.backbone, len(data.classes), ref=ref, rois_per_image=protocol.rois_per_image,
                           proposals=protocol.proposals, frozen_stages=protocol.frozen_stages,
                           norm_eval=protocol.norm_eval)
    metric = lambda split: PaperDetMetric(str(data.annotation_file(split)), data.classes)  # noqa: E731
    out = fit_best_on_val(
        model, coco_split(data, "train", size, train=True, indices=indices),
        coco_split(data, "val", size, train=False), coco_split(data, "test", size, train=False),
        val_metric=metric("val"), test_metric=metric("test"), key=task.metric, epochs=protocol.epochs,
        lr=protocol.lr, weight_decay=protocol.weight_decay, batch_size=protocol.batch_size, seed=seed,
        work_root=work_root, collate="pseudo_collate", scope="mmdet", test_epoch=protocol.test_epoch or "best_val")
    out.pop("trained")
    out["n_train"] = n_train if indices is None else len(indices)
    return out
