"""Views that travel as uint8 skip lightly's float ToTensor in the worker (harness.data.uint8_pixels): the same
pixels, sample for sample, for every method; the method's own transform is left as it was."""
from __future__ import annotations

import pytest
import torch

from medssl_bench.harness.config import build_transform, resolve_config
from medssl_bench.harness.data import ViewsDataset
from medssl_bench.methods import METHOD_NAMES, get_method
from tests.test_device_views import textured

# methods whose views end in lightly's ToTensor (the others make their own tensors and keep their path)
LIGHTLY_VIEWS = {"simclr", "moco", "byol", "barlowtwins", "vicregl", "swav", "dino", "lvmmed"}


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_uint8_views_are_the_float_paths_pixels(name):
    cls = get_method(name)
    cfg = resolve_config(cls, "quick", {"image_size": 64}, {})
    transform, n_images = build_transform(cls, cfg)
    images = [textured(80, 100, seed) for seed in range(3)]
    fast = ViewsDataset(images, transform, seed=3, loader=lambda e: e, n_image_views=n_images)
    reference = ViewsDataset(images, transform, seed=3, loader=lambda e: e, n_image_views=n_images)
    reference.transform = transform  # the float path: lightly's ToTensor, then to_uint8
    for key in [(epoch, index) for epoch in range(4) for index in range(3)]:
        got, want = fast[key]["inputs"], reference[key]["inputs"]
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (name, key)

    with torch.random.fork_rng(devices=[]):
        direct, original = fast.transform(images[0]), transform(images[0])
    n = len(direct) if n_images is None else n_images
    assert all(view.dtype == (torch.uint8 if name in LIGHTLY_VIEWS else torch.float32) for view in direct[:n]), name
    assert all(view.dtype != torch.uint8 for view in original[:n])  # the method's own transform is unchanged


def test_cpu_views_do_not_depend_on_workers_and_leave_the_main_processs_rngs_alone():
    """Loader workers skip restoring their global RNGs after a sample (harness.data.seeded_rngs): two workers ship
    the bytes the main process ships, and the main process's own torch, random and numpy draws are untouched."""
    import random

    import numpy as np
    from torch.utils.data import DataLoader

    from medssl_bench.harness.data import collate_views

    cls = get_method("dino")  # its crops draw from torch, lightly's blur and solarisation from numpy
    transform, n_images = build_transform(cls, resolve_config(cls, "quick", {"image_size": 64}, {}))
    dataset = ViewsDataset([textured(70 + 5 * k, 90, k) for k in range(6)], transform, seed=4, loader=lambda e: e,
                           n_image_views=n_images)
    keys = [(2, k) for k in (4, 1, 5, 0, 3, 2)]
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    in_main = [collate_views([dataset[key] for key in keys[at:at + 3]]) for at in (0, 3)]
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    in_workers = DataLoader(dataset, batch_size=3, sampler=keys, num_workers=2, collate_fn=collate_views)
    for one, two in zip(in_main, in_workers, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(one["inputs"], two["inputs"], strict=True))
