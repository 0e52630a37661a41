"""LVM-Med's soft Dice term, as an mmseg loss (registered as `BatchDiceLoss`).

LVM-Med's training scripts add `dice_loss(softmax(logits), one_hot(mask), multiclass=True)` to the
cross-entropy (repo: utils/endtoend.py, segmentation_2d/3d train scripts): for every class one Dice
over all pixels of the whole batch, averaged over the classes, background included. mmseg's
DiceLoss and TverskyLoss compute a Dice per image instead; on volumes sliced for training, half of
the slices lack the target, and a per-image Dice (smoothing 1) punishes any foreground predicted on
such a slice as hard as a missed target: the synthetic MM-WHS left atrium (~1 % of a slice) was
then never learnt (benchmarks/README.md, issue 18). Over the batch, an empty slice only adds its
false positives to the class's denominator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn


def batch_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = 255,
                    include_background: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """1 - mean over classes of (2 sum p t + eps) / (sum p + sum t + eps), sums over the batch's
    pixels; pixels labelled `ignore_index` count nowhere. A class absent from both prediction and
    target scores 1 (the repo's `sets_sum = 2 * inter` rule)."""
    classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(torch.where(valid[:, 0].bool(), target, 0).long(), classes).permute(0, 3, 1, 2)
    onehot = onehot.to(probs.dtype) * valid
    inter = (probs * onehot).sum((0, 2, 3))
    sums = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + eps) / (sums + eps)
    return 1 - (dice if include_background else dice[1:]).mean()


@MODELS.register_module()
class BatchDiceLoss(nn.Module):
    """`batch_dice_loss` in mmseg's loss interface (decode heads call it with logits, labels and
    their ignore index)."""

    def __init__(self, loss_weight: float = 1.0, include_background: bool = True, loss_name: str = "loss_dice"):
        super().__init__()
        self.loss_weight, self.include_background, self._loss_name = loss_weight, include_background, loss_name

    def forward(self, pred, target, weight=None, ignore_index: int = 255, **kwargs) -> torch.Tensor:
        return self.loss_weight * batch_dice_loss(pred, target, ignore_index=ignore_index,
                                                  include_background=self.include_background)

    @property
    def loss_name(self) -> str:
        return self._loss_name
