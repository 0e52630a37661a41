"""Pretraining methods, one small file each. `METHODS` maps the CLI name to the class."""
from __future__ import annotations

from importlib import import_module

from medssl_bench.harness.errors import UserError

# CLI name -> "module:Class"; imported lazily so `bench --help` does not import lightly.
_REGISTRY = {
    "simclr": "medssl_bench.methods.simclr:SimCLR",
    "byol": "medssl_bench.methods.byol:BYOL",
    "dino": "medssl_bench.methods.dino:DINO",
    "lvmmed": "medssl_bench.methods.lvmmed:LVMMed",
    "models_genesis": "medssl_bench.methods.models_genesis:ModelsGenesis",
    "moco": "medssl_bench.methods.moco:MoCo",
    "barlowtwins": "medssl_bench.methods.barlowtwins:BarlowTwins",
    "vicregl": "medssl_bench.methods.vicregl:VICRegL",
    "swav": "medssl_bench.methods.swav:SwaV",
    "peac": "medssl_bench.methods.peac:PEAC",
    "ark": "medssl_bench.methods.ark:Ark",
}

METHOD_NAMES = tuple(_REGISTRY)


def get_method(name: str):
    if name not in _REGISTRY:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(import_module(module_name), class_name)
