"""Pretraining methods, one small file each. `METHODS` maps the CLI name to the class."""
from __future__ import annotations

from importlib import import_module

from harness.errors import UserError

# CLI name -> "module:Class"; imported lazily so `bench --help` does not import lightly.
_REGISTRY = {
    "simclr": "methods.simclr:SimCLR",
    "byol": "methods.byol:BYOL",
    "dino": "methods.dino:DINO",
    "lvmmed": "methods.lvmmed:LVMMed",
    "models_genesis": "methods.models_genesis:ModelsGenesis",
    "moco": "methods.moco:MoCo",
    "barlowtwins": "methods.barlowtwins:BarlowTwins",
    "vicregl": "methods.vicregl:VICRegL",
    "swav": "methods.swav:SwaV",
    "peac": "methods.peac:PEAC",
    "ark": "methods.ark:Ark",
}

METHOD_NAMES = tuple(_REGISTRY)


def get_method(name: str):
    if name not in _REGISTRY:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(import_module(module_name), class_name)
