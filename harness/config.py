"""Resolved pretraining configuration: harness defaults <- method profile <- user overrides.

The resolved dict is what a run records (config.json, checkpoint sidecar) and what the engine
reads; nothing else decides a hyperparameter.
"""
from __future__ import annotations

import ast
from typing import Any

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
    "seed": 0,
    "init": None,  # a bench backbone checkpoint (.safetensors) to start from, e.g. imported ImageNet weights
}
OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
PROFILES = ("quick", "paper")


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
    """Merge defaults, the method's profile, typed CLI overrides and `--set` strings."""
    if profile not in method_cls.profiles:
        raise UserError(f"unknown profile '{profile}'; choose one of: {', '.join(method_cls.profiles)}")
    method_defaults = _constructor_defaults(method_cls)
    cfg: dict[str, Any] = {**TRAIN_DEFAULTS, **method_defaults, **method_cls.profiles[profile]}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    for key, text in sets.items():
        if key not in cfg:
            known = ", ".join(sorted(cfg))
            raise UserError(f"--set {key}: not a setting of method '{method_cls.name}'; known: {known}")
        cfg[key] = _coerce(key, text, cfg[key])
    cfg["method"] = method_cls.name
    cfg["profile"] = profile
    _validate(cfg)
    return cfg


def method_kwargs(method_cls, cfg: dict) -> dict:
    return {name: cfg[name] for name in method_cls.hparam_names() if name in cfg}


def scaled_lr(cfg: dict) -> float:
    return cfg["base_lr"] * cfg["batch_size"] / 256 if cfg["lr_scaling"] == "linear" else cfg["base_lr"]


def _constructor_defaults(method_cls) -> dict:
    import inspect

    params = inspect.signature(method_cls.__init__).parameters
    return {
        name: p.default
        for name, p in params.items()
        if name in method_cls.hparam_names() and p.default is not inspect.Parameter.empty
    }


def _validate(cfg: dict) -> None:
    for key in ("epochs", "batch_size", "image_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {cfg[key]!r}")
    if cfg["optimizer"] not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{cfg['optimizer']}'; choose one of: {', '.join(OPTIMIZERS)}")
    if cfg["lr_scaling"] not in ("linear", "none"):
        raise UserError(f"lr_scaling must be 'linear' or 'none', got {cfg['lr_scaling']!r}")
    if cfg["lr_schedule"] not in ("cosine", "step"):
        raise UserError(f"lr_schedule must be 'cosine' or 'step', got {cfg['lr_schedule']!r}")
    if cfg["warmup_epochs"] >= cfg["epochs"] and cfg["warmup_epochs"] > 0:
        cfg["warmup_epochs"] = max(0, cfg["epochs"] - 1)  # short runs: keep at least one cosine epoch
