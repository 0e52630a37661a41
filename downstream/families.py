"""Task families: one record each, looked up by evaluation, dataset loading, the registry's quick
profile and the leaderboard. Adding a family = one record here + its runner package.

A family's runner is a module with `run_job(task, protocol, data, ref, *, label_fraction, seed, cache,
device, work_root) -> dict`; its loader reads a prepared dataset folder. Both are named as
"module" / "module:function" strings and imported on first use: mmseg and mmdet take seconds to
import, and `bench tasks` or the leaderboard need neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

from medssl_bench.harness.errors import UserError

if TYPE_CHECKING:
    from medssl_bench.downstream.registry import Protocol

_PKG = "medssl_bench.downstream"


@dataclass(frozen=True)
class Family:
    name: str
    title: str                       # the leaderboard's column-group title
    runner: str                      # module path of the runner (run_job)
    loader: str                      # "module:function" reading a prepared dataset folder
    #: the CPU smoke profile: Protocol fields replacing the paper's (ResNet-18, small images, short
    #: schedules), then per-protocol replacements, and a note appended to the protocol's source
    quick: dict[str, Any] = field(default_factory=dict)
    quick_per_protocol: dict[str, dict[str, Any]] = field(default_factory=dict)
    quick_note: str = ""
    #: leaderboard: one column group per protocol (a linear probe and a fine-tune measure different
    #: things and must not share a group), titled here; empty = one group for the family
    protocol_groups: dict[str, str] = field(default_factory=dict)

    def run_module(self) -> ModuleType:
        return import_module(self.runner)

    def load(self, folder):
        """The prepared dataset in `folder`, read by this family's loader."""
        module, function = self.loader.split(":")
        return getattr(import_module(module), function)(folder)

    def quick_protocol(self, paper: "Protocol") -> "Protocol":
        changes = {**self.quick, **self.quick_per_protocol.get(paper.name, {})}
        note = f"; {self.quick_note}" if self.quick_note else ""
        return replace(paper, **changes, source=f"quick (CPU) version of: {paper.source}{note}")

    def group(self, protocol: str) -> str:
        """The leaderboard column group of this family's `protocol`."""
        return f"{self.name}/{protocol}" if self.protocol_groups else self.name

    def group_titles(self) -> dict[str, str]:
        if self.protocol_groups:
            return {f"{self.name}/{p}": title for p, title in self.protocol_groups.items()}
        return {self.name: self.title}


_CLS_LOADER = f"{_PKG}.datasets.canonical:load_classification_dataset"
_SEG_LOADER = f"{_PKG}.datasets.canonical_seg:load_segmentation_dataset"
_DET_LOADER = f"{_PKG}.datasets.canonical_det:load_detection_dataset"
_SMALL = {"backbone": "resnet18", "image_size": 64}


def _segmentation(name: str, title: str, epochs: int, **quick) -> Family:
    # A U-Net decoder from scratch needs ~100 steps (measured); volumes give more slices per epoch,
    # so the 3D and OOD families need fewer epochs. Small batches give a few dozen images enough steps.
    # The Dice term: the 2D quick runs keep mmseg's per-image foreground Dice, measured to learn small
    # targets faster on CPU schedules (downstream.segmentation.model); the paper profile uses LVM-Med's.
    note = ("trained on the scored target only (binary, target weighted x{target_weight} in the "
            "cross-entropy), not all classes".format(**quick) if quick.get("target_only") else "")
    return Family(name, title, f"{_PKG}.segmentation.run", _SEG_LOADER,
                  quick={**_SMALL, "epochs": epochs, "batch_size": 8, "dice_loss": "per_image_foreground", **quick},
                  quick_note=note)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    # Probes on cached features cost little, so they keep enough epochs to converge.
    Family("classification", "Classification", f"{_PKG}.classification", _CLS_LOADER,
           quick={**_SMALL, "epochs": 4, "batch_size": 32},
           quick_per_protocol={"linear": {"epochs": 60}, "knn": {"epochs": 0}},
           # paper_linear (LVM-Med's frozen-BN-train probe, optional) sits beside bench's linear probe
           protocol_groups={"linear": "Classification (linear probe)",
                            "paper_linear": "Classification (LVM-Med frozen linear)",
                            "knn": "Classification (kNN probe)", "finetune": "Classification (fine-tune)"}),
    _segmentation("segmentation_2d", "2D segmentation", 20),
    # 3D: all classes at 64 px for 8 epochs learn only background (every checkpoint scored 0.0), so the
    # quick profile trains the scored target vs background, as the 2D tasks (Protocol.target_only)
    # target_weight: unweighted, the synthetic MM-WHS left atrium was never predicted in 8 epochs; x10
    # with LVM-Med's batch Dice learns it (benchmarks/README.md, issue 18)
    _segmentation("segmentation_3d", "3D segmentation", 8, target_only=True, target_weight=10.0, dice_loss="batch"),
    # Faster R-CNN's smallest anchor is 32 px: 64 px images would hold none. The box head's cost
    # grows with its RoIs (measured: 512 -> 128 RoIs, 3.2x faster steps).
    Family("detection", "Detection", f"{_PKG}.detection.run", _DET_LOADER,
           quick={"backbone": "resnet18", "image_size": 128, "epochs": 4, "batch_size": 4,
                  "rois_per_image": 64, "proposals": 256},
           quick_note="64 RoIs, 256 proposals"),
    _segmentation("ood_segmentation", "Out-of-distribution segmentation", 12),
)}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"unknown task family '{name}'; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
