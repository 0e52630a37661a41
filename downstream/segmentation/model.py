"""The segmentation model through mmsegmentation: a `bench` backbone checkpoint inside an mmseg
`EncoderDecoder`, with a U-Net decoder (LVM-Med fine-tunes a U-Net on its ResNet-50 encoder,
App. B / repo: segmentation_models_pytorch's Unet, decoder widths 256-128-64-32-16).

Registered in mmseg's MODELS registry, so an mmseg config can use them directly:
    backbone=dict(type="BenchResNet", arch="resnet50", checkpoint="runs/<run>/backbone.safetensors")
    decode_head=dict(type="UNetHead", in_channels=[64, 256, 512, 1024, 2048], ...)
Loss: cross-entropy + soft Dice, as the paper. `dice_loss="batch"` (the paper profile) is LVM-Med's
Dice term: per class over the whole batch, averaged over the classes, background included
(downstream.segmentation.losses). `"per_image_foreground"` (the 2D quick profile) is mmseg's DiceLoss
per image without the background channel (`ignore_index=0`; with background in it mmseg pools all
channels into one Dice dominated by background, and small targets were not learnt: synthetic Kvasir,
test Dice 0.0); a per-image per-class mean (mmseg's TverskyLoss, alpha = beta = 0.5) learnt more
slowly on CPU schedules: synthetic Kvasir, 10 % labels, quick schedule, random init: test Dice 13.7
vs 33 with the foreground Dice.
"""
from __future__ import annotations

import warnings

import torch
from mmengine.config import ConfigDict
from torch import nn

from medssl_bench.downstream import mmcv_ops

mmcv_ops.install()  # before mmseg.models imports mmcv.ops: CPU stand-in unless compiled mmcv exists

from mmcv.cnn import ConvModule  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.registry import MODELS, TRANSFORMS  # noqa: E402

from medssl_bench.downstream.bench_backbone import STAGE_CHANNELS, BenchResNet, LoadBenchImage  # noqa: E402
from medssl_bench.downstream.segmentation.genesis_head import GenesisUNetHead  # noqa: E402
from medssl_bench.downstream.segmentation import losses  # noqa: E402, F401  (registers BatchDiceLoss)
from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD  # noqa: E402

MODELS.register_module(module=BenchResNet)
TRANSFORMS.register_module(module=LoadBenchImage)
MODELS.register_module(module=GenesisUNetHead)
DECODER_CHANNELS = (256, 128, 64, 32, 16)
DICE_LOSSES = {  # the Dice term beside cross-entropy (module docstring)
    "batch": dict(type="BatchDiceLoss", loss_weight=1.0),
    "per_image_foreground": dict(type="DiceLoss", use_sigmoid=False, naive_dice=True, loss_weight=1.0, ignore_index=0),
}


class UpBlock(nn.Module):
    """Upsample x2, concatenate the skip feature (if any), two 3x3 conv-BN-ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        norm = dict(type="BN")
        self.conv1 = ConvModule(in_ch + skip_ch, out_ch, 3, padding=1, norm_cfg=norm)
        self.conv2 = ConvModule(out_ch, out_ch, 3, padding=1, norm_cfg=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


@MODELS.register_module()
class UNetHead(BaseDecodeHead):
    """U-Net decoder over the five encoder stages: deepest first, a skip at each scale, one last
    block without skip back to full resolution, then mmseg's 1x1 classifier (`conv_seg`)."""

    def __init__(self, in_channels, decoder_channels=DECODER_CHANNELS, **kwargs):
        super().__init__(in_channels=list(in_channels), channels=decoder_channels[-1],
                         in_index=list(range(len(in_channels))), input_transform="multiple_select", **kwargs)
        skips = list(in_channels[:-1])[::-1] + [0]
        ins = [in_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(UpBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels))

    def forward(self, inputs) -> torch.Tensor:
        feats = self._transform_inputs(inputs)
        x, skips = feats[-1], list(feats[:-1])[::-1] + [None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return self.cls_seg(x)


@MODELS.register_module()
class BenchEncoderDecoder(EncoderDecoder):
    """mmseg's EncoderDecoder that also keeps the prediction at the network's input size
    (`pred_at_size`: argmax of the logits before mmseg resizes them to the original image), so the
    paper's Dice at protocol size can be scored beside the native-resolution one
    (downstream.segmentation.metrics). No test-time flip or padding is used here, so the logits'
    top-left `img_shape` is the image."""

    def predict(self, inputs, data_samples=None):
        if data_samples is None:
            return super().predict(inputs, data_samples)
        seg_logits = self.inference(inputs, [s.metainfo for s in data_samples])
        for i, sample in enumerate(data_samples):
            h, w = sample.metainfo.get("img_shape", seg_logits.shape[2:])[:2]
            sample.set_data({"pred_at_size": PixelData(data=seg_logits[i, :, :h, :w].argmax(0, keepdim=True))})
        return self.postprocess_result(seg_logits, data_samples)


def build_segmentor(arch: str, num_classes: int, *, ref=None, checkpoint: str | None = None, frozen: bool = False,
                    dice_loss: str = "batch", decoder: str = "unet", class_weight: list[float] | None = None):
    """An mmseg EncoderDecoder: BenchResNet + UNetHead, CE + Dice loss, ImageNet-style normalisation
    of RGB uint8 inputs (the statistics pretraining used), whole-image inference. `dice_loss`: "batch"
    (LVM-Med's: per class over the batch, downstream.segmentation.losses) or "per_image_foreground"
    (mmseg's DiceLoss per image without the background channel). `decoder` "genesis_unet": GenesisUNetHead,
    whose levels are `ref`'s exported Models Genesis decoder, instead of a fresh UNetHead. `class_weight`:
    cross-entropy weight per class (None: unweighted, as the paper)."""
    head = dict(type="UNetHead") if decoder == "unet" else dict(type="GenesisUNetHead", ref=ref)
    if dice_loss not in DICE_LOSSES:
        raise ValueError(f"dice_loss must be one of {', '.join(DICE_LOSSES)}, got {dice_loss!r}")
    cfg = dict(
        type="BenchEncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[m * 255 for m in IMAGE_MEAN],
                               std=[s * 255 for s in IMAGE_STD], bgr_to_rgb=False, size_divisor=32,
                               pad_val=0, seg_pad_val=255),
        backbone=dict(type="BenchResNet", arch=arch, ref=ref, checkpoint=checkpoint,
                      frozen_stages=4 if frozen else -1, norm_eval=frozen),
        decode_head=dict(**head, in_channels=STAGE_CHANNELS[arch], num_classes=num_classes,
                         dropout_ratio=0.0, align_corners=False,
                         loss_decode=[dict(type="CrossEntropyLoss", loss_weight=1.0, avg_non_ignore=True,
                                           class_weight=class_weight),
                                      DICE_LOSSES[dice_loss]]),
        train_cfg=dict(), test_cfg=dict(mode="whole"))
    from mmengine.registry import DefaultScope
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)  # EncoderDecoder, losses, SegDataPreProcessor
    with DefaultScope.overwrite_default_scope("mmseg"), warnings.catch_warnings():
        # mmseg suggests a 1-channel sigmoid head for 2 classes; the paper trains 2-class softmax
        warnings.filterwarnings("ignore", message="For binary segmentation", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*build_loss.*", category=UserWarning)
        return MODELS.build(ConfigDict(cfg))
