"""Helpers for the pretraining tests: the CLI at a tiny setting, its one-line errors, a run's metrics, and a method built the way
the harness builds it (resolved config, constructor arguments, views, optimiser) for single steps."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from medssl_bench.harness.app.cli import main

TINY = ["--image-size", "32", "--batch-size", "16", "--num-workers", "0"]


def one_line_error(capsys, code: int, *expected: str) -> str:
    """The CLI's promise for a problem the user can fix: exit 2 and one line naming it, no traceback."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    for text in expected:
        assert text in err, (text, err)
    return err


def fails_cleanly(capsys, args: list[str], *expected: str) -> str:
    """Run the CLI with `args` and check `one_line_error`."""
    capsys.readouterr()
    return one_line_error(capsys, main(args), *expected)


def pretrain(workspace, corpus_id, *args) -> int:
    """`bench pretrain` on a corpus at the TINY setting (later options override it)."""
    return main(["pretrain", "--workspace", str(workspace), "--corpus", corpus_id, *TINY, *args])


def metrics(workspace, name: str) -> list[dict]:
    return [json.loads(line) for line in (Path(workspace) / "runs" / name / "metrics.jsonl").open()]


def device_views_resume(workspace, data: list[str], method: str, image_size: int, *options: str) -> list[dict]:
    """`bench pretrain --augment device`, 2 epochs at batch 32, run whole and stopped after epoch 1 then resumed by a
    bare --resume: checks the resumed run kept `augment: device` and ends with the whole run's weights and losses;
    returns the whole run's metrics. `data`: --corpus ID or --labels-from SET."""
    from safetensors.torch import load_file

    from medssl_bench.harness.runs import read_run

    common = ["pretrain", "--workspace", str(workspace), *data, "--method", method, "--image-size", str(image_size),
              "--batch-size", "32", "--num-workers", "0", "--epochs", "2", "--seed", "3", "--augment", "device",
              *options]
    whole, split = f"{method}-dv-whole", f"{method}-dv-split"
    assert main([*common, "--name", whole]) == 0
    assert main([*common, "--name", split, "--stop-after-epoch", "1"]) == 0
    assert main(["pretrain", "--workspace", str(workspace), "--method", method, "--name", split, "--resume"]) == 0
    runs = Path(workspace) / "runs"
    assert read_run(runs / split)["config"]["augment"] == "device"
    weights = [load_file(str(runs / name / "backbone.safetensors")) for name in (whole, split)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    rows = metrics(workspace, whole)
    assert [r["loss"] for r in metrics(workspace, split)] == [r["loss"] for r in rows]
    return rows


def build(name: str, images: list[Image.Image], overrides: dict | None = None, sets: dict[str, str] | None = None):
    """(mmengine model around the method, its optimiser, one batch of the method's views of `images`, the
    resolved quick-profile config), as `bench pretrain` builds them. A label-using method (Ark) gets one
    3-class labelled dataset: its batch ends with the dataset index (0) and random multi-hot targets."""
    from medssl_bench.harness.backbones import build_backbone
    from medssl_bench.harness.config import build_transform, method_kwargs, resolve_config
    from medssl_bench.harness.data import ViewsDataset, collate_views
    from medssl_bench.harness.engine import PretrainModel, build_optim_wrapper
    from medssl_bench.harness.method_api import LabelLayout
    from medssl_bench.methods import get_method

    cls = get_method(name)
    cfg = resolve_config(cls, "quick", {"batch_size": len(images), **(overrides or {})}, sets or {})
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone(cfg["backbone"])
    labels = {"labels": LabelLayout(("toy",), (3,), (1,))} if cls.uses_labels else {}
    model = PretrainModel(cls(backbone, feat_dim, **method_kwargs(cls, cfg), **labels))
    transform, n_image_views = build_transform(cls, cfg)
    dataset = ViewsDataset(images, transform, seed=0, loader=lambda image: image, n_image_views=n_image_views)
    batch = collate_views([dataset[(0, index)] for index in range(len(images))])
    if cls.uses_labels:
        batch["inputs"] += [torch.zeros(len(images), dtype=torch.long), torch.randint(0, 2, (len(images), 3)).float()]
    return model, build_optim_wrapper(model, cfg), batch, cfg


def corpus_images(tiny_corpus, n: int) -> list[Image.Image]:
    """The first `n` images of the tiny corpus, decoded as the harness loads them."""
    from medssl_bench.harness.corpus import resolve_corpus
    from medssl_bench.harness.imageio import load_rgb
    from medssl_bench.harness.workspace import Workspace

    workspace, corpus_id = tiny_corpus
    entries = resolve_corpus(corpus_id, Workspace(workspace)).entries[:n]
    return [load_rgb(entry["path"], entry.get("slice")) for entry in entries]


def train_step(model, optim_wrapper, batch, epoch: int, step: int) -> dict:
    """One harness step (forward, backward, after_backward, optimiser) and the post-step hook; its log values."""
    from medssl_bench.harness.method_api import StepInfo

    model.step_info = StepInfo(epoch=epoch, step=step, max_steps=100, max_epochs=10)
    log_vars = model.train_step(batch, optim_wrapper)
    model.method.after_step(model.step_info)
    return log_vars
