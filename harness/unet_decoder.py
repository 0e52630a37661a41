"""The light U-Net decoder over a torchvision ResNet's five stages, in one place because it is a checkpoint
contract (docs/architecture.md, "Contracts"): a method that pretrains it (Models Genesis' 2D port) exports it as
`decoder.safetensors`, and a segmentation protocol (`genesis_unet`) rebuilds it from that file's shapes.

Per level, deepest first: upsample (bilinear) to the skip's size, concatenate the skip (stride 16, 8, 4, 2),
one 3x3 conv-BN-ReLU; a last level without skip doubles the stride-2 map to full size; then a 1x1 `head`.
The exported state dict has the keys `blocks.<i>.conv.0.weight`, `blocks.<i>.conv.1.*` (BatchNorm), `head.*`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 5  # strides 16, 8, 4, 2, then 1


class UpBlock(nn.Module):
    """Upsample to `size`, concatenate the skip (if any), conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, size, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.conv(x if skip is None else torch.cat([x, skip], 1))


def decoder_blocks(stage_widths, widths) -> nn.ModuleList:
    """The levels for encoder stages of `stage_widths` (strides 2..32) and decoder `widths` (strides 16..1)."""
    ins = [stage_widths[-1], *widths[:-1]]
    skips = [*reversed(stage_widths[:-1]), 0]
    return nn.ModuleList(UpBlock(i, s, o) for i, s, o in zip(ins, skips, widths))


def decode(blocks: nn.ModuleList, features: list[torch.Tensor], size=None) -> torch.Tensor:
    """Encoder features (strides 2..32) -> the last level's map at `size` (None: twice the stride-2 map)."""
    x = features[-1]
    full = size if size is not None else tuple(2 * s for s in features[0].shape[-2:])
    for block, skip in zip(blocks, [*reversed(features[:-1]), None]):
        x = block(x, full if skip is None else skip.shape[-2:], skip)
    return x


class UNetDecoder(nn.Module):
    """What is exported: the levels and the 1x1 head (the state-dict layout above)."""

    def __init__(self, blocks: nn.ModuleList, head: nn.Module):
        super().__init__()
        self.blocks, self.head = blocks, head


def decoder_widths(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The decoder widths an exported state dict was built with (its levels' conv output channels)."""
    widths = []
    while f"blocks.{len(widths)}.conv.0.weight" in state:
        widths.append(int(state[f"blocks.{len(widths)}.conv.0.weight"].shape[0]))
    return tuple(widths)
