"""Pretraining methods, one small file each. The registry key is the module's name, which is also the
class's `name` (SSLMethod sets it from the module), so `bench pretrain --method simclr` is methods/simclr.py."""
from __future__ import annotations

from importlib import import_module

from medssl_bench.harness.errors import UserError

# CLI name = module in this package -> its class; imported lazily so `bench --help` does not import lightly.
_CLASSES = {
    "simclr": "SimCLR",
    "byol": "BYOL",
    "dino": "DINO",
    "lvmmed": "LVMMed",
    "models_genesis": "ModelsGenesis",
    "moco": "MoCo",
    "barlowtwins": "BarlowTwins",
    "vicregl": "VICRegL",
    "swav": "SwAV",
    "peac": "PEAC",
    "ark": "Ark",
}

METHOD_NAMES = tuple(_CLASSES)


def get_method(name: str):
    if name not in _CLASSES:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(_CLASSES)}")
    cls = getattr(import_module(f"{__name__}.{name}"), _CLASSES[name])
    if cls.name != name:  # a class that sets its own `name`: the run records would not name its CLI key
        raise TypeError(f"methods/{name}.py: {cls.__name__}.name is '{cls.name}', but its registry key is '{name}'")
    return cls
