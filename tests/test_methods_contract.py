"""The contract every registered method keeps (methods.METHOD_NAMES; harness/method_api.py): its registry key
is its name and each setting lives in one section (train, model, views); one step on tiny views gives a finite
loss and trains the backbone; `bench pretrain` exports a torchvision state dict that a fresh backbone loads and
records the config with its sections; a run stopped after epoch 1 and resumed ends bit-identical to an
uninterrupted 2-epoch run. Each method's own file tests only its quirks."""
from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from medssl_bench.harness.app.cli import main
from medssl_bench.harness.config import (SECTIONS, TRAIN_DEFAULTS, config_sections, method_kwargs, resolve_config,
                                         section_defaults)
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.method_api import SSLMethod
from medssl_bench.harness.runs import read_run
from medssl_bench.methods import METHOD_NAMES, get_method
from tests.pretrain_helpers import build, metrics, train_step

# What a method needs beyond the common tiny setting (32 px, batch 8), and why.
QUIRKS = {
    "peac": ["--image-size", "64"],  # 32-px grid cells: 64 px is the smallest 2x2-cell view
    # one matching group per batch of 8 (k-NN k 5 < 8); the issue-19 settings switched away from their defaults or
    # named, so the resume test covers them (solver restarts are always seeded per step)
    "lvmmed": ["--set", "graph_size=8", "--set", "lambda_convention=batch_mean", "--set", "gcn_last_activation=true",
               "--set", "local_fp32=true", "--set", "vertex_noise_scale=0.5", "--set", "edge_noise_scale=0.25",
               "--set", "n_local_views=1", "--set", "local_crop_size=16"],
    "ark": ["--labels-from", "phantom_ct"],  # supervised: a labelled phantom set instead of a corpus
}


def quirk_config(name: str) -> tuple[dict, dict]:
    """QUIRKS as resolve_config's typed overrides and --set strings."""
    args = QUIRKS.get(name, [])
    overrides = {"image_size": int(args[1])} if args[:1] == ["--image-size"] else {}
    sets = dict(value.split("=") for flag, value in zip(args[::2], args[1::2]) if flag == "--set")
    return overrides, sets


# ---- the registry and the sections ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHOD_NAMES)
def test_registry_key_is_the_name_and_each_key_lives_in_one_section(name):
    cls = get_method(name)
    assert cls.name == name and cls.__module__.endswith(f".methods.{name}")
    sections = section_defaults(cls)
    assert list(sections) == list(SECTIONS) and sections["train"] == TRAIN_DEFAULTS
    keys = [key for section in sections.values() for key in section]
    assert len(keys) == len(set(keys)), f"{name}: a key in two sections"
    for profile, values in cls.profiles.items():  # profiles and search spaces name keys of any section
        assert set(values) <= set(keys), (profile, set(values) - set(keys))
    assert set(cls.search_space) <= set(keys), set(cls.search_space) - set(keys)
    # the constructor gets no view setting: it builds the network, `transform` draws the views
    params = inspect.signature(cls.__init__).parameters
    assert not set(cls.views) & set(sections["model"])
    assert all(params[key].default is inspect.Parameter.empty for key in params if key in cls.views)
    for profile in cls.profiles:
        cfg = resolve_config(cls, profile, {}, {})
        assert cfg["method"] == name and cfg["profile"] == profile and set(cfg["sections"]) == set(SECTIONS)
        assert cfg == json.loads(json.dumps(cfg))  # what the run records, so a bare --resume finds the run
        assert config_sections(cfg) == {s: {k: cfg[k] for k in sections[s]} for s in SECTIONS}


def test_get_method_refuses_a_class_whose_name_is_not_its_key(monkeypatch):
    cls = get_method("simclr")
    monkeypatch.setattr(cls, "name", "simclr2")
    with pytest.raises(TypeError, match="registry key is 'simclr'"):
        get_method("simclr")


def test_a_settings_section_is_chosen_by_the_key_and_set_reaches_every_section():
    simclr = get_method("simclr")
    cfg = resolve_config(simclr, "quick", {"epochs": 3}, {"min_scale": "0.4", "temperature": "0.3", "seed": "5"})
    assert config_sections(cfg)["views"] == {"min_scale": 0.4}
    assert config_sections(cfg)["model"]["temperature"] == 0.3 and cfg["epochs"] == 3 and cfg["seed"] == 5
    assert "min_scale" not in method_kwargs(simclr, cfg)  # views settings never reach the constructor
    with pytest.raises(UserError, match="--set nonsense: not a setting of method 'simclr'; known: .*amp.*min_scale.*"
                                        "temperature"):
        resolve_config(simclr, "quick", {}, {"nonsense": "1"})
    with pytest.raises(UserError, match="nonsense"):  # typed options (a sweep's samples) are checked too
        resolve_config(simclr, "quick", {"nonsense": 1}, {})


def test_a_key_in_two_sections_is_a_bug_in_the_method():
    class Doubled(SSLMethod):
        profiles = {"quick": {}}
        views = {"seed": 1}  # a train key

    class DefaultsASetting(SSLMethod):
        profiles = {"quick": {}}
        views = {"crop": 0.5}

        def __init__(self, backbone, feat_dim, crop: float = 0.5):  # a second default for a views key
            super().__init__(backbone, feat_dim)

    for cls, match in ((Doubled, "repeats train keys: seed"), (DefaultsASetting, "'crop' is a views key")):
        with pytest.raises(TypeError, match=match):
            resolve_config(cls, "quick", {}, {})


# ---- one step --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHOD_NAMES)
def test_one_step_gives_a_finite_loss_and_trains_the_backbone(name):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(8)]
    overrides, sets = quirk_config(name)
    model, optim_wrapper, batch, _ = build(name, images, {"image_size": 32, **overrides}, sets)
    # the backbone the method was built around (for Ark the student's; the exported EMA teacher follows it)
    trained = {key: p for key, p in model.method.named_parameters() if p.requires_grad and key.endswith("conv1.weight")
               and "backbone" in key and "layer" not in key}
    assert len(trained) == 1, list(trained)
    before = {key: p.detach().clone() for key, p in trained.items()}
    log_vars = train_step(model, optim_wrapper, batch, epoch=0, step=0)
    values = {key: float(torch.as_tensor(value).detach()) for key, value in log_vars.items()}
    assert "loss" in values and all(math.isfinite(value) for value in values.values()), values
    for key, p in trained.items():
        assert not torch.equal(p.detach(), before[key]), key


# ---- export, recorded config, exact resume ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def micro_corpus(tmp_path_factory) -> tuple:
    """16 phantom images (2 steps per epoch at batch 8) in their own workspace: (workspace folder, corpus id)."""
    from medssl_bench.downstream.phantoms import synthesize_corpus
    from medssl_bench.harness.corpus import build_corpus
    from medssl_bench.harness.workspace import Workspace

    root = tmp_path_factory.mktemp("micro")
    synthesize_corpus(root / "corpus", n=16, seed=0, size=40)
    workspace = Workspace(root / "workspace")
    return workspace.root, build_corpus([root / "corpus"], workspace).id


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_export_loads_into_a_fresh_backbone_and_a_resumed_run_is_bit_identical(name, micro_corpus, capsys):
    workspace, corpus_id = micro_corpus
    data = [] if get_method(name).uses_labels else ["--corpus", corpus_id]
    common = ["pretrain", "--workspace", str(workspace), "--method", name, *data, "--image-size", "32",
              "--batch-size", "8", "--num-workers", "0", "--epochs", "2", "--seed", "7", *QUIRKS.get(name, [])]
    whole, split = workspace / "runs" / f"whole-{name}", workspace / "runs" / f"split-{name}"
    assert main([*common, "--name", whole.name]) == 0
    assert str(whole / "backbone.safetensors") in capsys.readouterr().out  # says where the checkpoint went
    assert main([*common, "--name", split.name, "--stop-after-epoch", "1"]) == 0
    assert read_run(split)["status"] == "stopped"
    assert main(["pretrain", "--workspace", str(workspace), "--method", name, "--name", split.name, "--resume"]) == 0
    assert read_run(split)["status"] == "done" and read_run(split)["epochs_done"] == 2

    state, resumed = load_file(str(whole / "backbone.safetensors")), load_file(str(split / "backbone.safetensors"))
    resnet = torchvision.models.resnet18(weights=None)
    resnet.fc = torch.nn.Identity()
    assert set(state) == set(resnet.state_dict())  # the checkpoint contract: no prefix, no heads, no classifier
    resnet.load_state_dict(state, strict=True)
    assert state.keys() == resumed.keys()
    for key in state:
        assert torch.equal(resumed[key], state[key]), key
    losses = [[row["loss"] for row in metrics(workspace, run.name)] for run in (whole, split)]
    assert losses[1] == losses[0]

    record, sidecar = read_run(whole), json.loads((whole / "backbone.json").read_text())
    for key in ("method", "backbone", "config", "seed", "epoch", "corpus", "versions", "git_sha", "sha256"):
        assert key in sidecar, key
    assert record["status"] == "done" and record["epochs_done"] == 2 and sidecar["epoch"] == 2
    assert sidecar["method"] == name and sidecar["versions"]["lightly"] and sidecar["corpus"] == record["corpus"]
    assert record["corpus"]["synthetic"] is True and (data == [] or record["corpus"]["id"] == corpus_id)
    # the resolved config, recorded with its sections: flat keys for the engine, `sections` for the reader
    cfg = sidecar["config"]
    assert cfg == record["config"] and cfg["image_size"] == (64 if name == "peac" else 32) and cfg["seed"] == 7
    sections = config_sections(cfg)
    assert set(sections["views"]) == set(get_method(name).views)
    assert set(sections["model"]) == set(section_defaults(get_method(name))["model"])
    assert sections["train"]["epochs"] == 2 and sections["train"]["batch_size"] == 8
