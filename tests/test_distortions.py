"""Models Genesis distortions (methods.blocks.distortions) against the official code's order and probabilities (docs/methods.md): geometry of
windows and boxes, monotone Bezier maps, and the published probabilities measured on many tiny images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_bench.methods.blocks.distortions import (bezier_intensity, genesis_distort, local_pixel_shuffle, paint,
                                 shuffle_windows_for_coverage)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


DISTORTIONS = {
    "local_pixel_shuffle": lambda x, g: local_pixel_shuffle(x, g, windows=30),
    "bezier_intensity": lambda x, g: bezier_intensity(x, g, p=1.0),
    "paint": lambda x, g: paint(x, g, p=1.0),
    "genesis_distort": lambda x, g: genesis_distort(x, g)[0],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", DISTORTIONS)
def test_distortions_keep_shape_dtype_range_and_grayscale(name, dtype):
    gray = torch.rand(16, 1, 40, 36, generator=generator(1), dtype=dtype).expand(-1, 3, -1, -1)
    out = DISTORTIONS[name](gray, generator())
    assert out.shape == gray.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, gray)
    # windows, curves and noise are shared by the channels: a replicated grayscale image stays gray
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def bernstein(t: torch.Tensor, p1: float, p2: float) -> torch.Tensor:
    return 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3


def test_bezier_maps_follow_the_curve_monotone_increasing_or_inverted():
    ramp = torch.linspace(0, 1, 501).view(1, 1, 1, -1).repeat(64, 1, 1, 1)
    record = {}
    out = bezier_intensity(ramp, generator(), p=1.0, record=record).flatten(1)
    inverted = record["inverted"]
    assert 10 < inverted.sum() < 54  # both kinds occur
    steps = out.diff(dim=1)
    assert (steps[~inverted] >= -1e-6).all() and (steps[inverted] <= 1e-6).all()
    torch.testing.assert_close(out[:, 0], inverted.float(), atol=1e-4, rtol=0)  # (0,0)-(1,1) or inverted
    torch.testing.assert_close(out[:, -1], 1 - inverted.float(), atol=1e-4, rtol=0)
    # hand-computed curve points: the map sends x(t) to y(t), or to y(1 - t) when inverted (official pipeline, step 3)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    for k in range(16):
        (x1, y1), (x2, y2) = record["bezier_controls"][k].double().tolist()
        x_t = bernstein(t, x1, x2)
        y_t = bernstein(1 - t if inverted[k] else t, y1, y2)
        mapped = np.interp(x_t.numpy(), ramp[0].flatten().double().numpy(), out[k].double().numpy())
        torch.testing.assert_close(torch.from_numpy(mapped), y_t, atol=2e-3, rtol=0)


def test_local_shuffle_permutes_each_window_and_nothing_else():
    x = torch.rand(64, 3, 50, 40, generator=generator(3))
    record = {}
    out = local_pixel_shuffle(x, generator(), windows=1, record=record)
    assert record["local"].all()
    for k, (top, left, h, w) in enumerate(record["local_windows"][:, 0].tolist()):
        assert 1 <= h <= 5 and 1 <= w <= 4 and top + h <= 50 and left + w <= 40
        inside = torch.zeros(50, 40, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        assert torch.equal(out[k][:, ~inside], x[k][:, ~inside])
        before, after = x[k][:, inside], out[k][:, inside]
        # the same multiset of pixels (whole RGB pixels move together), permuted
        assert torch.equal(before[0].sort().values, after[0].sort().values)
        order = before[0].argsort(), after[0].argsort()
        assert torch.equal(before[:, order[0]], after[:, order[1]])
        if h * w >= 8:
            assert not torch.equal(before, after), (k, h, w)


def test_local_shuffle_with_overlaps_reads_the_original_and_the_last_window_wins():
    x = torch.rand(8, 1, 30, 30, generator=generator(4))
    record = {}
    out = local_pixel_shuffle(x, generator(), windows=40, record=record)
    for k in range(8):
        boxes = record["local_windows"][k].tolist()
        covered = torch.zeros(30, 30, dtype=torch.bool)
        for i, (top, left, h, w) in enumerate(boxes):
            covered[top:top + h, left:left + w] = True
            later = torch.zeros(30, 30, dtype=torch.bool)
            for top2, left2, h2, w2 in boxes[i + 1:]:
                later[top2:top2 + h2, left2:left2 + w2] = True
            window = x[k, 0, top:top + h, left:left + w]
            if not later[top:top + h, left:left + w].any():  # not overwritten: its own permutation survives
                assert torch.equal(out[k, 0, top:top + h, left:left + w].flatten().sort().values,
                                   window.flatten().sort().values)
        assert torch.equal(out[k, 0][~covered], x[k, 0][~covered])
    assert torch.equal(local_pixel_shuffle(x, generator(), windows=40, p=0.0), x)


def test_paint_boxes_stay_in_bounds_and_in_and_out_painting_never_co_occur():
    size = 48
    x = torch.rand(400, 3, size, size, generator=generator(5))
    record = {}
    out = paint(x, generator(), p=0.9, outpaint_p=0.8, record=record)
    modes, boxes, active = record["paint"], record["paint_boxes"], record["paint_active"]
    assert {0, 1, 2} == set(modes.tolist())
    for k in range(len(x)):
        mode, n_boxes = int(modes[k]), int(active[k].sum())
        assert active[k, :n_boxes].all()  # boxes are drawn in order until the first miss
        union = torch.zeros(size, size, dtype=torch.bool)
        for top, left, h, w in boxes[k, :n_boxes].tolist():
            low, high = (size // 6, size // 3) if mode == 1 else (size - 4 * size // 7, size - 3 * size // 7)
            assert low <= h <= high and low <= w <= high, (mode, h, w)
            assert top >= 3 and left >= 3 and top + h <= size - 3 and left + w <= size - 3
            union[top:top + h, left:left + w] = True
        kept = (out[k] == x[k]).all(0)
        if mode == 0:
            assert n_boxes == 0 and kept.all()
        elif mode == 1:  # in-painting: noise in the boxes, the rest untouched (so no out-painting)
            assert n_boxes <= 5 and torch.equal(kept, ~union)
        else:  # out-painting: the boxes keep the original, noise everywhere else (so no in-painting)
            assert 1 <= n_boxes <= 5 and torch.equal(kept, union)


def test_published_probabilities_and_the_no_distortion_rate():
    """Spec 1.2: flip rounds p 0.4 (at most 3), local shuffle 0.5, Bezier 0.9 (half inverted), painting
    0.9 = out 0.72 + in 0.18; an unchanged sample has probability 0.5 * 0.1 * (0.1 + 0.18 * 0.05) = 0.55%
    (in-painting draws its first box with p 0.95). 16384 images of 20 x 20 px, a fixed generator; 20 shuffle
    windows (sides 1-2 px) leave an image unchanged with probability ~0.51^20 = 1e-6."""
    n = 16384
    x = torch.rand(n, 1, 20, 20, generator=generator(6))
    record = {}
    distorted, target = genesis_distort(x, generator(7), windows=20, record=record)
    rate = lambda mask: mask.float().mean().item()  # noqa: E731
    flips = torch.bincount(record["flip_rounds"], minlength=4).float() / n
    torch.testing.assert_close(flips, torch.tensor([0.6, 0.24, 0.096, 0.064]), atol=0.015, rtol=0)
    assert rate(record["local"]) == pytest.approx(0.5, abs=0.015)  # 3.8 standard errors
    assert rate(record["nonlinear"]) == pytest.approx(0.9, abs=0.01)
    assert rate(record["inverted"]) / rate(record["nonlinear"]) == pytest.approx(0.5, abs=0.015)
    assert rate(record["paint"] == 2) == pytest.approx(0.72, abs=0.015)
    assert rate(record["paint"] == 1) == pytest.approx(0.18, abs=0.012)
    # flips act on input and target alike: an undistorted sample is returned equal to its target
    unchanged = (distorted == target).flatten(1).all(1)
    assert 0.0035 < rate(unchanged) < 0.0075, rate(unchanged)  # expected 89 of 16384; 0.25% or 1% would fail
    no_paint = (record["paint"] == 0) | ((record["paint"] == 1) & ~record["paint_active"].any(1))
    assert torch.equal(unchanged, ~record["local"] & ~record["nonlinear"] & no_paint)


def test_default_window_count_keeps_the_3d_coverage():
    # 3D: 10k windows x mean 24.5 voxels over a 64x64x32 cube = 1.87; 2D 224 px: sides U{1..22}, mean 11.5^2
    assert shuffle_windows_for_coverage(224, 224) == round(10_000 * 24.5 / (64 * 64 * 32) * 224 * 224 / 11.5 ** 2)
    record = {}
    genesis_distort(torch.rand(2, 3, 64, 64), generator(), record=record)
    assert record["local_windows"].shape == (2, shuffle_windows_for_coverage(64, 64), 4)
