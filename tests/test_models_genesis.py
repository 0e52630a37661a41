"""Models Genesis (methods/models_genesis.py): restoration learning through the real CLI and the [0,1] target /
normalised input split (the 2D port, docs/methods.md). Its exports (decoder, BatchNorm statistics) are
tests/test_models_genesis_export.py's check."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.data import ViewsPreprocessor
from medssl_bench.harness.method_api import StepInfo
from medssl_bench.methods import get_method
from tests.pretrain_helpers import pretrain


@pytest.fixture(scope="module")
def genesis_run(tiny_corpus):
    """10 epochs of the 96-image corpus at batch 16 = 60 steps (quick profile: Adam 1e-3)."""
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "models_genesis", "--epochs", "10", "--name", "genesis") == 0
    return workspace / "runs" / "genesis"


def test_loss_falls(genesis_run):
    rows = [json.loads(line) for line in (genesis_run / "metrics.jsonl").open()]
    losses = [row["loss"] for row in rows]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.05 * abs(first), (first, last)
    # and it restores better than handing back the distorted input
    assert last < sum(row["copy_mse"] for row in rows[-10:]) / 10


def test_target_is_the_clean_image_and_only_the_network_input_is_normalised():
    method_cls = get_method("models_genesis")
    backbone, feat_dim = build_backbone("resnet18")
    off = dict(flip_p=0.0, local_p=0.0, nonlinear_p=0.0, paint_p=0.0)
    method = method_cls(backbone, feat_dim, decoder_widths=(32, 16, 16, 8, 8), seed=0, **off)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    view = ViewsPreprocessor().normalise(pixels)  # what training_loss receives from the harness
    clean = pixels.float() / 255
    torch.testing.assert_close(method.clean_images(view), clean, atol=1e-6, rtol=0)
    out = method.training_loss([view], StepInfo())
    restored = method.restore(view)
    assert restored.shape == clean.shape and 0 <= restored.min() and restored.max() <= 1
    torch.testing.assert_close(out["loss"], F.mse_loss(restored, clean))
    assert out["copy_mse"] < 1e-10  # nothing distorted: the input is the target

    method_on = method_cls(backbone, feat_dim, decoder_widths=(32, 16, 16, 8, 8), seed=0)
    first, again = (method_on.distort(clean, StepInfo(step=3))[0] for _ in range(2))
    assert torch.equal(first, again)  # seeded by (seed, rank, step): a resumed run redraws the same
    assert not torch.equal(first, method_on.distort(clean, StepInfo(step=4))[0])


def test_bad_settings_are_one_line_user_errors(tiny_corpus, capsys):
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "models_genesis", "--name", "bad-p", "--set", "paint_p=1.5") == 2
    assert "paint_p=1.5" in capsys.readouterr().err
