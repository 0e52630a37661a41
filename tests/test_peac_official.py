"""PEAC as the official code builds it (docs/methods.md, "PEAC"): the expander MLPs' layer types and shapes,
the teacher's BatchNorm mode, the CXR normalisation and the warning below the BN-safe batch."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.config import resolve_config
from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.method_api import StepInfo
from medssl_bench.methods.blocks.peac_views import Normalisation
from medssl_bench.methods.peac import PEAC
from tests.test_peac import batch, small_peac


def layers(head: nn.Module) -> list[tuple]:
    return [(type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None),
             getattr(m, "bias", None) is not None) for m in head.modules() if not list(m.children())]


def test_expanders_are_the_official_mlp_linear_layernorm_relu_twice_then_a_bias_free_linear():
    torch.manual_seed(0)
    backbone, width = build_backbone("resnet18")  # 512 channels; the official local width is 512-512-512
    method = PEAC(backbone, width, image_size=64, seed=0, global_dim=64)
    want = [("Linear", 512, 512, True), ("LayerNorm", None, None, True), ("ReLU", None, None, False),
            ("Linear", 512, 512, True), ("LayerNorm", None, None, True), ("ReLU", None, None, False),
            ("Linear", 512, 512, False)]
    assert layers(method.local_expander) == want
    assert [m.normalized_shape for m in method.local_expander.modules() if isinstance(m, nn.LayerNorm)] == [(512,)] * 2
    assert layers(method.global_expander)[-1] == ("Linear", 64, 64, False)  # global_dim 64 in small_peac
    # applied to every token: (B, h*w, C) -> (B, h*w, 512), each token on its own
    tokens = torch.randn(3, 4, 512)
    out = method.local_expander(tokens)
    assert out.shape == (3, 4, 512)
    torch.testing.assert_close(method.local_expander(tokens[1:2, 2:3]), out[1:2, 2:3])


def test_eval_teacher_normalises_with_the_students_running_statistics_whatever_the_batch():
    method = small_peac().train()
    assert method.backbone.training and not method.teacher.training  # the harness's train() leaves it in eval
    method.training_loss(batch(), StepInfo())  # the student's BN updates its running statistics
    student_bn, teacher_bn = method.backbone.bn1, method.teacher["backbone"].bn1
    assert not torch.equal(student_bn.running_mean, teacher_bn.running_mean)
    method.after_step(StepInfo(step=0, max_steps=10))
    torch.testing.assert_close(teacher_bn.running_mean, student_bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(teacher_bn.running_var, student_bn.running_var, rtol=0, atol=0)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():  # a teacher target depends on its own image only, not on the batch beside it
        torch.testing.assert_close(method.teacher["backbone"](x)[:1], method.teacher["backbone"](x[:1]))

    batch_mode = small_peac(teacher_bn="train").train()
    assert batch_mode.teacher.training  # the former behaviour, as an option


def test_cxr_normalisation_re_normalises_the_shipped_views_with_the_official_mean_and_std():
    pixels = torch.rand(2, 3, 8, 8)
    shipped = (pixels - torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalisation("cxr")(shipped), (pixels - 0.5056) / 0.252)
    torch.testing.assert_close(Normalisation("imagenet")(shipped), shipped)
    cxr = small_peac(normalisation="cxr")
    torch.testing.assert_close(cxr.norm.to_unit(cxr.norm(shipped)), pixels)
    assert torch.isfinite(cxr.training_loss(batch(), StepInfo())["loss_restore"])


def test_below_16_images_per_process_warns_unless_sync_bn_spreads_the_statistics():
    def check(batch_size, world=1, **sets):
        cfg = resolve_config(PEAC, "quick", {"batch_size": batch_size}, {k: str(v) for k, v in sets.items()})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            PEAC.check_config(cfg, world)
        return [str(w.message) for w in caught]

    assert "below 16" in check(8)[0] and "sync_bn" in check(8)[0]
    assert check(16) == [] and check(32, world=2) == []
    assert "below 16" in check(32, world=4)[0]
    assert check(32, world=4, sync_bn="true") == []
    with pytest.raises(UserError, match="teacher_bn='batch'"):
        check(32, teacher_bn="batch")
    with pytest.raises(UserError, match="normalisation='xray'"):
        check(32, normalisation="xray")
