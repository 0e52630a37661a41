"""The `genesis_unet` protocol's decoder: Models Genesis' pretrained U-Net decoder as an mmseg decode head.

mmseg's `UNetHead` here (downstream.segmentation.model) cannot hold Genesis' decoder: it has two convs per level
and nearest x2 upsampling, Genesis' 2D port one conv per level after bilinear upsampling to the skip's size. So this
head is built as the port builds it (harness.unet_decoder, the exported layout) and every level is loaded from the
checkpoint's `decoder.safetensors` (strict: same keys, same shapes). Only the last 1x1 layer is new: Genesis'
`head` restores 3 channels; a segmentation needs one per class (mmseg's `conv_seg`). The paper fine-tunes its
whole pretrained encoder-decoder likewise, with the output layer fitted to the target.
"""
from __future__ import annotations

from mmseg.models.decode_heads.decode_head import BaseDecodeHead

from medssl_bench.harness.checkpoint_index import load_export, strict_load
from medssl_bench.harness.unet_decoder import decode, decoder_blocks, decoder_widths

PREFIX = "blocks."


class GenesisUNetHead(BaseDecodeHead):
    """The exported decoder's levels over the five encoder stages, then mmseg's 1x1 classifier (`conv_seg`).
    `ref`: the CheckpointRef whose `decoder` export is loaded (a UserError when it has none)."""

    def __init__(self, in_channels, ref, **kwargs):
        state = load_export(ref, "decoder")
        blocks = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
        widths = decoder_widths(state)
        super().__init__(in_channels=list(in_channels), channels=widths[-1], in_index=list(range(len(in_channels))),
                         input_transform="multiple_select", **kwargs)
        self.blocks = decoder_blocks(list(in_channels), widths)
        # shapes follow the encoder: a decoder pretrained on another backbone fails here, in one line
        strict_load(self.blocks, blocks, ref.backbone, ref.path.parent / "decoder.safetensors")

    def forward(self, inputs):
        return self.cls_seg(decode(self.blocks, self._transform_inputs(inputs)))
