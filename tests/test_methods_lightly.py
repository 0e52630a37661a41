"""MoCo v2, Barlow Twins, VICRegL and SwAV (lightly losses/heads/views): each learns through `bench pretrain`
on the tiny corpus with its quick profile, and each keeps its own mechanism: MoCo's queue (updated every
step, in the checkpoint: tests/test_methods_contract.py resumes it exactly), Barlow Twins' paper projector,
VICRegL's location-matched local features, SwAV's unit-norm prototypes frozen in the first epoch."""
from __future__ import annotations

import math

import torch

from medssl_bench.harness.backbones import build_backbone, feature_map
from medssl_bench.harness.config import method_kwargs, resolve_config
from medssl_bench.harness.method_api import StepInfo
from medssl_bench.methods import get_method
from tests.pretrain_helpers import build as build_method, corpus_images, metrics, pretrain, train_step


def first_last(values: list[float], skip: int = 0, n: int = 10) -> tuple[float, float]:
    return sum(values[skip:skip + n]) / n, sum(values[-n:]) / n


def build(name: str, tiny_corpus, n_images: int, sets: dict[str, str] | None = None):
    """The method as the harness builds it (quick profile, 32 px), its mmengine model and optimiser, and one
    batch of `n_images` real views from the tiny corpus."""
    return build_method(name, corpus_images(tiny_corpus, n_images), {"image_size": 32}, sets)


# ---- MoCo v2 ----------------------------------------------------------------------------------------

def test_moco_loss_falls(tiny_corpus):
    """6 epochs (36 steps). The queue starts as lightly's random unit vectors (easy negatives: loss ~1 at step
    1); from step 3 on it holds only real keys (32 = 2 batches of 16), so the comparison starts there."""
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "moco", "--epochs", "6", "--seed", "7", "--name", "moco-run") == 0
    losses = [row["loss"] for row in metrics(workspace, "moco-run")]
    assert len(losses) == 36
    first, last = first_last(losses, skip=2)
    assert last < first - 0.05 * first, (first, last)


def test_moco_queue_takes_each_steps_keys_and_is_in_the_state_dict(tiny_corpus):
    model, optim_wrapper, batch, _ = build("moco", tiny_corpus, 8)
    bank = model.method.criterion.memory_bank
    assert {"method.criterion.memory_bank.bank", "method.criterion.memory_bank.bank_ptr"} <= set(model.state_dict())
    before = bank.bank.clone()
    train_step(model, optim_wrapper, batch, epoch=0, step=0)
    assert int(bank.bank_ptr) == 8
    assert not torch.equal(bank.bank[:8], before[:8]) and torch.equal(bank.bank[8:], before[8:])
    torch.testing.assert_close(bank.bank[:8].norm(dim=1), torch.ones(8))  # normalised keys
    train_step(model, optim_wrapper, batch, epoch=0, step=1)
    assert int(bank.bank_ptr) == 16 and not torch.equal(bank.bank[8:16], before[8:16])


# ---- Barlow Twins -----------------------------------------------------------------------------------

def test_barlowtwins_loss_falls(tiny_corpus):
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "barlowtwins", "--epochs", "6", "--name", "bt-falls") == 0
    first, last = first_last([row["loss"] for row in metrics(workspace, "bt-falls")])
    assert last < first - 0.1 * first, (first, last)


def test_barlowtwins_paper_profile_builds_the_papers_projector_and_lambda():
    cls = get_method("barlowtwins")
    cfg = resolve_config(cls, "paper", {"backbone": "resnet18"}, {})
    with torch.device("meta"):  # shapes only: the 8192-d projector is 0.5 GB of weights
        method = cls(*build_backbone("resnet18"), **method_kwargs(cls, cfg))
    linears = [m for m in method.projection_head.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [8192, 8192, 8192]
    assert method.criterion.lambda_param == 5e-3 and method.criterion.gather_distributed
    assert cfg["optimizer"] == "lars" and cfg["base_lr"] == 0.2 and cfg["batch_size"] == 2048


# ---- VICRegL ----------------------------------------------------------------------------------------

def test_vicregl_loss_falls_with_finite_positive_local_term(tiny_corpus):
    """64-px crops (2 x 2 feature maps), so the local term matches real locations."""
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "vicregl", "--epochs", "6", "--image-size", "64",
                    "--name", "vicregl-falls") == 0
    rows = metrics(workspace, "vicregl-falls")
    first, last = first_last([row["loss"] for row in rows])
    assert last < first - 0.05 * first, (first, last)
    assert all(math.isfinite(row["local_term"]) and row["local_term"] > 0 for row in rows)
    assert all(math.isfinite(row["global_term"]) and row["global_term"] > 0 for row in rows)


def test_vicregl_grids_match_the_feature_map_and_drive_the_local_term(tiny_corpus):
    """Each crop's grid has one point per feature-map cell; moving the grid points (here: mirroring view 2's
    grid) changes which cells the location matching pairs, so the local term changes and the global does not."""
    model, _, batch, _ = build("vicregl", tiny_corpus, 8, {"image_size": "64", "n_local_views": "2",
                                                           "local_crop_size": "32"})
    method = model.method.eval()
    views = model.data_preprocessor(batch, True)["inputs"]
    images, grids = views[:4], views[4:]
    for image, grid in zip(images, grids):
        assert feature_map(method.backbone, image).shape[2:] == grid.shape[1:3]  # 2 x 2 global, 1 x 1 local
    with torch.no_grad():
        plain = method.training_loss(views, StepInfo())
        mirrored = method.training_loss(views[:5] + [grids[1].flip(2)] + views[6:], StepInfo())
    assert torch.isfinite(plain["local_term"]) and plain["local_term"] > 0
    assert mirrored["global_term"] == plain["global_term"]
    assert not torch.isclose(mirrored["local_term"], plain["local_term"])


# ---- SwAV -------------------------------------------------------------------------------------------

def test_swav_loss_falls_below_the_uniform_prediction(tiny_corpus):
    """Below log(n_prototypes): better than the collapsed solution (uniform codes and predictions).
    32-px global crops with 16-px local crops, the quick profile's 64/32 ratio."""
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "swav", "--epochs", "10", "--set", "local_crop_size=16",
                    "--name", "swav-falls") == 0
    first, last = first_last([row["loss"] for row in metrics(workspace, "swav-falls")])
    uniform = math.log(get_method("swav").profiles["quick"]["n_prototypes"])
    assert last < first - 0.1 and last < uniform - 0.05, (first, last, uniform)


def test_swav_prototypes_stay_unit_norm_and_are_frozen_in_the_first_epoch(tiny_corpus):
    model, optim_wrapper, batch, _ = build("swav", tiny_corpus, 8, {"local_crop_size": "16"})
    method = model.method
    prototypes = lambda: method.prototypes.heads[0].weight.detach().clone()
    head = lambda: method.projection_head.layers[0].weight.detach().clone()
    assert method.prototypes.heads[0].bias is None  # scores are cosines
    start, start_head = prototypes(), head()
    torch.testing.assert_close(start.norm(dim=1), torch.ones(len(start)))
    for step in range(2):  # epoch 0: the head learns, the prototypes do not move (no decay, no momentum)
        train_step(model, optim_wrapper, batch, epoch=0, step=step)
    assert not torch.equal(head(), start_head)
    torch.testing.assert_close(prototypes(), start, rtol=0, atol=1e-6)  # renormalising only rounds (~1e-8)
    train_step(model, optim_wrapper, batch, epoch=1, step=2)  # epoch 1: they learn, back on the unit sphere
    assert (prototypes() - start).abs().max() > 1e-4
    torch.testing.assert_close(prototypes().norm(dim=1), torch.ones(len(start)))
