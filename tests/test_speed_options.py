"""`--channels-last` and `--compile` (issue #21): recorded settings that change speed, never what is learnt. One
step in NHWC order equals the NCHW step; compiling reaches every ResNet copy of a method, by both ways methods
call one (`backbone(x)`, `feature_map`); a compiled, channels-last run resumes bit-identically."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

import medssl_bench.harness.backbones as backbones
from medssl_bench.harness.app.cli import main
from medssl_bench.harness.backbones import build_backbone, compile_resnet, feature_map
from medssl_bench.harness.config import profile_label, resolve_config
from medssl_bench.harness.engine import speed_options
from medssl_bench.harness.runs import read_run
from medssl_bench.methods import get_method
from tests.pretrain_helpers import build, corpus_images, metrics


def test_both_are_recorded_off_by_default_and_keep_the_profile():
    method = get_method("simclr")
    default = resolve_config(method, "paper", {}, {})
    assert default["channels_last"] is False and default["compile"] is False
    fast = resolve_config(method, "paper", {"channels_last": True}, {"compile": "true"})
    assert fast["channels_last"] is True and fast["compile"] is True
    assert profile_label(fast) == "paper"  # a speed setting does not make a run "paper (modified: ...)"
    assert profile_label(resolve_config(method, "paper", {"epochs": 3}, {})) == "paper (modified: epochs)"


@pytest.mark.parametrize("name", ["simclr", "byol", "vicregl"])  # + a momentum copy; + feature_map's local term
def test_a_channels_last_step_is_the_same_step(tiny_corpus, name):
    """In float64 the NHWC gradients equal the NCHW ones to rounding (float32 differs by up to 0.7% here: SimCLR's
    loss at batch 8 amplifies the convolutions' different summation orders; 1e-6 between thread counts)."""
    plain, _, batch, _ = build(name, corpus_images(tiny_corpus, 8))
    fast = copy.deepcopy(plain)
    speed_options(fast, {"channels_last": True})
    convs = [m.weight for m in fast.method.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # (a 1x1 kernel is both orders at once)
    views = plain.data_preprocessor(batch, True)["inputs"]
    # the views need no conversion: a channels_last first convolution hands NHWC maps on
    assert views[0].is_contiguous()
    assert feature_map(fast.method.backbone, views[0]).is_contiguous(memory_format=torch.channels_last)

    grads = []
    for model in (plain.double(), fast.double()):
        model.method.training_loss([v.double() for v in views], model.step_info)["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.method.backbone.parameters()]))
    assert grads[0].norm() > 0
    assert (grads[0] - grads[1]).norm() <= 1e-9 * grads[0].norm()


def test_compile_reaches_every_resnet_copy():
    from medssl_bench.harness.config import method_kwargs
    from medssl_bench.harness.engine import PretrainModel

    cls = get_method("byol")
    cfg = resolve_config(cls, "quick", {}, {"compile": "true"})
    model = PretrainModel(cls(*build_backbone("resnet18"), **method_kwargs(cls, cfg)))
    keys = list(model.state_dict())
    speed_options(model, cfg)
    copies = [model.method.backbone, model.method.target_backbone]
    assert all(m._compiled_call_impl is not None and m in backbones._COMPILED for m in copies)
    assert list(model.state_dict()) == keys  # checkpoints and exports keep their names
    twin = copy.deepcopy(model.method.backbone)  # a copy made later (an export) is not compiled: it runs eager
    assert twin._compiled_call_impl is None and twin not in backbones._COMPILED


def test_compiled_feature_map_is_the_eager_one():
    torch.manual_seed(0)
    resnet = build_backbone("resnet18")[0].eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = feature_map(resnet, images)
        compile_resnet(resnet)
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compiled = feature_map(resnet, images)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before  # it went through torch.compile
    assert torch.allclose(eager, compiled, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_compiled_channels_last_run_resumes_bit_identically(tiny_corpus):
    workspace, corpus_id = tiny_corpus
    common = ["pretrain", "--workspace", str(workspace), "--corpus", corpus_id, "--method", "simclr",
              "--image-size", "32", "--batch-size", "16", "--num-workers", "0", "--epochs", "2", "--seed", "5",
              "--compile", "--channels-last"]
    assert main([*common, "--name", "fast-whole"]) == 0
    assert main([*common, "--name", "fast-split", "--stop-after-epoch", "1"]) == 0
    assert main(["pretrain", "--workspace", str(workspace), "--method", "simclr", "--name", "fast-split",
                 "--resume"]) == 0
    runs = workspace / "runs"
    config = read_run(runs / "fast-split")["config"]
    assert config["compile"] is True and config["channels_last"] is True
    weights = [load_file(str(runs / name / "backbone.safetensors")) for name in ("fast-whole", "fast-split")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert [r["loss"] for r in metrics(workspace, "fast-split")] == [r["loss"] for r in metrics(workspace, "fast-whole")]


def test_compile_without_a_cpu_compiler_is_one_line_before_a_run_folder(tiny_corpus, capsys, monkeypatch):
    from torch._inductor import config as inductor_config

    workspace, corpus_id = tiny_corpus
    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "no-such-c++"))
    code = main(["pretrain", "--workspace", str(workspace), "--corpus", corpus_id, "--method", "simclr",
                 "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--compile", "--name", "no-cxx"])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-c++ not found" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (workspace / "runs" / "no-cxx").exists()
