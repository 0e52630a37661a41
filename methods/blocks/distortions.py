"""Models Genesis restoration distortions, batched in torch (2D port).

Source: the order and probabilities of the official code (github.com/MrGiovanni/ModelsGenesis,
`pytorch/utils.py` + `pytorch/config.py`; Zhou et al. 2019/2021), ported to 2D as docs/methods.md
describes. Shared by methods/models_genesis.py and PEAC, which reuses the local shuffle.

All functions take images float in [0, 1] of shape (B, C, H, W) and draw every random number from
the `generator` argument (numbers are drawn on the generator's device: put it on the images' device
to avoid transfers), so a run is reproducible. Spatial choices (windows, boxes, noise) are shared
by the channels of a sample, so a grayscale image replicated to RGB stays grayscale. Pass a dict as
`record` to receive what was applied to each sample (tests and debugging); returns never change.
"""
from __future__ import annotations

import torch

# Models Genesis 3D: 10,000 windows with sides U{1..6} x U{1..6} x U{1..3} in a 64x64x32 cube, i.e.
# 10000 * 3.5 * 3.5 * 2 / 131072 = 1.87 window-voxels per voxel. The 2D default keeps that coverage.
GENESIS_3D_COVERAGE = 10_000 * 3.5 * 3.5 * 2.0 / (64 * 64 * 32)
BEZIER_LUT_POINTS = 1024  # 2D port: a LUT of ~1k points + linear interpolation (the original: 100k + np.interp)
PAINT_MAX_BOXES = 5
PAINT_BOX_P = 0.95  # each further box (and in-painting's first) is drawn with this probability
PAINT_MARGIN = 3  # boxes stay at least this many pixels from the border
_SHUFFLE_CHUNK = 1 << 22  # padded window pixels handled at once (bounds memory on big batches)


def _rand(generator: torch.Generator, *shape: int, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(generator: torch.Generator, low: torch.Tensor | int, high: torch.Tensor | int, shape, device):
    """Uniform integers in [low, high] inclusive (bounds may be per-element tensors)."""
    u = _rand(generator, *shape, device=device)
    low = torch.as_tensor(low, device=device)
    high = torch.as_tensor(high, device=device)
    return low + (u * (high - low + 1)).long().clamp_max(high - low)


def shuffle_windows_for_coverage(height: int, width: int, coverage: float = GENESIS_3D_COVERAGE) -> int:
    """The window count whose expected total window area is `coverage` x the image area."""
    mean_h, mean_w = (1 + max(1, height // 10)) / 2, (1 + max(1, width // 10)) / 2
    return max(1, round(coverage * height * width / (mean_h * mean_w)))


def local_pixel_shuffle(x: torch.Tensor, generator: torch.Generator, windows: int, p: float = 1.0,
                        record: dict | None = None) -> torch.Tensor:
    """Spec 1.2 step 2 (2D, 1.9): per sample with probability `p`, `windows` random windows with sides
    U{1..H//10} x U{1..W//10}; the pixels of each window, read from the un-shuffled input, are randomly
    permuted and written into a copy (overlaps: the later window wins, as in the sequential original)."""
    b, c, h, w = x.shape
    device = x.device
    applied = _rand(generator, b, device=device) < p
    hmax, wmax = max(1, h // 10), max(1, w // 10)
    win_h = _randint(generator, 1, hmax, (b, windows), device)
    win_w = _randint(generator, 1, wmax, (b, windows), device)
    top = _randint(generator, 0, h - win_h, (b, windows), device)
    left = _randint(generator, 0, w - win_w, (b, windows), device)
    if record is not None:
        record.update(local=applied, local_windows=torch.stack([top, left, win_h, win_w], -1))
    chosen = applied.nonzero().flatten()
    size = hmax * wmax
    per_chunk = max(1, _SHUFFLE_CHUNK // max(1, windows * size))
    dummy = b * h * w  # an extra row that takes the writes of padding positions and overwritten pixels
    flat_in = x.permute(0, 2, 3, 1).reshape(dummy, c)
    flat_out = torch.cat([flat_in, flat_in[:1]])
    local = torch.arange(size, device=device)
    window_id = torch.arange(windows, device=device).view(1, windows, 1)
    for rows in chosen.split(per_chunk):
        n = len(rows)
        wh, ww, t0, l0 = (v[rows].unsqueeze(-1) for v in (win_h, win_w, top, left))
        valid = local < wh * ww  # (n, windows, size): positions inside each window
        keys = _rand(generator, n, windows, size, device=device).masked_fill(~valid, 2.0)
        perm = keys.argsort(-1)  # the valid positions come first, in random order
        base = rows.view(n, 1, 1) * (h * w)
        target = torch.where(valid, base + (t0 + local // ww) * w + l0 + local % ww, dummy)
        # the last window covering a pixel writes it: find that window per pixel, keep only its writes
        owner = torch.full((dummy + 1,), -1, device=device, dtype=torch.long)
        owner.scatter_reduce_(0, target.flatten(), window_id.expand_as(target).flatten(), "amax")
        keep = valid & (owner[target] == window_id)
        source = torch.where(keep, base + (t0 + perm // ww) * w + l0 + perm % ww, 0)
        flat_out[torch.where(keep, target, dummy).flatten()] = flat_in[source.flatten()]
    return flat_out[:dummy].view(b, h, w, c).permute(0, 3, 1, 2).contiguous()


def bezier_curves(generator: torch.Generator, batch: int, invert: torch.Tensor, points: int = BEZIER_LUT_POINTS,
                  device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample a cubic Bezier from (0,0) to (1,1) with two U([0,1]^2) control points, as a LUT
    (xs ascending, ys) of `points` samples, and the controls (B, 2, xy); where `invert`, ys are read
    backwards (official pipeline, step 3: "only x is sorted, not y"), which makes the map decreasing."""
    ctrl = _rand(generator, batch, 2, 2, device=device)  # (B, point 1|2, x|y)
    t = torch.linspace(0, 1, points, device=device)
    b1, b2, b3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3  # Bernstein weights; P0 = (0,0), P3 = (1,1)
    # element-wise (no matmul), so autocast keeps it float32
    coordinate = lambda k: torch.addcmul(torch.addcmul(b3, ctrl[:, 0, k, None], b1),  # noqa: E731
                                         ctrl[:, 1, k, None], b2)
    xs = coordinate(0).cummax(-1).values  # x(t) is non-decreasing for controls in [0,1]; cummax fixes rounding
    ys = coordinate(1)
    ys = torch.where(invert.view(-1, 1), ys.flip(-1), ys)
    return xs, ys, ctrl


def _interpolate(values: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Batched np.interp: rows of `values` through the piecewise-linear maps (xs ascending, ys)."""
    right = torch.searchsorted(xs, values).clamp(1, xs.shape[1] - 1)
    x0, x1 = xs.gather(1, right - 1), xs.gather(1, right)
    y0, y1 = ys.gather(1, right - 1), ys.gather(1, right)
    return y0 + ((values - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1) * (y1 - y0)


def bezier_intensity(x: torch.Tensor, generator: torch.Generator, p: float = 0.9, invert_p: float = 0.5,
                     record: dict | None = None) -> torch.Tensor:
    """Spec 1.2 step 3: per sample with probability `p`, remap intensities through a random Bezier
    curve (increasing, or with probability `invert_p` decreasing); searchsorted + linear interpolation."""
    b = x.shape[0]
    applied = _rand(generator, b, device=x.device) < p
    inverted = _rand(generator, b, device=x.device) < invert_p
    xs, ys, controls = bezier_curves(generator, b, inverted, device=x.device)
    if record is not None:
        record.update(nonlinear=applied, inverted=applied & inverted, bezier_controls=controls)
    mapped = _interpolate(x.reshape(b, -1).float(), xs, ys).clamp(0, 1).view_as(x).to(x.dtype)
    return torch.where(applied.view(-1, 1, 1, 1), mapped, x)


def _paint_boxes(generator: torch.Generator, b: int, size: int, outpaint: torch.Tensor, device) -> tuple:
    """Box side and start along one axis of length `size`, (B, 5) each (official pipeline, step 4)."""
    shape = (b, PAINT_MAX_BOXES)
    inner = _randint(generator, max(1, size // 6), max(1, size // 3), shape, device)  # in-painting: [1/6, 1/3]
    outer = size - _randint(generator, 3 * size // 7, 4 * size // 7, shape, device)  # out-painting: ~[3/7, 4/7]
    side = torch.where(outpaint.view(-1, 1), outer, inner).clamp(1, size)
    margin = torch.minimum(torch.full_like(side, PAINT_MARGIN), (size - side) // 2)
    start = _randint(generator, margin, size - side - margin, shape, device)
    return side, start


def paint(x: torch.Tensor, generator: torch.Generator, p: float = 0.9, outpaint_p: float = 0.8,
          record: dict | None = None) -> torch.Tensor:
    """Spec 1.2 step 4: per sample with probability `p`, out-painting (probability `outpaint_p`: all U(0,1)
    noise but 1 + up to 4 boxes of ~3/7-4/7 side, each further box with p 0.95) or in-painting (up to 5
    boxes of [1/6, 1/3] side filled with noise, the first and each further one with p 0.95)."""
    b, c, h, w = x.shape
    device = x.device
    applied = _rand(generator, b, device=device) < p
    outpaint = applied & (_rand(generator, b, device=device) < outpaint_p)
    inpaint = applied & ~outpaint
    drawn = (_rand(generator, b, PAINT_MAX_BOXES, device=device) < PAINT_BOX_P).long()
    keep_first = torch.cat([torch.ones_like(drawn[:, :1]), drawn[:, :-1]], 1)  # out-painting always pastes one box
    active = torch.where(outpaint.view(-1, 1), keep_first, drawn).cumprod(1).bool() & applied.view(-1, 1)
    box_h, top = _paint_boxes(generator, b, h, outpaint, device)
    box_w, left = _paint_boxes(generator, b, w, outpaint, device)
    if record is not None:
        record.update(paint=inpaint.long() + 2 * outpaint.long(),  # 0 none, 1 in-painting, 2 out-painting
                      paint_boxes=torch.stack([top, left, box_h, box_w], -1), paint_active=active)
    rows = torch.arange(h, device=device).view(1, 1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, 1, w)
    inside = ((rows >= top[..., None, None]) & (rows < (top + box_h)[..., None, None])
              & (cols >= left[..., None, None]) & (cols < (left + box_w)[..., None, None]))
    in_boxes = (inside & active[..., None, None]).any(1, keepdim=True)  # (B, 1, H, W)
    noise = _rand(generator, b, 1, h, w, device=device).to(x.dtype).expand_as(x)
    to_noise = (inpaint.view(-1, 1, 1, 1) & in_boxes) | (outpaint.view(-1, 1, 1, 1) & ~in_boxes)
    return torch.where(to_noise, noise, x)


def random_flips(x: torch.Tensor, target: torch.Tensor, generator: torch.Generator, p: float = 0.4,
                 max_rounds: int = 3, record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec 1.2 step 1: up to 3 rounds, each run with probability `p` (the loop stops at the first
    miss), each flipping input and target alike along a random axis (H or W in 2D)."""
    b = x.shape[0]
    runs = (_rand(generator, b, max_rounds, device=x.device) < p).long().cumprod(1)
    axes = _randint(generator, 0, 1, (b, max_rounds), x.device)
    flip_h = ((runs * (axes == 0)).sum(1) % 2).bool().view(-1, 1, 1, 1)
    flip_w = ((runs * (axes == 1)).sum(1) % 2).bool().view(-1, 1, 1, 1)
    if record is not None:
        record.update(flip_rounds=runs.sum(1), flip_h=flip_h.flatten(), flip_w=flip_w.flatten())

    def flip(t):
        t = torch.where(flip_h, t.flip(2), t)
        return torch.where(flip_w, t.flip(3), t)

    return flip(x), flip(target)


def genesis_distort(x: torch.Tensor, generator: torch.Generator, *, flip_p: float = 0.4, local_p: float = 0.5,
                    windows: int | None = None, nonlinear_p: float = 0.9, paint_p: float = 0.9,
                    outpaint_p: float = 0.8, record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Models Genesis pipeline (the official pipeline, pytorch/utils.py): flips on input and target, then local shuffle, Bezier
    intensity and painting on the input only. Returns (distorted input, restoration target).
    `windows` None: as many shuffle windows as keep the 3D original's coverage (GENESIS_3D_COVERAGE)."""
    if windows is None:
        windows = shuffle_windows_for_coverage(x.shape[2], x.shape[3])
    distorted, target = random_flips(x, x, generator, flip_p, record=record)
    distorted = local_pixel_shuffle(distorted, generator, windows, local_p, record=record)
    distorted = bezier_intensity(distorted, generator, nonlinear_p, record=record)
    distorted = paint(distorted, generator, paint_p, outpaint_p, record=record)
    return distorted, target
