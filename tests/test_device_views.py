"""`augment: device` (harness.device_views, harness.device_ops): the device path draws the CPU path's parameters sample
for sample, their distributions are lightly's, its pixel ops are torchvision's within stated tolerances, VICRegL's
location grids are the CPU path's, a run resumes bit-identically, and a method without a device path (today: a view
class without its `device_plan`) is refused in one line."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from scipy.stats import ks_2samp
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from medssl_bench.harness.config import build_transform, resolve_config
from medssl_bench.harness.data import ViewsDataset, ViewsPreprocessor, collate_views
from medssl_bench.harness.device_ops import Apply, Blur, Crop, Flip, Grayscale, Jitter, Rotate, Solarize
from medssl_bench.harness.device_views import (DeviceViewsPreprocessor, DeviceViewsTransform, check_device_views,
                                               collate_device_views)
from medssl_bench.harness.errors import UserError
from medssl_bench.methods import get_method
from tests.pretrain_helpers import device_views_resume, fails_cleanly

LIGHTLY = ("simclr", "byol", "dino", "swav")


def textured(height: int, width: int, seed: int = 0) -> Image.Image:
    """Smooth colour waves plus noise: edges and colour for every op to act on."""
    yy, xx = np.mgrid[0:height, 0:width]
    waves = np.stack([128 + 100 * np.sin(xx / 9) * np.cos(yy / 13), 128 + 90 * np.cos(xx / 7 + yy / 11),
                      (xx * 0.5 + yy * 0.3) % 256], -1)
    noise = np.random.default_rng(seed).normal(0, 6, waves.shape)
    return Image.fromarray(np.clip(waves + noise, 0, 255).astype(np.uint8))


def config(name: str, **overrides):
    cls = get_method(name)
    return cls, resolve_config(cls, "quick", overrides, {"augment": "device"})


# ---- parameters: the CPU path's, sample for sample ------------------------------------------------------------


@pytest.fixture
def cpu_recorder(monkeypatch):
    """Records what each CPU op drew and applied, in call order (torchvision's make_params, the transform calls of
    the flips and grayscale, the sigma PIL's blur got, the solarisations)."""
    events: list[tuple] = []

    def wrap(cls, method, make):
        original = getattr(cls, method)

        def recorded(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            events.append(make(self, out))
            return out
        monkeypatch.setattr(cls, method, recorded)

    wrap(v2.RandomResizedCrop, "make_params", lambda op, b: ("crop", b["top"], b["left"], b["height"], b["width"]))
    wrap(v2.ColorJitter, "make_params", lambda op, p: ("jitter", *[int(i) for i in p["fn_idx"]], *[
        p[f"{k}_factor"] for k in ("brightness", "contrast", "saturation", "hue")]))
    wrap(v2.RandomHorizontalFlip, "transform", lambda op, out: ("hflip",))
    wrap(v2.RandomVerticalFlip, "transform", lambda op, out: ("vflip",))
    wrap(v2.RandomGrayscale, "transform", lambda op, out: ("gray",))
    wrap(v2.RandomRotation, "make_params", lambda op, p: ("rotate", float(p["angle"])))
    from lightly.transforms import rotation  # lightly's fixed-angle RandomRotate calls its module's F.rotate

    monkeypatch.setattr(rotation, "F", SimpleNamespace(rotate=lambda image, angle: events.append(
        ("rotate", float(angle))) or F.rotate(image, angle)))
    from lightly.transforms import random_crop_and_flip_with_grid as grid  # VICRegL's crop and flips

    get_params = grid.RandomResizedCropWithLocation.get_params
    monkeypatch.setattr(grid.RandomResizedCropWithLocation, "get_params", staticmethod(
        lambda *args: (lambda box: events.append(("crop", *box)) or box)(get_params(*args))))
    for flip, kind in ((grid.RandomHorizontalFlipWithLocation, "h"), (grid.RandomVerticalFlipWithLocation, "v")):
        wrap(flip, "forward", lambda op, out, kind=kind: (f"{kind}flip",) if getattr(
            out[1], "horizontal_flip" if kind == "h" else "vertical_flip") else None)
    blur = ImageFilter.GaussianBlur
    monkeypatch.setattr(ImageFilter, "GaussianBlur", lambda radius: events.append(("blur", radius)) or blur(radius))
    solarize = ImageOps.solarize
    monkeypatch.setattr(ImageOps, "solarize", lambda image, threshold: events.append(("solarize",)) or
                        solarize(image, threshold))
    return events


def device_events(plan, params: torch.Tensor) -> list[tuple]:
    """The same events read back from the device path's parameter rows."""
    events = []

    def read(op, p) -> None:
        if isinstance(op, Apply):
            at = 1
            for inner in op.ops:
                if p[0] > 0:
                    read(inner, p[at:at + inner.width])
                at += inner.width
        elif isinstance(op, Flip) and p[0] > 0:
            events.append(("hflip",) if op.horizontal else ("vflip",))
        elif isinstance(op, Jitter):
            events.append(("jitter", *[int(i) for i in p[:4]], *[None if math.isnan(f) else f for f in p[4:].tolist()]))
        elif isinstance(op, Grayscale) and p[0] > 0:
            events.append(("gray",))
        elif isinstance(op, Blur) and p[0] > 0:
            events.append(("blur", float(p[1])))
        elif isinstance(op, Solarize) and p[0] > 0:
            events.append(("solarize",))
        elif isinstance(op, Rotate) and p[0] != 0:
            events.append(("rotate", float(p[0])))

    for view, row in zip(plan, params):
        events.append(("crop", *[int(v) for v in row[:4]]))
        at = view.crop.width
        for op in view.ops:
            read(op, row[at:at + op.width])
            at += op.width
    return events


@pytest.mark.parametrize("name", LIGHTLY + ("vicregl",))
def test_the_device_path_draws_the_cpu_paths_parameters_sample_for_sample(name, cpu_recorder):
    """Every drawn value (crop boxes, flips, jitter orders and factors, grayscale, blur sigmas, solarisation), in
    call order, for 60 samples."""
    cls, cfg = config(name, **({"n_local_views": 2} if name == "vicregl" else {}))
    plan = check_device_views(cls, cfg)
    image = textured(80, 96)
    cpu = ViewsDataset([image], build_transform(cls, cfg)[0], seed=11, loader=lambda e: e)
    device = ViewsDataset([image], DeviceViewsTransform(plan), seed=11, loader=lambda e: e, n_image_views=0)
    for epoch in range(60):
        cpu_recorder.clear()
        cpu[(epoch, 0)]
        expected = [e for e in cpu_recorder if e is not None]  # None: a flip with location not applied
        cpu_recorder.clear()
        params = device[(epoch, 0)]["inputs"][1]
        # in the worker only the draws happen: torchvision's make_params, no pixel op
        assert [e for e in cpu_recorder if e is not None] == [e for e in expected if e[0] in ("crop", "jitter")]
        assert device_events(plan, params) == expected, (name, epoch)


def test_what_workers_ship_does_not_depend_on_their_number():
    """Two loader workers ship the bytes one process ships: images, parameters, shrink factors (per-sample seeds)."""
    from torch.utils.data import DataLoader

    cls, cfg = config("dino")
    images = [textured(60 + 10 * k, 70, seed=k) for k in range(8)]
    dataset = ViewsDataset(images, DeviceViewsTransform(check_device_views(cls, cfg)), seed=9, loader=lambda e: e,
                           n_image_views=0)
    keys = [(1, k) for k in (3, 0, 7, 5, 1, 2, 6, 4)]
    batches = [list(DataLoader(dataset, batch_size=4, sampler=keys, num_workers=workers,
                               collate_fn=collate_device_views)) for workers in (0, 2)]
    for one, two in zip(*batches):
        assert all(torch.equal(a, b) for a, b in zip(one["inputs"], two["inputs"]))


@pytest.mark.parametrize("name", ("simclr", "dino", "vicregl", "lvmmed", "peac", "models_genesis"))
@pytest.mark.parametrize("grey", [False, True])
def test_an_array_as_a_packed_corpus_holds_it_ships_what_its_pil_image_ships(name, grey):
    """A uint8 array (PackedImages.pixels) in place of the PIL image: the same draws and grids (the draws see only
    its size), the pixels as stored, and after the collate the RGB pixels the PIL image gives."""
    cls, cfg = config(name)
    rgb = np.array(textured(90, 70, seed=3))
    array = rgb[:, :, 1].copy() if grey else rgb
    image = Image.fromarray(array).convert("RGB")  # PackedImages.rgb
    transform = DeviceViewsTransform(check_device_views(cls, cfg))
    from_array, from_image = (ViewsDataset([x], transform, seed=4, loader=lambda e: e, n_image_views=0)
                              for x in (array, image))
    for epoch in range(5):
        ours, theirs = from_array[(epoch, 0)]["inputs"], from_image[(epoch, 0)]["inputs"]
        assert ours[0].shape == (90, 70, 1 if grey else 3)
        assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours[1:], theirs[1:]))
        assert torch.equal(collate_device_views([{"inputs": ours}])["inputs"][0],
                           collate_device_views([{"inputs": theirs}])["inputs"][0])


def test_bernoulli_compares_as_torch_does_in_float32(monkeypatch):
    """float32(0.7) < 0.7 in float64, yet torch's `rand < 0.7` compares in float32: a draw of exactly
    float32(0.7) is not taken by either, and v1 RandomApply's `p < rand` skip takes it."""
    from medssl_bench.harness import device_ops

    edge = torch.tensor([0.7], dtype=torch.float32)
    assert float(edge) < 0.7 and not bool(edge < 0.7)
    monkeypatch.setattr(device_ops.torch, "rand", lambda *shape: edge.clone())
    assert device_ops.bernoulli(0.7) == 0.0 and not bool(0.7 < edge) and device_ops.bernoulli(0.7, at_p=True) == 1.0
    monkeypatch.setattr(device_ops.torch, "rand", lambda *shape: torch.nextafter(edge, torch.zeros(1)))
    assert device_ops.bernoulli(0.7) == 1.0


@pytest.mark.parametrize("degrees", [None, 30.0])
def test_rotations_are_drawn_as_lightly_draws_them(degrees, cpu_recorder):
    """The lightly methods rotate with probability 0; a transform that rotates (90 degrees, or uniform in +-30)
    gets the same angles on the device path."""
    from lightly.transforms import SimCLRTransform

    from medssl_bench.harness.device_views import view_plan

    transform = SimCLRTransform(input_size=32, rr_prob=0.5, rr_degrees=degrees, normalize=None)
    plan, image = view_plan(transform), textured(40, 48)
    cpu = ViewsDataset([image], transform, seed=4, loader=lambda e: e)
    device = ViewsDataset([image], DeviceViewsTransform(plan), seed=4, loader=lambda e: e, n_image_views=0)
    for epoch in range(40):
        cpu_recorder.clear()
        cpu[(epoch, 0)]
        expected = list(cpu_recorder)
        assert device_events(plan, device[(epoch, 0)]["inputs"][1]) == expected
    assert any(e[0] == "rotate" for e in expected) or degrees is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ("simclr", "byol", "dino"))
def test_parameter_distributions_match_lightlys_over_independent_draws(name, cpu_recorder):
    """Device draws from seeds 0.. against lightly's CPU draws from other seeds: KS on crop scale and log aspect
    ratio per crop size (p > 0.001), and flip, jitter, grayscale, blur and solarisation rates within 4.5 sigma."""
    cls, cfg = config(name)
    plan = check_device_views(cls, cfg)
    image, n = textured(40, 48), 1500
    cpu = ViewsDataset([image], build_transform(cls, cfg)[0], seed=1, loader=lambda e: e)
    for epoch in range(n):
        cpu[(epoch, 0)]
    lightly_events = list(cpu_recorder)
    device = ViewsDataset([image], DeviceViewsTransform(plan), seed=2, loader=lambda e: e, n_image_views=0)
    ours = [e for epoch in range(n) for e in device_events(plan, device[(epoch, 0)]["inputs"][1])]

    def crops(events):
        boxes = np.array([e[1:] for e in events if e[0] == "crop"], dtype=float)
        return boxes[:, 2] * boxes[:, 3] / (40 * 48), np.log(boxes[:, 3] / boxes[:, 2])

    for a, b in zip(crops(lightly_events), crops(ours)):
        assert ks_2samp(a, b).pvalue > 1e-3
    for kind in ("hflip", "jitter", "gray", "blur", "solarize"):
        rates = [sum(e[0] == kind for e in events) / (n * len(plan)) for events in (lightly_events, ours)]
        sigma = math.sqrt(max(rates[0] * (1 - rates[0]), 1e-4) / (n * len(plan)))
        assert abs(rates[0] - rates[1]) < 4.5 * sigma * math.sqrt(2), (kind, rates)
    sigmas = [[e[1] for e in events if e[0] == "blur"] for events in (lightly_events, ours)]
    assert ks_2samp(*sigmas).pvalue > 1e-3


# ---- pixels: torchvision's ops within stated tolerances ---------------------------------------------------------


def as_float(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()[None] / 255


def gap(device: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(mean, max) absolute difference in 8-bit levels."""
    diff = (device - reference).abs() * 255
    return float(diff.mean()), float(diff.max())


ALL = torch.ones(1, dtype=torch.bool)


@pytest.mark.parametrize("interpolation, mean_levels", [("bilinear", 0.6), ("bicubic", 2.5)])
@pytest.mark.parametrize("box", [(10, 20, 250, 300), (100, 150, 40, 30), (0, 0, 300, 400), (50, 60, 64, 64)])
def test_crop_and_resize_is_torchvisions(box, interpolation, mean_levels):
    """Same-size crops are exact; shrunk (up to 6x) and enlarged crops differ by resampling filters only: PIL's
    antialiased kernels against a Gaussian pre-blur + grid sampling (mean under 0.6 levels bilinear, 2.5 bicubic)."""
    image, mode = textured(300, 400), InterpolationMode(interpolation)
    reference = as_float(F.resized_crop(image, *box, [64, 64], interpolation=mode, antialias=True))
    ours = Crop(v2.RandomResizedCrop(64, interpolation=mode)).crop(as_float(image), torch.tensor([box]).float(),
                                                                   torch.ones(1))
    mean, _ = gap(ours, reference)
    assert mean < (0.01 if box[2:] == (64, 64) else mean_levels), mean


@pytest.mark.parametrize("fn_id, factor, mean_levels", [(0, 1.3, 0.6), (0, 0.4, 0.6), (1, 0.7, 0.6), (1, 1.6, 0.7),
                                                        (2, 1.5, 0.5), (2, 0.2, 0.5), (3, 0.15, 1.2),
                                                        (3, -0.3, 1.2)])
def test_colour_jitter_is_torchvisions(fn_id, factor, mean_levels):
    """Brightness, contrast, saturation (PIL rounds to 8 bits after each: under 0.7 levels) and hue (PIL shifts
    8-bit HSV: under 1.2 levels) with torchvision's factor conventions."""
    image = F.resized_crop(textured(300, 400), 10, 20, 250, 300, [64, 64])
    fn = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)[fn_id]
    params = torch.full((1, 8), math.nan)
    params[0, :4] = torch.tensor([fn_id] + [k for k in range(4) if k != fn_id])
    params[0, 4 + fn_id] = factor
    mean, _ = gap(Jitter(None).apply(as_float(image), params, ALL), as_float(fn(image, factor)))
    assert mean < mean_levels, mean


def test_grayscale_solarise_flips_and_blur_are_torchvisions_and_pils():
    from lightly.transforms.gaussian_blur import GaussianBlur
    from lightly.transforms.solarize import RandomSolarization

    image = F.resized_crop(textured(300, 400), 10, 20, 250, 300, [64, 64])
    x, on = as_float(image), torch.ones(1, 1)
    assert gap(Grayscale(1).apply(x, on, ALL), as_float(F.rgb_to_grayscale(image, 3)))[1] <= 0.51  # PIL rounds luma
    assert gap(Solarize(RandomSolarization(1.0)).apply(x, on, ALL), as_float(ImageOps.solarize(image, 128)))[1] < 1e-3
    assert gap(Flip(1, True).apply(x, on, ALL), as_float(F.hflip(image)))[1] == 0
    assert gap(Flip(1, False).apply(x, on, ALL), as_float(F.vflip(image)))[1] == 0
    assert gap(Flip(1, True).apply(x, on, ~ALL), x)[1] == 0  # a row not drawn is left alone
    for angle in (90.0, 30.0, -17.0):  # nearest neighbour, as torchvision's rotate: exact
        assert gap(Rotate(v2.RandomRotation(45)).apply(x, torch.tensor([[angle]]), ALL),
                   as_float(F.rotate(image, angle)))[1] == 0
    blur = Blur(GaussianBlur(prob=1, sigmas=(0.1, 2.0)))
    for sigma in (0.5, 1.0, 2.0):  # PIL's radius is a box-blur approximation of a Gaussian of that sigma
        mean, _ = gap(blur.apply(x, torch.tensor([[1.0, sigma]]), ALL),
                      as_float(image.filter(ImageFilter.GaussianBlur(radius=sigma))))
        assert mean < 1.0, (sigma, mean)


@pytest.mark.parametrize("name", LIGHTLY + ("vicregl",))
def test_a_batch_of_device_views_is_the_cpu_paths_views(name):
    """Whole views, every op together, against the CPU path's for the same seeds and images (one 400 px image
    travels shrunk 2x): mean under 4 levels (DINO's bicubic crops differ most), while views of another epoch, the
    same images differently augmented, are over 10 levels off. VICRegL's location grids (crop box and flips in
    the image's pixels) equal the CPU path's exactly."""
    cls, cfg = config(name, **({"n_local_views": 2} if name == "vicregl" else {}))
    plan = check_device_views(cls, cfg)
    images = [textured(80, 96, seed=k) for k in range(5)] + [textured(400, 360, seed=9)]
    transform, n_images = build_transform(cls, cfg)
    cpu = ViewsDataset(images, transform, seed=5, loader=lambda e: e, n_image_views=n_images)
    device = ViewsDataset(images, DeviceViewsTransform(plan), seed=5, loader=lambda e: e, n_image_views=0)
    reference = ViewsPreprocessor()(collate_views([cpu[(0, k)] for k in range(6)]))["inputs"]
    n_images = n_images or len(reference)
    for ours_grid, cpu_grid in zip(DeviceViewsPreprocessor(plan)(collate_device_views(
            [device[(0, k)] for k in range(6)]))["inputs"][n_images:], reference[n_images:]):
        assert torch.equal(ours_grid, cpu_grid)
    reference = reference[:n_images]
    ours = DeviceViewsPreprocessor(plan)(collate_device_views([device[(0, k)] for k in range(6)]))["inputs"]
    assert len(ours) == len(plan) * (2 if name == "vicregl" else 1)
    ours = ours[:n_images]
    assert [v.shape for v in ours] == [v.shape for v in reference]
    other = DeviceViewsPreprocessor(plan)(collate_device_views([device[(1, k)] for k in range(6)]))["inputs"][:n_images]
    std = ViewsPreprocessor().std  # normalised units back to 8-bit levels
    for a, b, c in zip(ours, reference, other):
        assert float(((a - b).abs() * std).mean((1, 2, 3)).max()) < 4.0
        assert float(((c - b).abs() * std).mean((1, 2, 3)).min()) > 10.0


# ---- runs ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_device_views_run_resumes_bit_identically(tiny_corpus):
    workspace, corpus_id = tiny_corpus
    assert len(device_views_resume(workspace, ["--corpus", corpus_id], "simclr", 32)) == 6


@pytest.mark.parametrize("name, what", [("models_genesis", "CleanView")])
def test_a_method_without_a_device_path_is_refused_in_one_line(name, what, tiny_corpus, capsys, monkeypatch):
    """Every method offers a device path now: a view class without its `device_plan` stands in for one without."""
    from medssl_bench.methods.models_genesis import CleanView

    monkeypatch.delattr(CleanView, "device_plan")
    workspace, corpus_id = tiny_corpus
    fails_cleanly(capsys, ["pretrain", "--workspace", str(workspace), "--corpus", corpus_id, "--method", name,
                           "--augment", "device", "--name", f"dv-{name}"],
                  f"method {name}'s views ({what}", "have no device path yet; use --augment cpu")
    assert not (workspace / "runs" / f"dv-{name}").exists()  # refused before a run folder exists


def test_ark_a_label_using_method_has_a_device_path_and_without_its_plan_none(monkeypatch):
    """Its labels follow its two image views from the loader, not its transform: a plan of two views passes
    (tests/test_device_views_ark_genesis.py); without `device_plan` its view class is refused as before."""
    from medssl_bench.methods.ark import SharedGeometryViews

    cls = get_method("ark")
    assert len(check_device_views(cls, resolve_config(cls, "quick", {}, {}) | {"augment": "device"})) == 2
    monkeypatch.delattr(SharedGeometryViews, "device_plan")
    with pytest.raises(UserError, match="method ark's views .SharedGeometryViews. have no device path yet"):
        check_device_views(cls, resolve_config(cls, "quick", {}, {}) | {"augment": "device"})


def test_augment_takes_cpu_or_device(tiny_corpus, capsys):
    workspace, corpus_id = tiny_corpus
    fails_cleanly(capsys, ["pretrain", "--workspace", str(workspace), "--corpus", corpus_id, "--method", "simclr",
                           "--augment", "gpu"], "augment must be 'cpu'", "got 'gpu'")
    assert resolve_config(get_method("simclr"), "quick", {}, {})["augment"] == "cpu"  # the default
