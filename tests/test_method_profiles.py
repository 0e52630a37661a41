"""Every registered method's `paper` profile is a pinned recipe: it sets each training key a published recipe
fixes (harness.config.PAPER_RECIPE_KEYS and the keys its optimiser and schedule read), so no harness default
(ResNet-18, 64 px, batch 32, ...) fills one in silently; and a run that changes a pinned key is recorded as
having left its profile."""
from __future__ import annotations

import pytest

from medssl_bench.harness.config import (INIT_NONE, INIT_REQUIRED, PAPER_RECIPE_KEYS, TRAIN_DEFAULTS,
                                         paper_recipe_gaps, profile_label, resolve_config)
from medssl_bench.harness.method_api import SSLMethod
from medssl_bench.methods import METHOD_NAMES, get_method

# Published from ImageNet weights (LVM-Med: its paper; Ark: README.md --init imagenet); the rest from random ones.
IMAGENET_INIT = {"lvmmed", "ark"}


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_paper_profile_sets_every_recipe_key_itself(name):
    paper = get_method(name).profiles["paper"]
    assert paper_recipe_gaps(paper) == [], f"{name}: paper profile leaves these to TRAIN_DEFAULTS"
    assert paper["init"] == (INIT_REQUIRED if name in IMAGENET_INIT else INIT_NONE)
    assert paper["backbone"] == "resnet50"  # every paper (and the Models Genesis port's plan) is a ResNet-50


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_has_the_three_profiles(name):
    assert {"quick", "paper", "benchmark"} <= set(get_method(name).profiles)


def test_the_walk_fails_on_a_profile_that_omits_a_recipe_key():
    class Unpinned(SSLMethod):  # a paper profile that forgot its backbone and its SGD momentum
        profiles = {"paper": dict(init=INIT_NONE, image_size=224, batch_size=256, epochs=100, optimizer="sgd",
                                  base_lr=0.03, lr_scaling="linear", lr_schedule="step", warmup_epochs=0,
                                  weight_decay=1e-4, clip_grad=None, lr_milestones=[60], lr_gamma=0.1)}

    assert paper_recipe_gaps(Unpinned.profiles["paper"]) == ["backbone", "momentum"]
    # None is a value the profile chose (evenly spaced milestones), not a gap
    assert "lr_milestones" not in paper_recipe_gaps({**Unpinned.profiles["paper"], "lr_milestones": None})
    cosine = {k: v for k, v in Unpinned.profiles["paper"].items() if k not in ("lr_milestones", "lr_gamma")}
    assert paper_recipe_gaps({**cosine, "lr_schedule": "cosine"}) == ["backbone", "momentum", "min_lr_ratio"]


def test_the_recipe_keys_are_train_keys():
    assert set(PAPER_RECIPE_KEYS) <= set(TRAIN_DEFAULTS)


def test_ark_runs_the_realised_lr_not_the_nominal_one():
    cfg = resolve_config(get_method("ark"), "paper", {}, {})
    # engine.py:169 steps timm's warm-up with the validation loss as the epoch: lr = 1e-6 + val_loss x 0.3 / 20
    assert cfg["base_lr"] == 0.005 and cfg["lr_scaling"] == "none" and cfg["min_lr_ratio"] == 0.4
    assert 0.002 <= cfg["base_lr"] * cfg["min_lr_ratio"] < cfg["base_lr"] <= 0.3 / 60


def test_a_changed_recipe_key_leaves_the_paper_profile_but_the_seed_or_weights_do_not():
    simclr, lvmmed = get_method("simclr"), get_method("lvmmed")
    assert profile_label(resolve_config(simclr, "paper", {"epochs": 10}, {"temperature": "0.2"})) == \
        "paper (modified: epochs, temperature)"
    assert profile_label(resolve_config(simclr, "paper", {"epochs": 100}, {"seed": "3", "num_workers": "0"})) == \
        "paper"  # a value equal to the profile's, the seed and the workers change no recipe
    # weights named where the paper requires them keep the profile; declining them does not
    assert profile_label(resolve_config(lvmmed, "paper", {"init": "/w/imagenet.safetensors"}, {})) == "paper"
    assert profile_label(resolve_config(lvmmed, "paper", {"init": INIT_NONE}, {})) == "paper (modified: init)"
    assert profile_label(resolve_config(simclr, "paper", {"init": "/w/x.safetensors"}, {})) == \
        "paper (modified: init)"  # SimCLR's paper starts from random weights
