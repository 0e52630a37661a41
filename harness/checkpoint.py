"""The backbone checkpoint contract (docs/architecture.md, "Contracts"): safetensors state dict + JSON sidecar.

The state dict has torchvision ResNet keys with no prefix and no classifier, so
`m = torchvision.models.resnet50(); m.fc = nn.Identity(); m.load_state_dict(sd, strict=True)`
works. The sidecar says where the weights came from. Both are written atomically.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import atomic_path, sha256_file, write_json_atomic

FORMAT = "bench-backbone/1"
EXPORT_FORMAT = "bench-export/1"  # a further named module beside the backbone (the sidecar's `exports`)


def sidecar_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_backbone(backbone: torch.nn.Module, weights: Path, sidecar: dict) -> Path:
    """Write `weights` (.safetensors) and its sidecar (.json); return the weights path."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = {"format": FORMAT, **sidecar, "sha256": sha256_file(weights), "n_tensors": len(state)}
    write_json_atomic(sidecar_path(weights), meta)
    return weights


def save_export(module: torch.nn.Module, weights: Path) -> dict:
    """Write a method's further export (SSLMethod.export) as safetensors; return its sidecar entry."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": EXPORT_FORMAT})
    return {"file": weights.name, "format": EXPORT_FORMAT, "sha256": sha256_file(weights), "n_tensors": len(state)}


def load_backbone_state(weights: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by `save_backbone` (no pickle involved)."""
    weights = Path(weights)
    if not weights.is_file():
        raise UserError("checkpoint not found", weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise UserError(f"not a readable safetensors file ({err})", weights) from None
    side = sidecar_path(weights)
    meta = json.loads(side.read_text()) if side.is_file() else {}
    return state, meta


def state_digest(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, to prove two processes hold identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
