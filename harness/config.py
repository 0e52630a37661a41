"""Resolved pretraining configuration: section defaults <- method profile <- user overrides.

A method's settings come in three sections, each key in exactly one (harness.method_api):
`train` (TRAIN_DEFAULTS, the harness's), `model` (the method's constructor defaults) and `views`
(the method's `views` dict, what its `transform` reads). The resolved config is flat, so the engine
and `--set KEY=VALUE` address every key by name alone; its `sections` entry records which section
each key belongs to. That dict is what a run records (run.json, checkpoint sidecar) and what the
engine reads; nothing else decides a hyperparameter.
"""
from __future__ import annotations

import ast
import inspect
import json
from typing import Any, Callable

from medssl_bench.harness.errors import UserError

# Training keys the harness owns; every method profile may set them.
TRAIN_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet18",
    "epochs": 1,
    "batch_size": 32,  # global batch over all ranks (as papers report it)
    "image_size": 64,
    "optimizer": "sgd",  # sgd | lars | adam | adamw
    "base_lr": 0.05,  # with lr_scaling "linear": the lr at batch 256 (lr = base_lr * batch_size / 256)
    "lr_scaling": "linear",  # linear | none (base_lr is the lr itself)
    "lr_schedule": "cosine",  # cosine (after warm-up) | step (multiply by lr_gamma at lr_milestones)
    "lr_milestones": None,  # epochs; None with "step": four evenly spaced halvings
    "lr_gamma": 0.5,
    "weight_decay": 1e-6,
    "momentum": 0.9,  # SGD / LARS momentum
    "warmup_epochs": 0,
    "min_lr_ratio": 0.0,  # cosine decays to base lr * this
    "clip_grad": None,  # max gradient norm, or None
    "num_workers": -1,  # -1: choose from the CPU count
    "amp": False,  # mixed precision (GPU only)
    # where views are made: "cpu" (loader workers run the method's lightly transform) or "device" (workers decode and
    # draw the same parameters, the model's device makes the pixels: harness.device_views, for hosts whose CPUs
    # cannot feed the GPU)
    "augment": "cpu",
    # speed only (benchmarks/README.md measures both per device): the method's weights in NHWC memory order, which
    # convolutions on tensor-core GPUs prefer (the views follow from the first convolution); torch.compile of every
    # backbone copy (harness.backbones.compile_resnet)
    "channels_last": False,
    "compile": False,
    "sync_bn": False,  # DDP on GPUs: BatchNorm statistics over all processes (torch SyncBatchNorm), not per process
    "seed": 0,
    # a bench backbone checkpoint (.safetensors) to start from, e.g. imported ImageNet weights; INIT_NONE: random
    # weights by choice. A profile whose paper starts from pretrained weights sets INIT_REQUIRED: then the user
    # must name one or the other (harness.app.pretrain.require_init), so no run silently starts from random.
    "init": None,
    "labels_from": None,  # label-using methods (uses_labels): the labelled datasets, in order (--labels-from)
    # Each dataset's share of an epoch, w_d * n_d**dataset_balance (harness.data.BalancedSampler): 1 with no
    # weights = every image once per epoch; 0 = an equal share per dataset (minority datasets over-sampled, as
    # LVM-Med balances its 55 sources; the paper gives no rule for how much). dataset_weights: {name: w}.
    "dataset_balance": 1.0,
    "dataset_weights": None,
}
INIT_NONE, INIT_REQUIRED = "none", "required"  # the two `init` values that are not a path
OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
PROFILES = ("quick", "paper", "benchmark")
BENCHMARK = "benchmark"
# `--profile benchmark`: the one budget every method trains with, so a ranking compares methods, not recipes
# (docs/methods.md, "Profiles"). As LVM-Med's comparison (its Tables 1-4: every baseline retrained on one corpus,
# ResNet-50 from ImageNet-1K weights, 100 epochs): one backbone, one initialisation (the run names the weights;
# the sidecar records their sha256), one image size, and one epochs x global batch, so on one corpus every
# method sees the same images the same number of times in the same number of optimiser steps. Batch 256 is
# the base of the linear lr-scaling rule most papers state. A method's own `benchmark` entry holds only what
# the budget forces it to change (e.g. PEAC's cell offsets at 224 px); everything else is its `paper` recipe.
BENCHMARK_BUDGET: dict[str, Any] = {"backbone": "resnet50", "init": INIT_REQUIRED, "image_size": 224,
                                    "epochs": 100, "batch_size": 256}
# What a `paper` profile must set itself (tests/test_method_profiles.py): a harness default here would be a
# recipe nobody published. Conditional keys: momentum for SGD/LARS, min_lr_ratio for cosine, milestones for step.
PAPER_RECIPE_KEYS = ("backbone", "init", "image_size", "batch_size", "epochs", "optimizer", "base_lr", "lr_scaling",
                     "lr_schedule", "warmup_epochs", "weight_decay", "clip_grad")
# Keys that do not change what is learnt (workers, seed, precision, BN sync) or name the data (labels_from):
# overriding them keeps a run on its profile. `init` is judged apart (_profile_changes).
NOT_RECIPE = ("num_workers", "seed", "amp", "sync_bn", "labels_from", "init", "channels_last", "compile",
              "augment")  # the same views by the same parameters; only resampling arithmetic differs, as with amp
SECTIONS = ("train", "model", "views")
# constructor arguments the harness passes itself, not settings
_BUILT_BY_HARNESS = ("self", "backbone", "feat_dim", "labels")


def _constructor_params(method_cls) -> dict[str, inspect.Parameter]:
    params = inspect.signature(method_cls.__init__).parameters
    return {name: p for name, p in params.items() if name not in _BUILT_BY_HARNESS}


def section_defaults(method_cls) -> dict[str, dict[str, Any]]:
    """{"train": ..., "model": ..., "views": ...}: each section's keys with their defaults. A key in two
    sections, or a constructor argument that reads a train/views key but sets a default of its own (two
    defaults for one key), is a bug in the method: TypeError."""
    views = dict(method_cls.views)
    model = {}
    for name, p in _constructor_params(method_cls).items():
        elsewhere = name in TRAIN_DEFAULTS or name in views
        if elsewhere and p.default is not inspect.Parameter.empty:
            raise TypeError(f"{method_cls.__name__}.__init__({name}=...): '{name}' is a "
                            f"{'train' if name in TRAIN_DEFAULTS else 'views'} key, so it takes no default")
        if not elsewhere and p.default is not inspect.Parameter.empty:
            model[name] = p.default
    both = sorted(set(views) & set(TRAIN_DEFAULTS))
    if both:
        raise TypeError(f"{method_cls.__name__}.views repeats train keys: {', '.join(both)}")
    return {"train": dict(TRAIN_DEFAULTS), "model": model, "views": views}


def _coerce(key: str, text: str, like: Any) -> Any:
    """Parse a `--set key=value` string into the type of the known default `like`."""
    try:
        if isinstance(like, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, str):
            return text
        return ast.literal_eval(text)  # tuples, None, numbers for keys without a typed default
    except (ValueError, SyntaxError):
        raise UserError(f"--set {key}={text}: expected a value like {like!r}") from None


def parse_set_options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def resolve_config(method_cls, profile: str, overrides: dict[str, Any], sets: dict[str, str]) -> dict:
    """Merge the section defaults (train, model, views), the method's profile, typed overrides (CLI
    options, a sweep's sampled values) and `--set` strings into one flat dict, plus `method`, `profile`,
    `profile_changes` (the pinned keys the overrides changed: _profile_changes) and `sections` (section ->
    its sorted keys)."""
    sections = section_defaults(method_cls)
    cfg: dict[str, Any] = {key: value for keys in sections.values() for key, value in keys.items()}
    settings = sorted(cfg)  # every key of the three sections; nothing else may be set

    def known(key: str, how: str) -> str:
        if key not in cfg:
            raise UserError(f"{how} {key}: not a setting of method '{method_cls.name}'; known: {', '.join(settings)}")
        return key

    for key, value in profile_settings(method_cls, profile).items():
        cfg[known(key, f"profile '{profile}':")] = value
    pinned = json.loads(json.dumps(cfg))
    cfg.update({known(k, "option"): v for k, v in overrides.items() if v is not None})
    for key, text in sets.items():
        cfg[key] = _coerce(key, text, cfg[known(key, "--set")])
    cfg["method"] = method_cls.name
    cfg["profile"] = profile
    cfg["profile_changes"] = _profile_changes(profile, pinned, json.loads(json.dumps(cfg)))
    cfg["sections"] = {section: sorted(keys) for section, keys in sections.items()}
    _validate(cfg)
    if cfg["augment"] == "device":  # a method whose views have no device path: one line before a run folder exists
        from medssl_bench.harness.device_views import check_device_views

        check_device_views(method_cls, cfg)
    # as JSON records it (tuples become lists), so a resolved config equals the one its run recorded
    return json.loads(json.dumps(cfg))


def profile_settings(method_cls, profile: str) -> dict[str, Any]:
    """A profile's settings. `benchmark` = the method's `paper` recipe without its budget keys, then the
    method's own `benchmark` entry (what the budget forces it to change), then BENCHMARK_BUDGET."""
    if profile not in method_cls.profiles:
        raise UserError(f"unknown profile '{profile}'; choose one of: {', '.join(method_cls.profiles)}")
    own = dict(method_cls.profiles[profile])
    if profile != BENCHMARK:
        return own
    clash = sorted(set(own) & set(BENCHMARK_BUDGET))
    if clash:  # the budget is shared: one method setting it would leave the comparison
        raise TypeError(f"{method_cls.__name__}.profiles['benchmark'] sets budget keys {', '.join(clash)}; "
                        "those come from harness.config.BENCHMARK_BUDGET alone")
    paper = {k: v for k, v in method_cls.profiles["paper"].items() if k not in BENCHMARK_BUDGET}
    return {**paper, **own, **BENCHMARK_BUDGET}


def paper_recipe_gaps(profile: dict[str, Any]) -> list[str]:
    """The PAPER_RECIPE_KEYS (and the keys its optimiser and schedule read) that a `paper` profile leaves to the
    harness defaults: each would be a recipe nobody published."""
    need = list(PAPER_RECIPE_KEYS)
    need += ["momentum"] if profile.get("optimizer") in ("sgd", "lars") else []
    need += ["min_lr_ratio"] if profile.get("lr_schedule") == "cosine" else []
    need += ["lr_milestones", "lr_gamma"] if profile.get("lr_schedule") == "step" else []
    return [key for key in need if key not in profile]


def _profile_changes(profile: str, pinned: dict, cfg: dict) -> list[str]:
    """The keys a run changed that its profile pins, so a changed run is never ranked as its profile:
    `benchmark`: the budget keys (its per-method settings may be tuned); other profiles: every recipe key.
    `init`: naming weights where the profile requires them keeps the profile; --init none there, or
    weights where the profile starts from random, is a change."""
    changed = {k for k in pinned if pinned[k] != cfg[k]}
    init_changed = "init" in changed and not (pinned["init"] == INIT_REQUIRED and cfg["init"] != INIT_NONE)
    keep = set(BENCHMARK_BUDGET) if profile == BENCHMARK else set(pinned) - set(NOT_RECIPE)
    return sorted((changed & keep) - {"init"} | ({"init"} if init_changed else set()))


def profile_label(cfg: dict) -> str:
    """The profile a run's results are ranked under: its name, or "NAME (modified: KEYS)"."""
    changes = cfg.get("profile_changes")
    return f"{cfg['profile']} (modified: {', '.join(changes)})" if changes else cfg["profile"]


def config_sections(cfg: dict) -> dict[str, dict[str, Any]]:
    """A resolved (or recorded) config as {"train": {...}, "model": {...}, "views": {...}}."""
    return {section: {key: cfg[key] for key in keys} for section, keys in cfg["sections"].items()}


def method_kwargs(method_cls, cfg: dict) -> dict:
    """Constructor arguments from a resolved config: the model section, plus the train/views keys the
    constructor names (e.g. `seed`). Keys a recorded config lacks keep their constructor default."""
    return {name: cfg[name] for name in _constructor_params(method_cls) if name in cfg}


def view_settings(method_cls, cfg: dict) -> dict[str, Any]:
    """The views section of a resolved config: what `method_cls.transform` reads besides image_size."""
    return {key: cfg[key] for key in method_cls.views}


def build_transform(method_cls, cfg: dict) -> tuple[Callable, int | None]:
    """(the method's views transform, how many of its leading outputs are images) for a resolved config."""
    views = view_settings(method_cls, cfg)
    return method_cls.transform(cfg["image_size"], views), method_cls.image_view_count(views)


def scaled_lr(cfg: dict) -> float:
    return cfg["base_lr"] * cfg["batch_size"] / 256 if cfg["lr_scaling"] == "linear" else cfg["base_lr"]


def _validate(cfg: dict) -> None:
    for key in ("epochs", "batch_size", "image_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {cfg[key]!r}")
    if not (isinstance(cfg["dataset_balance"], (int, float)) and 0 <= cfg["dataset_balance"] <= 1):
        raise UserError(f"dataset_balance must lie in [0, 1] (1: every image once per epoch, 0: an equal share "
                        f"per dataset), got {cfg['dataset_balance']!r}")
    weights = cfg["dataset_weights"]
    if weights is not None and not (isinstance(weights, dict) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights.values())):
        raise UserError(f"dataset_weights must be a mapping of dataset name to a positive number, e.g. "
                        f"\"{{'busi': 2.0}}\", got {weights!r}")
    if cfg["augment"] not in ("cpu", "device"):
        raise UserError(f"augment must be 'cpu' (views made by loader workers) or 'device' (made on the model's "
                        f"device), got {cfg['augment']!r}")
    if cfg["optimizer"] not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{cfg['optimizer']}'; choose one of: {', '.join(OPTIMIZERS)}")
    if cfg["lr_scaling"] not in ("linear", "none"):
        raise UserError(f"lr_scaling must be 'linear' or 'none', got {cfg['lr_scaling']!r}")
    if cfg["lr_schedule"] not in ("cosine", "step"):
        raise UserError(f"lr_schedule must be 'cosine' or 'step', got {cfg['lr_schedule']!r}")
    if cfg["warmup_epochs"] >= cfg["epochs"] and cfg["warmup_epochs"] > 0:
        cfg["warmup_epochs"] = max(0, cfg["epochs"] - 1)  # short runs: keep at least one cosine epoch
