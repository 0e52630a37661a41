"""`augment: device` for Ark (methods/ark.py SharedGeometryViews: one geometric draw, a v1 RandomResizedCrop then
RandomApply(RandomAffine), for both views, and RandomApply(RandomChoice([ColorJitter, RandomGamma])) on the student;
teacher_view "whole": the resized whole image) and Models Genesis (methods/models_genesis.py CleanView: a v1
RandomResizedCrop). The worker draws the CPU path's crop boxes, affine angle / shift / scale, photometric choice and
jitter / gamma factors sample for sample, and their distributions; the new device ops (affine, gamma, choice) are
torchvision's within stated tolerances; whole views are the CPU path's; runs with labels (Ark) and without (Models
Genesis) resume bit-identically."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from scipy.stats import ks_2samp
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from medssl_bench.harness.config import build_transform
from medssl_bench.harness.data import ViewsDataset, ViewsPreprocessor, collate_views
from medssl_bench.harness.device_ops import Affine, Apply, Choice, Gamma, Jitter, Unsupported, WholeImage
from medssl_bench.harness.device_views import (DeviceViewsPreprocessor, DeviceViewsTransform, SameDraw,
                                               check_device_views, collate_device_views)
from medssl_bench.methods.ark import RandomGamma
from tests.pretrain_helpers import device_views_resume
from tests.test_device_views import ALL, as_float, config, gap, textured

# (method, its view settings): Ark with the teacher on the shared crop and on the whole image, Models Genesis
CASES = [("ark", {}), ("ark", {"teacher_view": "whole"}), ("models_genesis", {})]
IDS = ["ark", "ark-whole", "models_genesis"]


@pytest.fixture
def v1_recorder(monkeypatch):
    """What the CPU path's v1 ops draw, in call order: RandomResizedCrop.get_params (its forward's call),
    RandomAffine.get_params, ColorJitter.get_params and Ark's RandomGamma.draw. Patched on the classes, so the device
    path's draws (the same calls) are recorded too."""
    events: list[tuple] = []

    def static(cls, make):
        original = cls.get_params
        monkeypatch.setattr(cls, "get_params", staticmethod(
            lambda *args: (lambda out: events.append(make(out)) or out)(original(*args))))

    static(T.RandomResizedCrop, lambda box: ("crop", *box))
    static(T.RandomAffine, lambda p: ("affine", p[0], *p[1], p[2]))
    static(T.ColorJitter, lambda p: ("jitter", *[int(i) for i in p[0]], *p[1:]))
    original = RandomGamma.draw

    def draw(self):  # named as the method: a pickled plan finds it by name
        events.append(("gamma", original(self)))
        return events[-1][1]
    monkeypatch.setattr(RandomGamma, "draw", draw)
    return events


def read_events(view, row: torch.Tensor) -> list[tuple]:
    """The same events read back from a view's parameter row."""
    events = [("crop", *[int(v) for v in row[:4]])]

    def read(op, p) -> None:
        if isinstance(op, Apply) and p[0] > 0:
            at = 1
            for inner in op.ops:
                read(inner, p[at:at + inner.width])
                at += inner.width
        elif isinstance(op, Choice):
            at = 1 + sum(inner.width for inner in op.ops[:int(p[0])])
            read(op.ops[int(p[0])], p[at:at + op.ops[int(p[0])].width])
        elif isinstance(op, Affine):
            events.append(("affine", float(p[0]), int(p[1]), int(p[2]), float(p[3])))
        elif isinstance(op, Jitter):
            events.append(("jitter", *[int(i) for i in p[:4]], *[None if math.isnan(f) else f for f in p[4:].tolist()]))
        elif isinstance(op, Gamma):
            events.append(("gamma", float(p[0])))

    at = view.crop.width
    for op in view.ops:
        read(op, row[at:at + op.width])
        at += op.width
    return events


def datasets(name: str, views: dict, images: list, seed: int, image_size: int = 64):
    cls, cfg = config(name, image_size=image_size, **views)
    plan = check_device_views(cls, cfg)
    transform, n_images = build_transform(cls, cfg)
    cpu = ViewsDataset(images, transform, seed=seed, loader=lambda e: e, n_image_views=n_images)
    # as a spawned loader worker gets it: Ark's teacher view still reads the student view's draw after pickling
    shipped = pickle.loads(pickle.dumps(DeviceViewsTransform(plan)))
    device = ViewsDataset(images, shipped, seed=seed, loader=lambda e: e, n_image_views=0)
    return plan, cpu, device


# ---- parameters: the CPU path's, sample for sample, and their distributions --------------------------------------


@pytest.mark.parametrize("name, views", CASES, ids=IDS)
def test_the_worker_draws_the_cpu_paths_parameters_sample_for_sample(name, views, v1_recorder):
    """100 samples of a non-square image: the crop box, whether the affine applies and its angle, shift and scale,
    whether the photometric step applies, which op it picks and its jitter order and factors or gamma, in call order;
    the worker makes the very calls the CPU path makes (recorded on both). Ark's teacher row repeats the student's
    geometric slots (drawn once), or is the whole image."""
    plan, cpu, device = datasets(name, views, [textured(80, 96)], seed=11)
    seen = set()
    for epoch in range(100):
        v1_recorder.clear()
        cpu[(epoch, 0)]
        expected = list(v1_recorder)
        v1_recorder.clear()
        params = device[(epoch, 0)]["inputs"][1]
        assert v1_recorder == expected, epoch  # the same calls, in the same order, nothing drawn twice
        assert read_events(plan[0], params[0]) == expected, epoch
        seen |= {e[0] for e in expected}
        if name == "ark":
            geometry = plan[0].crop.width + plan[0].ops[0].width
            teacher = params[1, :geometry] if isinstance(plan[1], SameDraw) else params[1, :4]
            assert teacher.tolist() == (params[0, :geometry].tolist() if isinstance(plan[1], SameDraw) else
                                        [0, 0, 80, 96]), epoch
            assert not params[1, geometry:].any()
    assert seen == ({"crop", "affine", "jitter", "gamma"} if name == "ark" else {"crop"})  # every branch taken


def test_what_workers_ship_for_ark_does_not_depend_on_their_number():
    """Two loader workers ship the bytes one process ships, the teacher rows (read back from the student's draw
    in each worker) included (NaN: a jitter factor not set, equal to itself here)."""
    from torch.utils.data import DataLoader

    images = [textured(60 + 10 * k, 70, seed=k) for k in range(8)]
    _, _, dataset = datasets("ark", {}, images, seed=9)
    keys = [(1, k) for k in (3, 0, 7, 5, 1, 2, 6, 4)]
    batches = [list(DataLoader(dataset, batch_size=4, sampler=keys, num_workers=workers,
                               collate_fn=collate_device_views)) for workers in (0, 2)]
    for one, two in zip(*batches):
        for a, b in zip(one["inputs"], two["inputs"]):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(one["inputs"][1][:, 1, :4], one["inputs"][1][:, 0, :4])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ark", "models_genesis"])
def test_parameter_distributions_match_the_cpu_paths_over_independent_draws(name, v1_recorder):
    """Device draws from seed 2 against the CPU path's from seed 1, 1500 samples: KS (p > 0.001) on crop scale and
    log aspect ratio; for Ark also on the affine angle, shift and scale, the jitter factors and gamma, and the rates
    of the affine (0.5) and of the photometric step (0.3) picking jitter or gamma (0.15 each) within 4.5 sigma."""
    n, image = 1500, textured(40, 48)
    plan, cpu, _ = datasets(name, {}, [image], seed=1)
    for epoch in range(n):
        cpu[(epoch, 0)]
    theirs = list(v1_recorder)
    _, _, device = datasets(name, {}, [image], seed=2)
    ours = [e for epoch in range(n) for e in read_events(plan[0], device[(epoch, 0)]["inputs"][1][0])]

    def values(events, kind, k):
        return np.array([e[k] for e in events if e[0] == kind], dtype=float)

    def crops(events):
        h, w = values(events, "crop", 3), values(events, "crop", 4)
        return h * w / (40 * 48), np.log(w / h)

    pairs = list(zip(crops(theirs), crops(ours)))
    assert len(pairs[0][0]) == len(pairs[0][1]) == n
    if name == "ark":
        pairs += [*[(values(theirs, "affine", k), values(ours, "affine", k)) for k in (1, 2, 3, 4)],
                  *[(values(theirs, "jitter", k), values(ours, "jitter", k)) for k in (5, 6)],
                  (values(theirs, "gamma", 1), values(ours, "gamma", 1))]
        for kind, rate in (("affine", 0.5), ("jitter", 0.15), ("gamma", 0.15)):
            for events in (theirs, ours):
                share = sum(e[0] == kind for e in events) / n
                assert abs(share - rate) < 4.5 * math.sqrt(rate * (1 - rate) / n), (kind, share)
    for a, b in pairs:
        assert ks_2samp(a, b).pvalue > 1e-3


# ---- pixels: torchvision's ops within stated tolerances ---------------------------------------------------------


PICTURE = F.resized_crop(textured(300, 400), 10, 20, 250, 300, [64, 48])  # non-square: pins the centre's axes


@pytest.mark.parametrize("angle, shift, scale", [(7.3, (3, -2), 1.05), (-9.9, (-4, 4), 0.91), (0.0, (2, 3), 1.0),
                                                 (90.0, (0, 0), 1.0)])
def test_the_affine_is_torchvisions(angle, shift, scale):
    """torchvision's F.affine on the PIL image (what RandomAffine's forward calls) against kornia's warp_affine.
    Nearest (RandomAffine's default), zero and colour fill: exact bar points that fall on a boundary between two
    pixels, where float rounding picks the side (under 1% of pixels). Bilinear: PIL's affine filter and its border
    with the fill differ from grid sampling: mean under 2 levels. A row not drawn is left alone."""
    x, params = as_float(PICTURE), torch.tensor([[angle, *shift, scale]])
    for fill in (0, (40, 80, 120)):
        op = Affine(T.RandomAffine(10, fill=fill), (64, 48))
        reference = as_float(F.affine(PICTURE, angle, list(shift), scale, [0.0, 0.0], fill=fill))
        differ = (((op.apply(x, params, ALL) - reference).abs() * 255) > 0.5).float().mean()
        assert float(differ) < 0.01, (fill, float(differ))
    op = Affine(T.RandomAffine(10, interpolation=InterpolationMode.BILINEAR), (64, 48))
    reference = as_float(F.affine(PICTURE, angle, list(shift), scale, [0.0, 0.0],
                                  interpolation=InterpolationMode.BILINEAR))
    assert gap(op.apply(x, params, ALL), reference)[0] < 2.0
    assert gap(op.apply(x, params, ~ALL), x)[1] == 0


def test_gamma_jitter_and_the_choice_are_torchvisions():
    """Gamma: PIL's 8-bit table floor((256 - 0.001) x^g) is within one level of kornia's x^g everywhere. v1
    ColorJitter's brightness and contrast: tests/test_device_views.py's tolerance (under 0.7 levels). The choice
    changes each row by its picked op only."""
    x = as_float(PICTURE)
    gamma = Gamma(RandomGamma().draw)
    for g in (0.8, 0.93, 1.2):
        assert gap(gamma.apply(x, torch.tensor([[g]]), ALL), as_float(F.adjust_gamma(PICTURE, g)))[1] < 1.001, g
    jitter = Jitter(T.ColorJitter(0.2, 0.2))
    for fn_id, fn, factor in ((0, F.adjust_brightness, 1.15), (1, F.adjust_contrast, 0.85)):
        params = torch.tensor([[fn_id, 1 - fn_id, 2, 3] + [math.nan] * 4])
        params[0, 4 + fn_id] = factor
        assert gap(jitter.apply(x, params, ALL), as_float(fn(PICTURE, factor)))[0] < 0.7
    choice = Choice(T.RandomChoice([T.ColorJitter(0.2, 0.2), RandomGamma()]), [jitter, gamma])
    rows = torch.zeros(3, choice.width)
    rows[:, 1:9] = torch.tensor([0, 1, 2, 3, 1.15, math.nan, math.nan, math.nan])
    rows[:, 9] = 0.8
    rows[1, 0] = 1  # row 0 jittered, row 1 gamma, row 2 not applied at all
    batch = x.expand(3, -1, -1, -1)
    out = choice.apply(batch, rows, torch.tensor([True, True, False]))
    assert torch.equal(out[0], jitter.apply(x, rows[:1, 1:9], ALL)[0])
    assert torch.equal(out[1], gamma.apply(x, rows[1:2, 9:], ALL)[0]) and torch.equal(out[2], x[0])


def test_unsupported_settings_are_named(monkeypatch):
    """Each op names what it cannot make; a method's views with such an op are one UserError line."""
    from medssl_bench.harness.errors import UserError
    from medssl_bench.methods.ark import SharedGeometryViews

    cls, cfg = config("ark")
    views = SharedGeometryViews(64)
    views.geometry.transforms[1].transforms[0].shear = [-5.0, 5.0]  # RandomAffine(..., shear=5)
    monkeypatch.setattr(cls, "transform", classmethod(lambda c, size, settings: views))
    with pytest.raises(UserError, match=r"method ark's views \(RandomAffine with shear\) have no device path yet; "
                                        r"use --augment cpu"):
        check_device_views(cls, cfg)
    with pytest.raises(Unsupported, match="RandomAffine with shear"):
        Affine(T.RandomAffine(10, shear=5), (64, 64))
    with pytest.raises(Unsupported, match="RandomAffine with a centre"):
        Affine(T.RandomAffine(10, center=(3, 4)), (64, 64))
    with pytest.raises(Unsupported, match="RandomAffine with bicubic interpolation"):
        Affine(T.RandomAffine(10, interpolation=InterpolationMode.BICUBIC), (64, 64))
    with pytest.raises(Unsupported, match="Resize to"):
        WholeImage(T.Resize(64))  # keep-ratio: not a box of the image


@pytest.mark.parametrize("name, views", CASES, ids=IDS)
def test_a_batch_of_device_views_is_the_cpu_paths_views(name, views):
    """Six images (one 400 px image shipped shrunk), two epochs: each view's mean under 2 levels of the CPU
    path's (the bilinear crop's antialiasing, tests/test_device_views.py: about 1 level; the affine is exact bar
    ties; jitter and gamma round to 8 bits on the CPU path: under 1 level), views of another epoch over 10 levels off
    (except Ark's whole-image teacher, which is not random)."""
    images = [textured(80, 96, seed=k) for k in range(5)] + [textured(400, 360, seed=9)]
    plan, cpu, device = datasets(name, views, images, seed=5)
    std = ViewsPreprocessor().std  # normalised units back to 8-bit levels
    made = []
    for epoch in (0, 1):
        reference = ViewsPreprocessor()(collate_views([cpu[(epoch, k)] for k in range(6)]))["inputs"]
        data = collate_device_views([device[(epoch, k)] for k in range(6)])
        assert float(data["inputs"][2].max()) > 1  # the 400 px image travelled reduced
        ours = DeviceViewsPreprocessor(plan)(data)["inputs"]
        assert len(ours) == len(reference) == len(plan)
        for a, b in zip(ours, reference):
            assert a.shape == b.shape == (6, 3, 64, 64)
            assert float(((a - b).abs() * std).mean((1, 2, 3)).max()) < 2.0, epoch
        made.append(ours)
    for k, (a, c) in enumerate(zip(*made)):
        if not (k == 1 and views.get("teacher_view") == "whole"):
            assert float(((c - a).abs() * std).mean((1, 2, 3)).min()) > 10.0


def test_arks_teacher_is_kept_from_the_students_geometry_not_made_twice(monkeypatch):
    """teacher_view "crop": the teacher's pixels are the student's after crop + affine, kept as the student is made
    (one crop per batch, not two) and equal, bit for bit, to the teacher view made on its own."""
    images = [textured(80, 96, seed=k) for k in range(6)]
    plan, _, device = datasets("ark", {}, images, seed=5)
    data = collate_device_views([device[(0, k)] for k in range(6)])
    pixels, params, shrink = data["inputs"][:3]
    images_float, params, shrink = pixels.permute(0, 3, 1, 2).float().div_(255), params.float(), shrink.float()
    alone = [view.make(images_float, params[:, k], shrink) for k, view in enumerate(plan)]
    assert float(params[:, 0, 4].sum()) > 0  # some samples got the affine (the shared ops are not a no-op)

    crops = []
    original = type(plan[0].crop).crop
    monkeypatch.setattr(type(plan[0].crop), "crop", lambda self, *a: crops.append(1) or original(self, *a))
    kept = DeviceViewsPreprocessor(plan).views(images_float, params, shrink)
    assert len(crops) == 1
    assert all(torch.equal(a, b) for a, b in zip(kept, alone))


# ---- runs ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ark", "models_genesis"])
def test_a_device_views_run_resumes_bit_identically(name, tiny_corpus, tmp_path):
    """Quick profile at 64 px, 2 epochs (Models Genesis on the tiny corpus: 3 steps each; Ark on phantom_ct's labels
    through the labelled loader: 4 steps each): stopped after epoch 1 and resumed equals uninterrupted."""
    workspace, corpus_id = tiny_corpus
    data = ["--labels-from", "phantom_ct"] if name == "ark" else ["--corpus", corpus_id]
    if name == "ark":
        workspace = tmp_path / "ws"
    assert len(device_views_resume(workspace, data, name, 64)) == (8 if name == "ark" else 6)
