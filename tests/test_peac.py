"""PEAC (docs/methods.md, "PEAC"): grid views whose overlap masks pair the same image cells, the cell
permutation, the heads' shapes, finite loss terms, and a loss that falls through `bench pretrain`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.config import resolve_config
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.method_api import StepInfo
from medssl_bench.methods.peac import PEAC
from medssl_bench.methods.blocks.peac_views import GridViews, overlap_masks, permute_cells, to_cells
from tests.pretrain_helpers import pretrain


def test_overlap_masks_by_hand():
    # 3x3-cell views at cell offsets (row 0, col 0) and (1, 2): they share canvas rows 1-2, column 2.
    m1, m2 = overlap_masks((0, 0), (1, 2), 3)
    assert m1.nonzero().flatten().tolist() == [5, 8]  # view 1 cells (1, 2), (2, 2)
    assert m2.nonzero().flatten().tolist() == [0, 3]  # view 2 cells (0, 0), (1, 0)


def test_masked_cells_of_both_views_show_the_same_image_cells():
    """Paper geometry (14x14-cell views, offsets 0..4, a 19-cell canvas) on an image whose 32-px cells each
    have a unique colour: the k-th masked cell of view 1 and of view 2 hold identical pixels."""
    views = GridViews(448, 32, 4)
    rows, cols = np.meshgrid(np.arange(19), np.arange(19), indexing="ij")
    colours = np.stack([rows * 13, cols * 13, (rows * 19 + cols) % 251], -1).astype(np.uint8)
    image = Image.fromarray(colours.repeat(32, 0).repeat(32, 1))  # 608 px: the canvas itself
    counts = set()
    for seed in range(8):
        torch.manual_seed(seed)
        view1, view2, m1, m2 = views(image)
        assert view1.shape == view2.shape == (3, 448, 448) and m1.shape == m2.shape == (196,)
        assert m1.sum() == m2.sum() >= 100
        cells1, cells2 = to_cells(view1[None], 32)[0], to_cells(view2[None], 32)[0]
        torch.testing.assert_close(cells1[m1], cells2[m2], rtol=0, atol=0)
        counts.add(int(m1.sum()))
    assert len(counts) > 1  # the offsets really vary, so partial overlaps were checked


@pytest.mark.parametrize("image_size, offset", [(48, 1), (32, 0), (64, 2)])
def test_a_geometry_without_a_2x2_grid_or_a_sure_overlap_is_a_user_error(image_size, offset):
    cfg = resolve_config(PEAC, "quick", {"image_size": image_size}, {"max_cell_offset": str(offset)})
    with pytest.raises(UserError, match="peac: "):
        PEAC.check_config(cfg, 1)


def test_cell_permutation_round_trips():
    images = torch.rand(2, 3, 96, 64)  # 3x2 cells of 32 px
    perm = torch.stack([torch.randperm(6) for _ in range(2)])
    shuffled = permute_cells(images, perm, 32)
    for b in range(2):  # location j shows cell perm[j]
        torch.testing.assert_close(to_cells(shuffled, 32)[b], to_cells(images, 32)[b, perm[b]])
    torch.testing.assert_close(permute_cells(shuffled, perm.argsort(1), 32), images)


def small_peac(**kwargs) -> PEAC:
    torch.manual_seed(0)
    backbone, width = build_backbone("resnet18")
    return PEAC(backbone, width, image_size=64, seed=0, global_dim=64, local_dim=16, **kwargs)


def batch(n: int = 4) -> list[torch.Tensor]:
    views = [torch.randn(n, 3, 64, 64), torch.randn(n, 3, 64, 64)]
    masks = [overlap_masks((0, i % 2), (i % 2, 0), 2) for i in range(n)]
    return views + [torch.stack([m[0] for m in masks]), torch.stack([m[1] for m in masks])]


def test_heads_shapes_and_each_loss_term_finite():
    method = small_peac()
    views = batch()
    maps = torch.randn(4, 512, 2, 2)
    assert method.restore_head(maps).shape == views[0].shape
    assert method.order_head(maps).shape == (4, 4, 2, 2)  # one class per cell
    out = method.training_loss(views, StepInfo())
    for key in ("loss_order", "loss_restore", "loss_global", "loss_local"):
        assert out[key].ndim == 0 and torch.isfinite(out[key]) and out[key] > 0, key
    sum(v for k, v in out.items() if "loss" in k).backward()
    assert method.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_local_loss_skips_shuffled_samples():
    assert small_peac(shuffle_p=1.0).training_loss(batch(), StepInfo())["loss_local"] == 0
    assert small_peac(shuffle_p=0.0).training_loss(batch(), StepInfo())["loss_local"] > 0


def test_teacher_follows_the_student_by_ema():
    method = small_peac(momentum_base=0.9)
    with torch.no_grad():
        method.backbone.conv1.weight.add_(1.0)
    before = method.teacher["backbone"].conv1.weight.clone()
    method.after_step(StepInfo(step=0, max_steps=10))  # momentum 0.9 at step 0 of the cosine schedule
    torch.testing.assert_close(method.teacher["backbone"].conv1.weight, 0.9 * before + 0.1 * (before + 1.0))


def test_loss_falls(tiny_corpus):
    """60 steps (5 epochs of 96 images, batch 8: half test_pretrain's cost per step, as PEAC runs 64-px views
    through student and teacher) of the quick profile: the total and the restoration term fall from the
    first 10 steps to the last 10 (the order term falls too, but too noisily at batch 8 to assert)."""
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "peac", "--image-size", "64", "--batch-size", "8",
                    "--epochs", "5", "--name", "falls-peac") == 0
    rows = [json.loads(line) for line in (workspace / "runs" / "falls-peac" / "metrics.jsonl").open()]
    assert len(rows) == 60 and all(np.isfinite(row[k]) for row in rows for k in row if "loss" in k)
    for key in ("loss", "loss_restore"):
        first, last = (sum(row[key] for row in part) / 10 for part in (rows[:10], rows[-10:]))
        assert last < first - 0.05 * abs(first), (key, first, last)
