"""Models Genesis' exports (docs/methods.md, "Models Genesis"): the decoder beside the encoder, BatchNorm statistics
re-estimated on clean crops, and the checkpoint evaluated with both segmentation protocols (finetune and
genesis_unet) through the real CLI."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.data import ViewsPreprocessor
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import sha256_file
from medssl_bench.harness.method_api import StepInfo
from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace
from medssl_bench.methods import get_method
from tests.pretrain_helpers import pretrain

WIDTHS = (32, 16, 16, 8, 8)


def genesis(**kwargs):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("resnet18")
    return get_method("models_genesis")(backbone, feat_dim, decoder_widths=WIDTHS, seed=0, **kwargs)


def bn_inputs(method, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What every BatchNorm of the encoder-decoder receives when `images` (normalised) go through it."""
    seen, hooks = {}, []
    for name, module in method.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0])))
    with torch.no_grad():
        method.restore(images)
    for hook in hooks:
        hook.remove()
    return seen


def test_exported_bn_statistics_are_those_of_clean_crops_not_distorted_ones():
    method = genesis().train()
    pixels = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    views = [ViewsPreprocessor().normalise(pixels)]  # a training batch as training_loss gets it
    before = {k: v.clone() for k, v in method.state_dict().items()}
    exported = method.export(lambda: iter([views]))
    assert set(exported) == {"backbone", "decoder"}
    assert all(torch.equal(v, before[k]) for k, v in method.state_dict().items())  # training state untouched

    clean = (method.clean_images(views[0]) - method.mean) / method.std
    distorted, _ = method.distort(method.clean_images(views[0]), StepInfo())
    stats = {"backbone": exported["backbone"], "decoder": exported["decoder"].blocks}
    for kind, images in (("clean", clean), ("distorted", (distorted - method.mean) / method.std)):
        for name, x in bn_inputs(method, images).items():  # e.g. backbone.bn1, decoder.0.conv.1
            part, rest = name.split(".", 1)
            bn = stats[part].get_submodule(rest)
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
            same = torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, rtol=1e-4)
            assert same == (kind == "clean"), (kind, name)  # clean: every BN; distorted: none
    # the 3-channel reconstruction head travels with the decoder
    assert exported["decoder"].head.weight.shape == (3, WIDTHS[-1], 1, 1)


def test_no_recalibration_exports_the_training_statistics_and_a_negative_count_is_refused():
    method = genesis(bn_recalibrate_batches=0)
    exported = method.export(lambda: iter([]))
    assert torch.equal(exported["backbone"].bn1.running_var, method.backbone.bn1.running_var)
    assert exported["backbone"] is not method.backbone  # a copy either way
    from medssl_bench.harness.config import resolve_config

    cfg = resolve_config(type(method), "quick", {}, {"bn_recalibrate_batches": "-1"})
    with pytest.raises(UserError, match="bn_recalibrate_batches=-1"):
        type(method).check_config(cfg, 1)


@pytest.mark.slow
def test_a_genesis_checkpoint_is_evaluated_with_both_segmentation_protocols(tiny_corpus, tmp_path, capsys):
    workspace, corpus_id = tiny_corpus
    assert pretrain(workspace, corpus_id, "--method", "models_genesis", "--epochs", "1", "--image-size", "64",
                    "--name", "genesis-both", "--set", "bn_recalibrate_batches=2") == 0
    run = workspace / "runs" / "genesis-both"
    sidecar = json.loads((run / "backbone.json").read_text())
    entry = sidecar["exports"]["decoder"]
    assert entry["file"] == "decoder.safetensors" and entry["sha256"] == sha256_file(run / "decoder.safetensors")
    assert sidecar["config"]["bn_recalibrate_batches"] == 2
    assert f"also exported: {run / 'decoder.safetensors'}" in " ".join(capsys.readouterr().out.split())

    data, raw = tmp_path / "data", tmp_path / "raw"
    assert main(["data", "synth", "busi", "--out", str(raw), "--n", "24", "--size", "64"]) == 0
    assert main(["data", "prepare", "busi", "--src", str(raw), "--out", str(data), "--workspace", str(workspace)]) == 0
    common = ["eval", "--workspace", str(workspace), "--data-root", str(data), "--task", "busi", "--seeds", "1",
              "--jobs", "1", "--image-size", "32"]
    capsys.readouterr()
    assert main([*common, "--checkpoint", "genesis-both", "--protocol", "finetune,genesis_unet"]) == 0
    assert "2 done, 0 failed" in " ".join(capsys.readouterr().out.split())
    store = ResultsStore.open(None, Workspace(workspace))
    rows = [r for r in store.results(task="busi", split="test") if r["protocol_config"].get("name") in
            ("finetune", "genesis_unet")]
    assert sorted(r["protocol"] for r in rows) == ["finetune", "genesis_unet"]
    assert all(0 <= r["value"] <= 1 for r in rows)

    main([*common, "--checkpoint", "random", "--protocol", "genesis_unet"])  # no decoder: that job fails, said once
    out = " ".join(capsys.readouterr().out.split())
    assert "0 done, 1 failed" in out and "no exported decoder" in out


def test_the_genesis_unet_head_holds_the_exported_decoder_and_refuses_a_checkpoint_without_one(tmp_path):
    from medssl_bench.downstream.segmentation.model import build_segmentor
    from medssl_bench.harness.checkpoint import save_backbone, save_export
    from medssl_bench.harness.checkpoint_index import checkpoint_ref, random_checkpoint

    method = genesis(bn_recalibrate_batches=0)
    exported = method.export(lambda: iter([]))
    entry = save_export(exported["decoder"], tmp_path / "decoder.safetensors")
    weights = save_backbone(exported["backbone"], tmp_path / "backbone.safetensors",
                            {"method": "models_genesis", "backbone": "resnet18", "exports": {"decoder": entry}})
    ref = checkpoint_ref(weights, Workspace(tmp_path / "ws"))
    model = build_segmentor("resnet18", 2, ref=ref, decoder="genesis_unet")
    model.init_weights()  # what the training runner calls: the pretrained levels must survive it
    for key, value in exported["decoder"].blocks.state_dict().items():
        assert torch.equal(model.decode_head.blocks.state_dict()[key], value), key
    assert model.decode_head.conv_seg.out_channels == 2  # the classifier is new: Genesis' head restores RGB
    with pytest.raises(UserError, match="no exported decoder"):
        build_segmentor("resnet18", 2, ref=random_checkpoint("resnet18"), decoder="genesis_unet")


def test_recalibration_averages_the_batches_statistics_and_no_batch_changes_nothing():
    from medssl_bench.methods.blocks.precise_bn import recalibrate_batchnorm

    bn = nn.BatchNorm1d(1, momentum=0.1)
    before = (bn.running_mean.clone(), bn.running_var.clone())
    assert recalibrate_batchnorm(bn, bn, iter([])) == 0
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    # batches [1, 3] (mean 2, unbiased var 2) and [2, 6, 10] (mean 6, var 16): the plain averages 4 and 9
    batches = [torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [6.0], [10.0]])]
    bn.eval()
    assert recalibrate_batchnorm(bn, bn, iter(batches)) == 2
    torch.testing.assert_close(bn.running_mean, torch.tensor([4.0]))
    torch.testing.assert_close(bn.running_var, torch.tensor([9.0]))
    assert bn.momentum == 0.1 and not bn.training  # put back as it was


def test_a_decoder_file_changed_after_export_is_refused(tmp_path):
    from medssl_bench.harness.checkpoint import save_backbone, save_export
    from medssl_bench.harness.checkpoint_index import checkpoint_ref, load_export

    exported = genesis(bn_recalibrate_batches=0).export(lambda: iter([]))
    entry = save_export(exported["decoder"], tmp_path / "decoder.safetensors")
    weights = save_backbone(exported["backbone"], tmp_path / "backbone.safetensors",
                            {"method": "models_genesis", "backbone": "resnet18", "exports": {"decoder": entry}})
    ref = checkpoint_ref(weights, Workspace(tmp_path / "ws"))
    assert set(load_export(ref, "decoder")) == set(exported["decoder"].state_dict())
    save_export(genesis(bn_recalibrate_batches=0).head, tmp_path / "decoder.safetensors")  # overwritten
    with pytest.raises(UserError, match="changed since it was recorded"):
        load_export(ref, "decoder")
