"""Importing external weights safely, and naming every checkpoint the evaluation can run."""
from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.checkpoint import save_backbone, sidecar_path
from medssl_bench.harness.checkpoint_index import (checkpoint_ref, import_checkpoint, list_checkpoints, load_checkpoint_into,
                                 random_checkpoint, resolve_checkpoints)
from medssl_bench.harness.app.cli.checkpoints import checkpoints_app
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import sha256_file, write_json_atomic


class CreatesMarker:
    """Unpickling this with a plain unpickler calls open(marker, "w"): a stand-in for any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torchvision_file(path: Path, arch: str = "resnet18", seed: int = 0) -> dict:
    """A state dict like torchvision's released weights files (classifier included)."""
    torch.manual_seed(seed)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    torch.save(state, path)
    return state


def make_run(workspace, name: str, corpus: dict, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    model, _ = build_backbone("resnet18")
    run_dir = workspace.runs / name
    save_backbone(model, run_dir / "backbone.safetensors",
                  {"method": "simclr", "backbone": "resnet18", "corpus": corpus, "run": name})
    write_json_atomic(run_dir / "run.json", {"name": name, "status": "done", "corpus": corpus})
    return run_dir / "backbone.safetensors"


def test_torchvision_weights_import_without_classifier(tmp_path, workspace):
    src = tmp_path / "resnet18-f37072fd.pth"
    original = torchvision_file(src)
    path = import_checkpoint(src, workspace)
    assert path == workspace.root / "checkpoints" / "resnet18-f37072fd" / "backbone.safetensors"
    saved = load_file(str(path))
    assert set(saved) == {k for k in original if not k.startswith("fc.")}
    assert all(torch.equal(saved[k], original[k]) for k in saved)
    side = json.loads(sidecar_path(path).read_text())
    assert side["method"] == "imported" and side["name"] == "resnet18-f37072fd" and side["backbone"] == "resnet18"
    assert side["source"]["sha256"] == sha256_file(src) and side["source"]["format"] == "torch-zip"
    assert side["source"]["path"] == str(src.resolve()) and "fc.weight" in side["source"]["dropped_keys"]
    assert side["imported"] and "git_sha" in side and side["sha256"] == sha256_file(path)
    ref = checkpoint_ref(path, workspace)
    assert (ref.method, ref.synthetic, ref.id) == ("imported", False, side["sha256"][:12])
    model, _ = build_backbone("resnet18")
    load_checkpoint_into(ref, model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_wrapped_resnet50_is_unwrapped_and_inferred(tmp_path, workspace):
    # without num_batches_tracked, like the weights files torchvision released before PyTorch 0.4.1
    state = {k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    src = tmp_path / "checkpoint_0099.pth.tar"
    # a training checkpoint: DDP prefixes, plus the argparse/numpy bits scripts save beside the weights
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 99,
                "args": argparse.Namespace(arch="resnet50")}, src)
    path = import_checkpoint(src, workspace)
    side = json.loads(sidecar_path(path).read_text())
    assert path.parent.name == "checkpoint_0099" and side["backbone"] == "resnet50"
    assert side["source"]["container"] == ["state_dict"] and side["source"]["stripped_prefix"] == "module."
    saved = load_file(str(path))
    assert torch.equal(saved["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])


def test_safetensors_source_is_read_without_pickle(tmp_path, workspace):
    src = tmp_path / "model.safetensors"
    state = torchvision.models.resnet18(weights=None).state_dict()
    save_file(state, str(src))  # e.g. a timm/Hugging Face ResNet: same keys, fc included
    side = json.loads(sidecar_path(import_checkpoint(src, workspace, name="hf-r18")).read_text())
    assert side["source"]["format"] == "safetensors" and side["name"] == "hf-r18"


def test_method_checkpoint_keeps_the_backbone_and_drops_heads(tmp_path, workspace):
    state = torchvision.models.resnet18(weights=None).state_dict()
    teacher = {**{"backbone." + k: v for k, v in state.items()}, "head.mlp.0.weight": torch.zeros(4, 512)}
    src = tmp_path / "dino.pth"
    torch.save({"student": teacher, "teacher": teacher}, src)
    side = json.loads(sidecar_path(import_checkpoint(src, workspace)).read_text())
    assert side["source"]["container"] == ["teacher"] and "head.mlp.0.weight" in side["source"]["dropped_keys"]


@pytest.mark.parametrize("raw_pickle", [False, True])
def test_pickled_code_is_refused_and_never_run(tmp_path, workspace, raw_pickle):
    marker = tmp_path / "marker"
    src = tmp_path / "evil.pth"
    payload = {"state_dict": torchvision.models.resnet18(weights=None).state_dict(), "x": CreatesMarker(marker)}
    if raw_pickle:
        src.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, src)
    with pytest.raises(UserError) as caught:
        import_checkpoint(src, workspace)
    message = str(caught.value)
    assert message.startswith(f"{src}: refusing to unpickle arbitrary objects") and "\n" not in message
    assert not marker.exists() and not (workspace.root / "checkpoints").exists()
    if raw_pickle:  # the file really does run code when unpickled the unsafe way
        pickle.loads(src.read_bytes())
        assert marker.exists()


def test_unusable_files_give_one_clear_line(tmp_path, workspace):
    def error(src, **kwargs) -> str:
        with pytest.raises(UserError) as caught:
            import_checkpoint(src, workspace, **kwargs)
        assert "\n" not in str(caught.value) and str(src) in str(caught.value)
        return str(caught.value)

    assert "checkpoint not found" in error(tmp_path / "missing.pth")
    torch.save({"encoder.weight": torch.zeros(3), "decoder.bias": torch.zeros(2)}, tmp_path / "unet.pt")
    assert "does not look like a torchvision ResNet" in error(tmp_path / "unet.pt")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    assert "[3, 4, 6, 3]" in error(tmp_path / "r34.pth") and "resnet18, resnet50" in error(tmp_path / "r34.pth")
    torchvision_file(tmp_path / "r18.pth")
    assert "do not fit a resnet50" in error(tmp_path / "r18.pth", backbone="resnet50")
    whole = (tmp_path / "r18.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    assert "not a readable PyTorch checkpoint" in error(tmp_path / "cut.pth")
    (tmp_path / "junk.torch").write_bytes(b"not a checkpoint at all")
    assert "corrupt" in error(tmp_path / "junk.torch")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    assert "not a readable safetensors file" in error(tmp_path / "junk.safetensors")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "no_weights.pth")
    assert "no state dict found" in error(tmp_path / "no_weights.pth")


def test_importing_twice_is_a_no_op_and_names_are_not_reused(tmp_path, workspace):
    src = tmp_path / "lvmmed_resnet.torch"
    torchvision_file(src, seed=0)
    first = import_checkpoint(src, workspace)
    stamp = first.stat().st_mtime_ns
    assert import_checkpoint(src, workspace) == first and first.stat().st_mtime_ns == stamp
    assert import_checkpoint(src, workspace, name="other-name") == first  # same file: same checkpoint
    torchvision_file(tmp_path / "retrained.pth", seed=1)
    with pytest.raises(UserError, match="'lvmmed_resnet' exists with other weights"):
        import_checkpoint(tmp_path / "retrained.pth", workspace, name="lvmmed_resnet")
    with pytest.raises(UserError, match="must be letters"):
        import_checkpoint(tmp_path / "retrained.pth", workspace, name="all")


def test_resolve_by_name_id_path_random_and_all(tmp_path, workspace):
    run_weights = make_run(workspace, "simclr-run", {"id": "c0ffee", "synthetic": True})
    src = tmp_path / "imagenet.pth"
    torchvision_file(src)
    imported = import_checkpoint(src, workspace)
    [run] = resolve_checkpoints("simclr-run", workspace)
    assert (run.path, run.method, run.backbone, run.corpus_id, run.synthetic) == (
        run_weights, "simclr", "resnet18", "c0ffee", True)
    assert resolve_checkpoints(run.id[:6], workspace) == [run]
    assert resolve_checkpoints(str(run_weights), workspace) == [run]
    assert resolve_checkpoints("imagenet", workspace)[0].path == imported
    [rand] = resolve_checkpoints("random", workspace, backbone="resnet50")
    assert rand == random_checkpoint("resnet50") and rand.path is None and rand.id == "random-resnet50"
    assert [r.name for r in resolve_checkpoints("all", workspace)] == ["imagenet", "simclr-run", "random"]
    assert [r.name for r in list_checkpoints(workspace)] == ["imagenet", "simclr-run"]
    record = run.as_record()
    assert record["path"] == str(run_weights) and record["sha256"] == sha256_file(run_weights)
    assert json.loads(json.dumps(record, default=str))["sidecar"]["method"] == "simclr"
    with pytest.raises(UserError) as caught:
        resolve_checkpoints("nonesuch", workspace)
    assert "no checkpoint 'nonesuch'" in str(caught.value) and "imagenet" in str(caught.value)
    assert "simclr-run" in str(caught.value) and "random, all" in str(caught.value)
    with pytest.raises(UserError, match="bench import-checkpoint"):
        resolve_checkpoints(str(src), workspace)


def test_synthetic_comes_from_the_corpus_record(workspace):
    make_run(workspace, "mixed-run", {"id": "abc123", "synthetic": False})
    write_json_atomic(workspace.corpora / "abc123" / "corpus.json", {"id": "abc123", "synthetic": "mixed"})
    make_run(workspace, "unknown-run", {"id": "gone"})
    refs = {r.name: r for r in list_checkpoints(workspace)}
    assert refs["mixed-run"].synthetic is True and refs["unknown-run"].synthetic is None
    assert random_checkpoint("resnet18").synthetic is None


def test_load_refuses_weights_changed_after_the_sidecar(workspace):
    weights = make_run(workspace, "run-a", {"id": "c0ffee"})
    [ref] = resolve_checkpoints("run-a", workspace)
    model, _ = build_backbone("resnet18")
    load_checkpoint_into(random_checkpoint("resnet18"), model)  # random init: nothing to load
    state = load_file(str(weights))
    state["conv1.weight"] = state["conv1.weight"] + 1
    save_file(state, str(weights))  # sidecar left as it was
    with pytest.raises(UserError) as caught:
        load_checkpoint_into(ref, model)
    assert str(caught.value).startswith(f"{weights}: weights changed since they were recorded")


def test_cli_imports_and_lists(tmp_path, workspace):
    app = checkpoints_app  # the sub-app on its own, as the CLI mounts it
    runner = CliRunner()
    src = tmp_path / "resnet18-imagenet.pth"
    torchvision_file(src)
    make_run(workspace, "byol-run", {"id": "feed01", "synthetic": True})
    result = runner.invoke(app, ["import-checkpoint", str(src), "--workspace", str(workspace.root)])
    assert result.exit_code == 0, result.output
    ref = resolve_checkpoints("resnet18-imagenet", workspace)[0]
    assert ref.id in result.output and "backbone.safetensors" in result.output
    listing = runner.invoke(app, ["checkpoints", "--workspace", str(workspace.root)], terminal_width=200)
    assert listing.exit_code == 0, listing.output
    assert ref.id in listing.output and "feed01 synthetic" in listing.output and "imported" in listing.output
    failed = runner.invoke(app, ["import-checkpoint", str(tmp_path / "nope.pth"), "--workspace", str(workspace.root)])
    assert isinstance(failed.exception, UserError)
