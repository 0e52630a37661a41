"""Every checkpoint the evaluation can run: runs/<run>/ and checkpoints/<name>/ in the workspace, each
a backbone.safetensors + backbone.json (docs/architecture.md, "Contracts"), and the one safe way external weights get there:
read with safetensors or `torch.load(weights_only=True)` (no pickled code runs), unwrapped, stripped of
prefixes and classifier, and strictly loaded into `build_backbone(arch)` before they are saved."""
from __future__ import annotations

import json
import re
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes, load_file
from torch import nn

from medssl_bench.harness.backbones import BACKBONES, build_backbone
from medssl_bench.harness.checkpoint import check_pair, read_header, save_backbone, sidecar_path
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import sha256_bytes, sha256_file
from medssl_bench.harness.names import MAX_NAME, RESERVED_NAMES, check_name
from medssl_bench.harness.provenance import code_version, package_versions
from medssl_bench.harness.runs import BACKBONE_FILE, RUN_FILE, read_run
from medssl_bench.harness.workspace import Workspace

CONTAINER_KEYS = ("state_dict", "model", "teacher", "student", "backbone")  # teacher first: DINO evaluates it
STRIP_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
RESNET_LAYOUTS = {"resnet18": (False, (2, 2, 2, 2)), "resnet50": (True, (3, 4, 6, 3))}  # (bottleneck?, blocks)


@dataclass(frozen=True)
class CheckpointRef:
    id: str                 # first 12 hex of the weights file's sha256; "random-<backbone>" for random init
    name: str               # run name / imported name / "random"
    method: str             # sidecar method (simclr, byol, dino, lvmmed, imported) or "random"
    backbone: str
    path: Path | None       # the .safetensors file; None for random
    sidecar: dict           # the JSON sidecar ({} for random)
    corpus_id: str | None
    synthetic: bool | None  # pretrained on (partly) synthetic images? None when unknown
    sha256: str | None = None  # the full hash the weights must still have when loaded

    def as_record(self) -> dict:
        """The row for the results store's bench_checkpoints table."""
        return {"id": self.id, "name": self.name, "method": self.method, "backbone": self.backbone,
                "path": str(self.path) if self.path else None, "sha256": self.sha256,
                "corpus_id": self.corpus_id, "synthetic": self.synthetic, "sidecar": self.sidecar}


def random_checkpoint(backbone: str) -> CheckpointRef:
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone '{backbone}'; choose one of: {', '.join(BACKBONES)}")
    return CheckpointRef(f"random-{backbone}", "random", "random", backbone, None, {}, None, None)


def checkpoint_ref(weights: Path, workspace: Workspace, name: str | None = None) -> CheckpointRef:
    """The ref of one bench .safetensors file (a run's, an import's, or one copied anywhere)."""
    weights = Path(weights).expanduser().resolve()
    if not weights.is_file():
        raise UserError("checkpoint not found", weights)
    meta = _read_sidecar(weights)
    header = read_header(weights)  # a damaged file is refused here, from its header, before anything reads it whole
    check_pair(weights, header, meta, _reexport_hint(weights))
    sha = meta.get("sha256") or sha256_file(weights)
    method = meta.get("method") or "unknown"
    corpus = meta.get("corpus")
    corpus_id = corpus.get("id") if isinstance(corpus, dict) else corpus
    name = name or meta.get("name") or meta.get("run") or (
        weights.parent.name if weights.name == BACKBONE_FILE else weights.stem)
    synthetic = False if method == "imported" else _synthetic(workspace, corpus_id, corpus)
    backbone = meta.get("backbone") or infer_backbone(_safetensors_shapes(weights), weights)  # no sidecar
    return CheckpointRef(sha[:12], name, method, backbone, weights, meta, corpus_id, synthetic, sha)


def _reexport_hint(weights: Path) -> str:
    """What rewrites these weights: a run re-exports them when resumed, an import when imported again."""
    if weights.name == BACKBONE_FILE and (weights.parent / RUN_FILE).is_file():
        return (f"`bench pretrain --resume --name {weights.parent.name}` re-exports them (or retrain the run's last "
                "epoch)")
    return "import the original weights again (`bench import-checkpoint`)"


def list_checkpoints(workspace: Workspace) -> list[CheckpointRef]:
    """Runs that have exported a backbone (finished or not) and imported checkpoints, by name."""
    refs = []
    for folder, marker in ((workspace.runs, RUN_FILE), (workspace.checkpoints, BACKBONE_FILE)):
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if (entry / marker).is_file() and (entry / BACKBONE_FILE).is_file() and not _sweep_trial(entry):
                refs.append(checkpoint_ref(entry / BACKBONE_FILE, workspace, name=entry.name))
    return sorted(refs, key=lambda r: (r.name, r.id))


def _sweep_trial(run_dir: Path) -> bool:
    """A sweep's trial run other than its best: tuning material, never evaluated on test by default."""
    sweep = read_run(run_dir).get("sweep") if (run_dir / RUN_FILE).is_file() else None
    return bool(sweep) and not sweep.get("best")


def resolve_checkpoints(spec: str, workspace: Workspace, *, backbone: str | None = None) -> list[CheckpointRef]:
    """Checkpoints named by `spec`: a .safetensors path, a run or imported name, an id (prefix of at
    least 4 hex), "random" (init of `backbone`, default resnet18), "all" (every listed checkpoint plus
    random init of each of their backbones, or of `backbone`). Comma-separated specs are combined."""
    unique: dict[str, CheckpointRef] = {}
    for ref in (r for part in spec.split(",") for r in _resolve_one(part.strip(), workspace, backbone)):
        unique.setdefault(ref.id, ref)  # the same weights are evaluated once
    return list(unique.values())


def _resolve_one(spec: str, workspace: Workspace, backbone: str | None) -> list[CheckpointRef]:
    if spec == "random" or (spec.startswith("random-") and spec[7:] in BACKBONES):  # also its id
        return [random_checkpoint(spec[7:] or backbone or "resnet18")]
    if spec.endswith(".safetensors"):
        return [checkpoint_ref(Path(spec), workspace)]
    listed = list_checkpoints(workspace)
    if spec == "all":
        archs = [backbone] if backbone else sorted({r.backbone for r in listed}) or ["resnet18"]
        return listed + [random_checkpoint(arch) for arch in archs]
    named = [r for r in listed if r.name == spec]
    if not named and re.fullmatch(r"[0-9a-f]{4,64}", spec.lower()):
        named = [r for r in listed if r.sha256 and r.sha256.startswith(spec.lower())]
    if len({r.id for r in named}) > 1:
        raise UserError(f"'{spec}' is ambiguous: " + ", ".join(f"{r.name} (id {r.id})" for r in named))
    if named:
        return named[:1]
    path = Path(spec).expanduser()
    if (path / BACKBONE_FILE).is_file():  # a run or checkpoint folder given as a path
        return [checkpoint_ref(path / BACKBONE_FILE, workspace)]
    if path.is_file():
        raise UserError("external weights enter bench once, safely: `bench import-checkpoint "
                        f"{spec}`, then use the name it prints", path)
    known = "".join(f"{r.name} ({r.id}), " for r in listed[:12]) + ("..., " if len(listed) > 12 else "")
    raise UserError(f"no checkpoint '{spec}' in {workspace.root}; available: {known}random, all (`bench checkpoints` "
                    "lists them; `bench pretrain` and `bench import-checkpoint` make them)")


def load_checkpoint_into(ref: CheckpointRef, model: nn.Module) -> None:
    """Load `ref`'s weights strictly into `model` (nothing for random init), refusing changed files."""
    if ref.path is None:
        return
    read_header(Path(ref.path))  # sizes checked before the whole file is read
    try:
        data = Path(ref.path).read_bytes()  # hash and parse the same bytes: no race with a re-export
    except OSError as err:
        raise UserError(f"checkpoint not readable ({err.strerror or type(err).__name__})", ref.path) from None
    if ref.sha256 and (actual := sha256_bytes(data)) != ref.sha256:
        raise UserError(f"weights changed since they were recorded (sha256 {actual[:12]}, expected "
                        f"{ref.sha256[:12]}); {_reexport_hint(Path(ref.path))}", ref.path)
    try:
        state = load_safetensors_bytes(data)
    except SafetensorError as err:
        raise UserError(f"not a readable safetensors file ({err})", ref.path) from None
    strict_load(model, state, ref.backbone, ref.path)


def load_export(ref: CheckpointRef, name: str) -> dict[str, torch.Tensor]:
    """The state dict of `ref`'s further export `name` (a `<name>.safetensors` beside the backbone, listed in
    its sidecar's `exports`: harness.method_api.SSLMethod.export), its recorded sha256 checked; a UserError
    naming what is missing otherwise."""
    entry = (ref.sidecar.get("exports") or {}).get(name) if ref.path is not None else None
    if not entry:
        listed = ", ".join(ref.sidecar.get("exports") or {}) or "none"
        raise UserError(f"checkpoint '{ref.name}' ({ref.method}) has no exported {name} (its sidecar lists: {listed}); "
                        f"only a run of a method that exports a {name} has one", ref.path)
    path = Path(ref.path).parent / entry["file"]
    read_header(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"exported {name} not readable ({err.strerror or type(err).__name__})", path) from None
    if (actual := sha256_bytes(data)) != entry.get("sha256"):
        raise UserError(f"exported {name} changed since it was recorded (sha256 {actual[:12]}, expected "
                        f"{str(entry.get('sha256'))[:12]}); {_reexport_hint(Path(ref.path))}", path)
    try:
        return load_safetensors_bytes(data)
    except SafetensorError as err:
        raise UserError(f"not a readable safetensors file ({err})", path) from None


def strict_load(model: nn.Module, state: dict, arch: str, path: Path) -> None:
    """load_state_dict(strict=True), mismatches in one line (num_batches_tracked, absent in old files, is filled in)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise UserError(f"weights do not fit a {arch}: {len(missing)} missing keys {missing[:3]}, {len(unexpected)} "
                        f"unexpected {unexpected[:3]}, {len(shapes)} of another shape {shapes[:2]}", path)
    model.load_state_dict(state, strict=True)


def import_checkpoint(src: Path, workspace: Workspace, *, name: str | None = None, backbone: str | None = None,
                      log: Callable[[str], None] | None = None) -> Path:
    """Validate external weights and write them as workspace/checkpoints/<name>/backbone.safetensors.
    `log(line)` hears when the file was imported before (the earlier checkpoint is returned)."""
    src, log = Path(src).expanduser().resolve(), log or (lambda line: None)
    if not src.is_file():
        raise UserError("checkpoint not found", src)
    if src.suffix == ".safetensors":
        read_header(src)  # before hashing: a damaged or sparse file is refused without reading it
    name, source_sha = _import_name(name, src), sha256_file(src)
    weights = workspace.checkpoints / name / BACKBONE_FILE
    if weights.is_file():
        if (_read_sidecar(weights).get("source") or {}).get("sha256") == source_sha:
            log(f"already imported as '{name}'")
            return weights
        raise UserError(f"checkpoint '{name}' exists with other weights; choose another --name", weights)
    for ref in list_checkpoints(workspace):
        if (ref.sidecar.get("source") or {}).get("sha256") == source_sha:
            log(f"this file was already imported as '{ref.name}'")
            return ref.path
        if ref.name == name:
            raise UserError(f"'{name}' is already a run name; choose another --name", src)
    raw, fmt = read_external(src)
    state, how = extract_resnet_state(raw, src)
    arch = backbone or infer_backbone({k: tuple(v.shape) for k, v in state.items()}, src)
    model, _ = build_backbone(arch)
    strict_load(model, state, arch, src)
    refuse_non_finite(state, src)
    workspace.writable()
    return save_backbone(model, weights, {
        "method": "imported", "name": name, "backbone": arch, "imported": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "source": {"path": str(src), "sha256": source_sha, "format": fmt, **how},
        **code_version(), "versions": package_versions()})


def read_external(src: Path) -> tuple[object, str]:
    """The object stored in `src` and its format, without executing any pickled code."""
    if src.suffix == ".safetensors":
        try:
            return load_file(str(src)), "safetensors"
        except (SafetensorError, OSError) as err:
            raise UserError(f"not a readable safetensors file ({err})", src) from None
    fmt = "torch-zip" if zipfile.is_zipfile(src) else "torch-legacy"
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_harmless_globals()):
            warnings.simplefilter("ignore")  # "Detected pickle protocol" notices are not the user's business
            return torch.load(src, map_location="cpu", weights_only=True), fmt
    except Exception as err:  # torch reports corrupt files with many exception types
        text, found = str(err), re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if "Weights only load failed" not in text:
            raise UserError(f"not a readable PyTorch checkpoint, corrupt or truncated ({type(err).__name__}: "
                            f"{(text.splitlines() or [''])[0][:160]})", src) from None
        needs = f"it needs {found.group(1)}, which plain weights never do" if found else \
            "it is corrupt or not a plain torch.save file of tensors"
        raise UserError(f"refusing to unpickle arbitrary objects: {needs}; nothing in it was run. If you trust "
                        "its source, re-save its state dict with safetensors and import that", src) from None


def _harmless_globals() -> list:
    """Data-only types training scripts save beside the weights (DINO's args, numpy counters)."""
    import argparse

    import numpy as np
    scalar = np._core.multiarray.scalar
    dtypes = [type(np.dtype(n)) for n in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return [argparse.Namespace, np.dtype, *dtypes, scalar, (scalar, "numpy.core.multiarray.scalar")]


def refuse_non_finite(state: dict[str, torch.Tensor], src: Path) -> None:
    """NaN or inf weights (a diverged run) would evaluate as chance everywhere: refuse them at the door."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{len(bad)} of {len(state)} tensors hold NaN or inf (first: {bad[0]}): the weights are "
                        "broken (a diverged run?); export them from an earlier, healthy epoch", src)


def extract_resnet_state(raw: object, src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Unwrap containers, strip prefixes and the classifier; returns the state and what was done."""
    how: dict = {"container": [], "stripped_prefix": "", "dropped_keys": []}
    while isinstance(raw, dict):
        key = next((k for k in CONTAINER_KEYS if isinstance(raw.get(k), dict)), None)
        if key is None and any(isinstance(v, torch.Tensor) for v in raw.values()):
            break  # the state dict itself
        if key is None:
            raise UserError(f"no state dict found (top-level keys: {list(raw)[:8]}); expected tensors or one "
                            f"of {', '.join(CONTAINER_KEYS)}", src)
        how["container"].append(key)
        raw = raw[key]
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"holds a {type(raw).__name__}, not a state dict of tensors", src)
    state = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    while state and (prefix := next((p for p in STRIP_PREFIXES if all(k.startswith(p) for k in state)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}  # "module.backbone.conv1.weight" -> "conv1.weight"
        how["stripped_prefix"] += prefix
    if "conv1.weight" not in state:  # a method checkpoint: backbone beside heads ("backbone.*", "head.*")
        roots = sorted({k[:-len("conv1.weight")] for k in state if k.endswith("conv1.weight")
                        and k[:-len("conv1.weight")] + "layer1.0.conv1.weight" in state})
        if len(roots) > 1:
            raise UserError(f"holds several ResNets ({', '.join(roots)}); save the one to import on its own", src)
        if roots:
            how["dropped_keys"] += [k for k in state if not k.startswith(roots[0])]
            state = {k[len(roots[0]):]: v for k, v in state.items() if k.startswith(roots[0])}
            how["stripped_prefix"] += roots[0]
    how["dropped_keys"] += [k for k in state if k.startswith("fc.")]  # the ImageNet classifier
    how["n_dropped"], how["dropped_keys"] = len(how["dropped_keys"]), how["dropped_keys"][:12]
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, how


def infer_backbone(shapes: dict[str, tuple], path: Path) -> str:
    """resnet18 or resnet50, from the block type and the number of blocks per stage."""
    if "conv1.weight" not in shapes or not any(k.startswith("layer4.") for k in shapes):
        raise UserError(f"does not look like a torchvision ResNet state dict (keys: {list(shapes)[:4]}); "
                        f"bench backbones are {', '.join(BACKBONES)}", path)
    layout = ("layer1.0.conv3.weight" in shapes,
              tuple(len({k.split(".")[1] for k in shapes if k.startswith(f"layer{i}.")}) for i in range(1, 5)))
    if arch := next((name for name, known in RESNET_LAYOUTS.items() if known == layout), None):
        return arch
    raise UserError(f"holds a ResNet with {'bottleneck' if layout[0] else 'basic'} blocks {list(layout[1])} per "
                    f"stage; bench supports {', '.join(RESNET_LAYOUTS)}", path)


def _safetensors_shapes(path: Path) -> dict[str, tuple]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(f"not a readable safetensors file ({err})", path) from None


def _read_sidecar(weights: Path) -> dict:
    side = sidecar_path(weights)
    try:
        return json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"not a readable checkpoint sidecar ({type(err).__name__})", side) from None


def _synthetic(workspace: Workspace, corpus_id: str | None, recorded) -> bool | None:
    """From the corpus record when it exists, else what the sidecar recorded; "mixed" counts as synthetic."""
    value = recorded.get("synthetic") if isinstance(recorded, dict) else None
    try:
        value = json.loads((workspace.corpora / corpus_id / "corpus.json").read_text()).get("synthetic", value)
    except (TypeError, OSError, json.JSONDecodeError):
        pass  # no corpus id, or its record is gone or unreadable: keep what the sidecar says
    return None if value is None else value is True or value == "mixed"


def _import_name(name: str | None, src: Path) -> str:
    """--name checked, or the source file's stem made safe ("model.pth.tar" -> "model")."""
    if name is not None:
        check_name(name)
    stem = src.name
    while Path(stem).suffix in (".pth", ".pt", ".torch", ".tar", ".ckpt", ".safetensors", ".bin"):
        stem = Path(stem).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-_")[:MAX_NAME - len("-imported")] or "imported"
    return name or (f"{stem}-imported" if stem in RESERVED_NAMES else stem)
