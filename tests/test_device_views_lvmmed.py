"""`augment: device` for the methods' own view classes that offer a plan (`device_plan()`): LVM-Med's (methods/lvmmed.py
GeometricViews: our crop box and flip, lightly's VICRegL photometric draws and both crop grids equal the CPU path's
sample for sample) and PEAC's (methods/blocks/peac_views.py GridViews: the same offsets, the same overlap masks);
whole views are the CPU path's within tests/test_device_views.py's tolerance; runs resume bit-identically; an own
view class without `device_plan` is refused (Ark's and Models Genesis': tests/test_device_views_ark_genesis.py)."""
from __future__ import annotations

import pickle

import pytest
import torch

from medssl_bench.harness.config import build_transform, resolve_config
from medssl_bench.harness.data import ViewsDataset, ViewsPreprocessor, collate_views
from medssl_bench.harness.device_views import (DeviceViewsPreprocessor, DeviceViewsTransform, check_device_views,
                                               collate_device_views)
from medssl_bench.harness.errors import UserError
from medssl_bench.methods import get_method
from medssl_bench.methods.blocks import crop_grid
from tests.pretrain_helpers import device_views_resume
from tests.test_device_views import config, cpu_recorder, device_events, textured  # noqa: F401 (a fixture)


@pytest.fixture
def lvmmed_recorder(cpu_recorder, monkeypatch):  # noqa: F811 (the imported fixture)
    """cpu_recorder plus LVM-Med's own crop and flip, read where both are known: the call of cell_centres."""
    centres = crop_grid.cell_centres

    def recorded(top, left, height, width, grid, hflip):
        cpu_recorder.extend([("crop", top, left, height, width)] + ([("hflip",)] if hflip else []))
        return centres(top, left, height, width, grid, hflip)
    monkeypatch.setattr(crop_grid, "cell_centres", recorded)
    return cpu_recorder


def datasets(image_size: int, images, seed: int, name: str = "lvmmed", **overrides):
    cls, cfg = config(name, image_size=image_size, **overrides)
    plan = check_device_views(cls, cfg)
    transform, n_images = build_transform(cls, cfg)
    cpu = ViewsDataset(images, transform, seed=seed, loader=lambda e: e, n_image_views=n_images)
    shipped = pickle.loads(pickle.dumps(DeviceViewsTransform(plan)))  # as a spawned loader worker gets it
    device = ViewsDataset(images, shipped, seed=seed, loader=lambda e: e, n_image_views=0)
    return plan, cpu, device


@pytest.mark.parametrize("n_local", [0, 2])
def test_lvmmed_draws_and_grids_are_the_cpu_paths_sample_for_sample(lvmmed_recorder, n_local):
    """60 samples (96 px views: 3 x 3 grids; with local crops, then two 64 px crops: 2 x 2 grids) of a non-square
    image: every drawn value in call order (crop box, flip, jitter order and factors, grayscale, blur sigma,
    solarisation) and every crop grid, exactly."""
    plan, cpu, device = datasets(96, [textured(150, 110)], seed=11, n_local_views=n_local, local_crop_size=64)
    assert len(plan) == 2 + n_local and all(view.grid is not None for view in plan)
    flips = 0
    for epoch in range(60):
        lvmmed_recorder.clear()
        cpu_item = cpu[(epoch, 0)]["inputs"]
        expected = [e for e in lvmmed_recorder if e is not None]
        lvmmed_recorder.clear()
        shipped = device[(epoch, 0)]["inputs"]
        # in the worker only the draws (jitter's make_params) and each view's grid after them (its cell centres):
        # no pixel op
        worker = [e for e in lvmmed_recorder if e is not None]
        for kinds in (("jitter",), ("crop", "hflip")):
            assert [e for e in worker if e[0] in kinds] == [e for e in expected if e[0] in kinds], epoch
        assert len(worker) == len([e for e in expected if e[0] in ("crop", "hflip", "jitter")])
        assert device_events(plan, shipped[1]) == expected, epoch
        assert len(shipped) == 3 + len(plan)  # pixels, parameters, shrink, one grid per view
        assert [g.shape for g in shipped[3:]] == [(3, 3, 2)] * 2 + [(2, 2, 2)] * n_local
        assert all(torch.equal(ours, theirs) for ours, theirs in zip(shipped[3:], cpu_item[len(plan):], strict=True)), epoch
        flips += sum(e == ("hflip",) for e in expected)
    assert 10 * len(plan) < flips < 50 * len(plan)  # both branches of the flip (and of the grids' mirroring) were taken


def views_three_ways(name: str, images: list) -> tuple[list, list, list]:
    """The six images' views at 64 px: the device path's (epoch 0), the CPU path's (epoch 0) and the device path's
    of epoch 1, normalised; checks the last (400 px) image travelled reduced."""
    plan, cpu, device = datasets(64, images, seed=5, name=name)
    reference = ViewsPreprocessor()(collate_views([cpu[(0, k)] for k in range(6)]))["inputs"]
    data = collate_device_views([device[(0, k)] for k in range(6)])
    assert float(data["inputs"][2].max()) > 1  # the 400 px image travelled reduced
    ours = DeviceViewsPreprocessor(plan)(data)["inputs"]
    other = DeviceViewsPreprocessor(plan)(collate_device_views([device[(1, k)] for k in range(6)]))["inputs"]
    assert len(ours) == len(reference) == 4
    return ours, reference, other


def test_a_batch_of_lvmmed_device_views_is_the_cpu_paths_views():
    """Whole views (crop, flip, jitter, grayscale, blur together), one 400 px image shipped shrunk: mean under 4
    levels of the CPU path's, views of another epoch over 10 levels off; the grids after them exactly equal."""
    images = [textured(80, 96, seed=k) for k in range(5)] + [textured(400, 360, seed=9)]
    ours, reference, other = views_three_ways("lvmmed", images)
    assert all(torch.equal(a, b) for a, b in zip(ours[2:], reference[2:]))
    std = ViewsPreprocessor().std  # normalised units back to 8-bit levels
    for a, b, c in zip(ours[:2], reference[:2], other[:2]):
        assert a.shape == b.shape == (6, 3, 64, 64)
        assert float(((a - b).abs() * std).mean((1, 2, 3)).max()) < 4.0
        assert float(((c - b).abs() * std).mean((1, 2, 3)).min()) > 10.0


@pytest.mark.parametrize("name, what", [("models_genesis", "CleanView"), ("ark", "SharedGeometryViews")])
def test_an_own_view_class_without_its_device_plan_is_refused(name, what, monkeypatch):
    cls = get_method(name)
    monkeypatch.delattr(type(cls.transform(64, cls.views)), "device_plan")
    with pytest.raises(UserError, match=f"method {name}'s views .{what}. have no device path yet"):
        check_device_views(cls, resolve_config(cls, "quick", {}, {}) | {"augment": "device"})


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [("lvmmed", ["--set", "n_local_views=2", "--set", "local_crop_size=32"]),
                                           ("peac", [])])
def test_a_device_views_run_of_an_own_view_method_resumes_bit_identically(name, options, tiny_corpus):
    """Quick profile at 64 px, 2 epochs of 3 steps: stopped after epoch 1 and resumed equals uninterrupted (LVM-Med
    with two local crops, so their matchings resume too)."""
    workspace, corpus_id = tiny_corpus
    rows = device_views_resume(workspace, ["--corpus", corpus_id], name, 64, *options)
    assert len(rows) == 6 and all(("local_match_acc" in r) == bool(options) for r in rows)


# ---- PEAC ------------------------------------------------------------------------------------------------------


@pytest.fixture
def peac_draws(monkeypatch):
    """Each call of GridViews.draw (both views' offsets) and what it drew, on either path."""
    from medssl_bench.methods.blocks.peac_views import GridViews

    draws, draw = [], GridViews.draw
    monkeypatch.setattr(GridViews, "draw", lambda self: (lambda out: draws.append(out) or out)(draw(self)))
    return draws


def test_peac_offsets_and_masks_are_the_cpu_paths_sample_for_sample(peac_draws):
    """60 samples of a 128 px square image (the quick canvas: no resize): the same offsets drawn, the shipped
    boxes are the CPU path's windows, the views equal the CPU path's (same-size crops are exact) and so do the
    overlap masks."""
    plan, cpu, device = datasets(64, [textured(128, 128)], seed=3, name="peac")
    shared = 0
    for epoch in range(60):
        reference = cpu[(epoch, 0)]["inputs"]
        shipped = device[(epoch, 0)]["inputs"]
        assert len(peac_draws) == 2 and peac_draws[0] == peac_draws[1], epoch
        (dy, dx), offsets = peac_draws.pop()
        peac_draws.clear()
        assert shipped[1].tolist() == [[dy + 32 * row, dx + 32 * col, 64, 64] for row, col in offsets]
        views = DeviceViewsPreprocessor(plan)(collate_device_views([{"inputs": shipped}]))["inputs"]
        expected = ViewsPreprocessor()(collate_views([{"inputs": reference}]))["inputs"]
        for ours, theirs in zip(views[:2], expected[:2]):
            assert float(((ours - theirs).abs() * ViewsPreprocessor().std).max()) < 0.01, epoch
        assert all(torch.equal(a, b) for a, b in zip(views[2:], expected[2:])), epoch
        shared += int(reference[2].sum())
    assert 60 < shared < 60 * 4  # some pairs overlapped partly, the masks not all full


def test_a_batch_of_peac_device_views_is_the_cpu_paths_views():
    """Non-square images (the canvas resized down and up, one 400 px image shipped shrunk): each view's mean
    under 2 levels of the CPU path's, views of another epoch (other windows) well off; masks equal."""
    images = [textured(80 + 20 * k, 150 - 10 * k, seed=k) for k in range(5)] + [textured(400, 360, seed=9)]
    ours, reference, other = views_three_ways("peac", images)
    assert all(torch.equal(a, b) for a, b in zip(ours[2:], reference[2:]))
    std = ViewsPreprocessor().std
    for a, b, c in zip(ours[:2], reference[:2], other[:2]):
        assert a.shape == b.shape == (6, 3, 64, 64)
        assert float(((a - b).abs() * std).mean((1, 2, 3)).max()) < 2.0
        assert float(((c - b).abs() * std).mean((1, 2, 3)).min()) > 10.0
