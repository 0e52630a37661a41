"""`bench pretrain --method lvmmed --profile paper` is the published recipe: a ResNet-50 that starts from
ImageNet-1K weights the user names (or declines, on the record), and the paper's 16-GPU layout (3200 images,
200 per process: 12 groups of 16 plus a remainder of 8) is accepted and trains."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.config import method_kwargs, resolve_config
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.runs import read_run
from medssl_bench.methods.blocks.matching_groups import group_index, layout
from medssl_bench.methods.lvmmed import LVMMed
from tests.pretrain_helpers import pretrain


def test_the_paper_profile_is_a_resnet50_that_requires_its_initial_weights():
    cfg = resolve_config(LVMMed, "paper", {}, {})
    assert cfg["backbone"] == "resnet50" and cfg["init"] == "required"
    assert (cfg["batch_size"], cfg["image_size"], cfg["epochs"], cfg["base_lr"]) == (3200, 224, 100, 2e-3)
    assert resolve_config(LVMMed, "quick", {}, {})["init"] is None  # the smoke profile needs nothing


def files_in(root) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_a_paper_run_without_init_stops_with_the_import_command_and_writes_nothing(tiny_corpus, capsys, tmp_path):
    workspace, corpus_id = tiny_corpus
    before = files_in(workspace)
    code = main(["pretrain", "--workspace", str(workspace), "--corpus", corpus_id, "--method", "lvmmed",
                 "--profile", "paper", "--name", "paper-no-init"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    weights = workspace / "checkpoints" / "imagenet-resnet50" / "backbone.safetensors"
    command = f"bench import-checkpoint resnet50-0676ba61.pth --name imagenet-resnet50 --workspace {workspace}"
    flat = " ".join(err.split())  # rich may wrap nothing, but be safe about spaces
    assert command in flat and f"--init {weights}" in flat and "--init none" in flat, flat
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in flat
    assert files_in(workspace) == before

    # the printed command works: torchvision's file (here a resnet18 of the same layout) imports to that path
    backbone, _ = build_backbone("resnet18")
    source = tmp_path / "resnet18-f37072fd.pth"
    torch.save(backbone.state_dict(), source)
    assert main(["import-checkpoint", str(source), "--name", "imagenet-resnet18", "--workspace", str(workspace)]) == 0
    weights = workspace / "checkpoints" / "imagenet-resnet18" / "backbone.safetensors"
    # ... and a paper run given it (at a tiny size: resnet18, 32 px, 2 steps of 48) records which weights it used
    assert pretrain(workspace, corpus_id, "--method", "lvmmed", "--profile", "paper", "--init", str(weights),
                    "--backbone", "resnet18", "--batch-size", "48", "--epochs", "1", "--name", "paper-imagenet",
                    "--set", "solver_restarts=1", "--set", "solver_iters=5") == 0
    init = json.loads((workspace / "runs" / "paper-imagenet" / "backbone.json").read_text())["init"]
    assert init["path"] == str(weights) and init["name"] == "imagenet-resnet18"
    assert init["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_init_none_is_accepted_and_recorded_as_chosen(tiny_corpus):
    workspace, corpus_id = tiny_corpus
    # the paper profile at a tiny size: resnet18, 32 px, 48 images per step (2 steps), cheap solver
    assert pretrain(workspace, corpus_id, "--method", "lvmmed", "--profile", "paper", "--init", "none",
                    "--backbone", "resnet18", "--batch-size", "48", "--epochs", "1", "--name", "paper-none",
                    "--set", "solver_restarts=1", "--set", "solver_iters=5") == 0
    run_dir = workspace / "runs" / "paper-none"
    record = read_run(run_dir)
    assert record["status"] == "done" and record["profile"] == "paper" and record["config"]["init"] == "none"
    sidecar = json.loads((run_dir / "backbone.json").read_text())
    assert sidecar["init"] == "none (chosen)"


def test_the_16_gpu_layout_is_accepted_and_groups_need_one_full_group_per_process():
    cfg = resolve_config(LVMMed, "paper", {}, {})
    LVMMed.check_config(cfg, world_size=16)  # 200 per process
    LVMMed.check_config(cfg, world_size=8)  # 400 per process
    with pytest.raises(UserError, match="at least graph_size"):
        LVMMed.check_config({**cfg, "batch_size": 240}, world_size=16)  # 15 per process


def test_a_remainder_is_completed_by_the_tail_of_the_group_before_it():
    assert group_index(32, 16).tolist() == [list(range(16)), list(range(16, 32))]
    assert group_index(24, 16).tolist() == [list(range(16)), list(range(8, 24))]
    # the paper's 200 per process: 12 groups of 16, then images 184..199 (184..191 matched twice)
    index = group_index(200, 16)
    assert index.shape == (13, 16) and index[-1].tolist() == list(range(184, 200))
    assert sorted(set(index.flatten().tolist())) == list(range(200))
    assert layout(200, 16) == (13, 8) and layout(3200 // 8, 16) == (25, 0)
    with pytest.raises(ValueError):
        group_index(15, 16)


def test_embed_matches_the_overlapping_group_on_the_same_images():
    cfg = resolve_config(LVMMed, "quick", {"image_size": 64, "batch_size": 24}, {})
    torch.manual_seed(0)
    backbone, width = build_backbone("resnet18")
    model = LVMMed(backbone, width, **method_kwargs(LVMMed, cfg))
    x = torch.randn(2, 24, 3, 64, 64)
    grids = torch.rand(2, 24, 2, 2, 2)
    with torch.no_grad():
        cells, z, cell_grids = model.embed([x[0], x[1], grids[0], grids[1]])
    cells, cell_grids = torch.stack(cells), torch.stack(cell_grids)
    assert z.shape == (2, 2, 16, 128) and cells.shape == (2, 2, 16, 4, 512) and cell_grids.shape == (2, 2, 16, 4, 2)
    # group 1 = images 8..23: its first 8 nodes are images 8..15, the last 8 of group 0
    torch.testing.assert_close(z[:, 1, :8], z[:, 0, 8:])
    torch.testing.assert_close(cells[:, 1, :8], cells[:, 0, 8:])
    torch.testing.assert_close(cell_grids[:, 1], grids.reshape(2, 24, 4, 2)[:, 8:])


def test_a_sweep_refuses_a_profile_that_requires_init(tmp_path):
    from medssl_bench.harness.app.sweep import SweepRequest, prepare_study
    from medssl_bench.harness.workspace import Workspace

    request = SweepRequest(method="lvmmed", profile="paper", trials=1, corpus="none", workspace=Workspace(tmp_path))
    with pytest.raises(UserError, match="sweeps do not take"):
        prepare_study(request)
    assert not any(tmp_path.iterdir())
