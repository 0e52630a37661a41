"""The backbone checkpoint contract (docs/architecture.md, "Contracts"): safetensors state dict + JSON sidecar.

The state dict has torchvision ResNet keys with no prefix and no classifier, so
`m = torchvision.models.resnet50(); m.fc = nn.Identity(); m.load_state_dict(sd, strict=True)`
works. The sidecar says where the weights came from. Both are written atomically, the weights first and
the sidecar last; both carry one `export_id` (the sidecar in its JSON, the weights in their safetensors
header), so a crash between the two renames leaves a pair that readers see does not match
(`check_pair`), never one silently mixed. Headers are checked against the file size before any tensor
data is read (`read_header`): a damaged or hostile file costs a few bytes, not its declared size.
"""
from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import atomic_path, sha256_file, write_json_atomic

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit for the JSON header
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

FORMAT = "bench-backbone/1"
EXPORT_FORMAT = "bench-export/1"  # a further named module beside the backbone (the sidecar's `exports`)


def sidecar_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_backbone(backbone: torch.nn.Module, weights: Path, sidecar: dict, export_id: str | None = None) -> Path:
    """Write `weights` (.safetensors), then its sidecar (.json); return the weights path. `export_id` ties
    the pair (and the run's further exports written before it) together; a fresh one by default."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    export_id = export_id or new_export_id()
    with atomic_path(weights, clear_stale=True) as tmp:  # clear_stale: .tmp files of a killed export
        save_file(state, str(tmp), metadata={"format": FORMAT, "export_id": export_id})
    meta = {"format": FORMAT, **sidecar, "sha256": sha256_file(weights), "n_tensors": len(state),
            "export_id": export_id}
    write_json_atomic(sidecar_path(weights), meta, clear_stale=True)
    return weights


def new_export_id() -> str:
    return uuid.uuid4().hex


def save_export(module: torch.nn.Module, weights: Path, export_id: str | None = None) -> dict:
    """Write a method's further export (SSLMethod.export) as safetensors; return its sidecar entry."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"format": EXPORT_FORMAT, **({"export_id": export_id} if export_id else {})}
    with atomic_path(weights, clear_stale=True) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return {"file": weights.name, "format": EXPORT_FORMAT, "sha256": sha256_file(weights), "n_tensors": len(state)}


def read_header(path: Path) -> dict:
    """The safetensors header of `path` ({"__metadata__": ..., name: {dtype, shape, data_offsets}}), checked
    against the file before any tensor is read: the declared tensors must tile the file's data exactly.
    A truncated, padded, sparse or hostile file is one UserError; reading costs the header's bytes only."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
                raise UserError(f"not a readable safetensors file: its header length {length} does not fit its "
                                f"{size} bytes (truncated, or not safetensors); re-export or re-download it", path)
            header = json.loads(handle.read(length))
    except OSError as err:
        raise UserError(f"checkpoint not readable ({err.strerror or type(err).__name__})", path) from None
    except (ValueError, UnicodeDecodeError):
        raise UserError("not a readable safetensors file: its header is not JSON; re-export or re-download it",
                        path) from None
    data_bytes, spans = size - 8 - length, []
    for name, info in (header.items() if isinstance(header, dict) else [(None, None)]):
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            ok = end - begin == count * DTYPE_BYTES[info["dtype"]] and 0 <= begin <= end
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"not a readable safetensors file: tensor {name!r} is declared inconsistently; "
                            "re-export or re-download it", path)
        spans.append((begin, end))
    spans.sort()
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])) or (spans[-1][1] if spans else 0) != data_bytes \
            or (spans and spans[0][0] != 0):
        declared = spans[-1][1] if spans else 0
        raise UserError(f"not a readable safetensors file: its header declares {declared} bytes of tensors, the file "
                        f"holds {data_bytes} (truncated or padded); re-export or re-download it", path)
    return header


def check_pair(weights: Path, header: dict, meta: dict, hint: str) -> None:
    """Refuse weights whose sidecar belongs to another export (a crash between writing the two), from the
    export ids in both: the weights' `header` (read_header) and the sidecar's `meta` (files written before
    export ids existed are checked by sha256 when loaded)."""
    if not meta.get("export_id"):
        return
    found = (header.get("__metadata__") or {}).get("export_id")
    if found != meta["export_id"]:
        raise UserError(f"weights and their sidecar {sidecar_path(weights).name} are from different exports "
                        f"(a crash between writing them); {hint}", weights)


def load_backbone_state(weights: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by `save_backbone` (no pickle involved)."""
    weights = Path(weights)
    if not weights.is_file():
        raise UserError("checkpoint not found", weights)
    header = read_header(weights)
    side = sidecar_path(weights)
    try:
        meta = json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, ValueError) as err:
        raise UserError(f"not a readable checkpoint sidecar ({type(err).__name__}); re-export it", side) from None
    check_pair(weights, header, meta, "re-export it (`bench pretrain --resume`) or re-import it")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise UserError(f"not a readable safetensors file ({err})", weights) from None
    return state, meta


def state_digest(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, to prove two processes hold identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
