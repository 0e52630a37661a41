"""The detection model through mmdetection 3: Faster R-CNN with FPN (mmdet's shipped
`_base_/models/faster-rcnn_r50_fpn.py`, the config LVM-Med fine-tuned, repo: object_detection/
base_config_track.py) with its ResNet replaced by `bench`'s backbone checkpoint.

`BenchResNet` and `LoadBenchImage` (downstream.bench_backbone) are registered in mmdet's registries,
so an mmdet config can name them: backbone=dict(type="BenchResNet", arch="resnet50", checkpoint=...,
out_indices=(1, 2, 3, 4)). The checkpoint is loaded by the backbone itself (harness.checkpoint_index),
so there is no `load_from` file with `backbone.`-prefixed keys as in LVM-Med's script.
Every checkpoint, random init included, is fine-tuned the same way: all layers trained, BatchNorm
in training mode. mmdet's R50 config (which LVM-Med used for its own weights) fixes the stem and
layer1 and the BatchNorm statistics instead (`frozen_stages=1, norm_eval=True`); that cannot serve
random init (fixed random filters), and giving pretrained weights another recipe than the baseline
would confound the comparison. Measured on synthetic data (the demo's SimCLR, quick profile, 3
seeds, test AP50): with the mmdet recipe the SimCLR trunk scored BCCD 47.9 and Kvasir 4.6, fine-tuned
alike 64.4 and 8.2, random init 65.3 and 19.2 (benchmarks/README.md).
The optional `paper_finetune` protocol (docs/protocols.md) builds that mmdet recipe on purpose:
`frozen_stages=1, norm_eval=True` for every checkpoint, random init included.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from mmengine.config import Config, ConfigDict

from medssl_bench.downstream import mmcv_ops

mmcv_ops.install()  # before mmdet.models imports mmcv.ops: CPU stand-in unless compiled mmcv exists

import mmdet  # noqa: E402
from mmdet.registry import MODELS, TRANSFORMS  # noqa: E402

from medssl_bench.downstream.bench_backbone import STAGE_CHANNELS, BenchResNet, LoadBenchImage  # noqa: E402
from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD  # noqa: E402

MODELS.register_module(module=BenchResNet)
TRANSFORMS.register_module(module=LoadBenchImage)
BASE_CONFIG = Path(mmdet.__file__).parent / ".mim" / "configs" / "_base_" / "models" / "faster-rcnn_r50_fpn.py"


def detector_config(arch: str, num_classes: int, *, ref=None, checkpoint: str | None = None,
                    rois_per_image: int | None = None, proposals: int | None = None,
                    frozen_stages: int | None = None, norm_eval: bool | None = None) -> ConfigDict:
    """mmdet's Faster R-CNN R50-FPN model config with `bench`'s backbone, `num_classes` classes and
    the pretraining's input normalisation (RGB uint8 in, as LoadBenchImage decodes).
    `rois_per_image` replaces the box head's 512 sampled RoIs per training image and `proposals`
    the RPN's 1000 proposals per image (training and test): the quick profile's CPU savings.
    `frozen_stages` / `norm_eval` (None: -1 / False, all trained) are mmdet's ResNet options."""
    cfg = Config.fromfile(str(BASE_CONFIG)).model
    cfg.backbone = ConfigDict(type="BenchResNet", arch=arch, ref=ref, checkpoint=checkpoint, out_indices=(1, 2, 3, 4),
                              frozen_stages=-1 if frozen_stages is None else int(frozen_stages),
                              norm_eval=bool(norm_eval))
    cfg.neck.in_channels = list(STAGE_CHANNELS[arch][1:])
    cfg.roi_head.bbox_head.num_classes = num_classes
    if rois_per_image:
        cfg.train_cfg.rcnn.sampler.num = int(rois_per_image)
    if proposals:
        cfg.train_cfg.rpn_proposal.max_per_img = cfg.test_cfg.rpn.max_per_img = int(proposals)
    cfg.data_preprocessor.update(mean=[m * 255 for m in IMAGE_MEAN], std=[s * 255 for s in IMAGE_STD],
                                 bgr_to_rgb=False)
    return cfg


def build_detector(arch: str, num_classes: int, **options):
    """An mmdet FasterRCNN of `detector_config(arch, num_classes, **options)`, built under mmdet's
    default scope."""
    from mmengine.registry import DefaultScope
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*build_loss.*", category=UserWarning)
        return MODELS.build(detector_config(arch, num_classes, **options))
