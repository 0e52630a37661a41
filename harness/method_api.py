"""The contract between the harness and a pretraining method (one file each in `methods/`).

A method is an `nn.Module` that owns its heads (and teacher copies) around a backbone, names
the views it wants (`transform`), computes its loss from a batch of views (`training_loss`),
and may act between backward and the optimizer step (`after_backward`) or after the step
(`after_step`, e.g. momentum updates). Everything else (loop, optimiser, schedules, checkpoints,
DDP, AMP, logging) is the harness's.

Its settings come in three sections (harness.config resolves and records them; a key lives in
exactly one): `train` (harness.config.TRAIN_DEFAULTS: loop, optimiser, image size, seed), `model`
(the constructor's keyword arguments with defaults: what the network and loss are built from) and
`views` (the class's `views` dict: what `transform` draws the views with). A constructor argument
named like a train or views key (e.g. `seed`, `image_size`) reads that section's value and has no
default of its own. The method's name is its module's name in methods/, which is its registry key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch
import torch.distributed as dist
from torch import nn

from medssl_bench.harness.data import derived_seed

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


@dataclass(frozen=True)
class LabelLayout:
    """What a label-using method (`uses_labels`) is built with, from the labelled-data loader
    (harness.app.labelled): per dataset, its name, class count and steps per pass."""

    names: tuple[str, ...]
    n_classes: tuple[int, ...]
    pass_steps: tuple[int, ...]  # batches per pass over each dataset (the same on every DDP rank)


@dataclass
class StepInfo:
    """Where training is: set by the harness before every step."""

    epoch: int = 0  # 0-based epoch of the current step
    step: int = 0  # 0-based global step
    max_steps: int = 1
    max_epochs: int = 1

    @property
    def progress(self) -> float:
        return self.step / max(1, self.max_steps)


def step_generator(seed: int, step: StepInfo, device, *salt: int) -> torch.Generator:
    """A generator for a method's own random draws in one training step, seeded by (seed, DDP rank,
    step, *salt): the same draws when a run resumes, different ones on each rank."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return torch.Generator(device=device).manual_seed(derived_seed(seed, rank, step.step, *salt))


class SSLMethod(nn.Module):
    #: the registry key, set from the module's name (methods/simclr.py -> "simclr") so it is not written twice;
    #: methods.get_method refuses a class that sets another
    name: ClassVar[str]
    #: hyperparameter profiles; each may set keys of any section (train, model, views).
    #: 'paper' = the original publication, 'quick' = CPU smoke.
    profiles: ClassVar[dict[str, dict[str, Any]]]
    #: the views section: what `transform` reads besides image_size, with its defaults. Kept out of the
    #: constructor, which builds the network and never sees them.
    views: ClassVar[dict[str, Any]] = {}
    #: one-line description with the reference, shown by `bench pretrain --help`
    summary: ClassVar[str] = ""
    #: what `bench sweep` tunes: a key of any section -> an Optuna distribution. The paper profile's
    #: value (or the section default) must lie inside each range: tests/test_search_spaces.py checks it.
    search_space: ClassVar[dict[str, "BaseDistribution"]] = {}
    #: pretrains on labelled datasets (`--labels-from`, harness.app.labelled) instead of a corpus: the constructor
    #: gets `labels=LabelLayout` and each sample's outputs end with its dataset index and target vector
    uses_labels: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__module__.rsplit(".", 1)[-1]

    def __init__(self, backbone: nn.Module, feat_dim: int):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim

    @classmethod
    def check_config(cls, cfg: dict[str, Any], world_size: int) -> None:
        """Raise UserError for settings this method cannot train with (`cfg`: the flat resolved config)."""

    @classmethod
    def transform(cls, image_size: int, views: dict[str, Any]) -> Callable[[Any], list[torch.Tensor]]:
        """Image (PIL, RGB) -> list of augmented views of side `image_size`, drawn with the views section
        `views` (the class's `views` keys, resolved). Float in [0, 1] and NOT normalised (build lightly
        transforms with normalize=None): the harness ships them as uint8 and normalises on the device
        (harness.data.IMAGE_MEAN/STD). Non-image outputs (e.g. crop grids) follow the images; see
        `image_view_count`."""
        raise NotImplementedError

    @classmethod
    def image_view_count(cls, views: dict[str, Any]) -> int | None:
        """How many leading outputs of `transform` are images (None: all of them)."""
        return None

    def training_loss(self, views: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        """Losses to sum (keys containing 'loss') and values only logged (other keys)."""
        raise NotImplementedError

    def after_backward(self, step: StepInfo) -> None:
        """Hook between backward and optimizer step (gradients are already all-reduced)."""

    def after_step(self, step: StepInfo) -> None:
        """Hook after the optimizer step (e.g. EMA teacher update)."""

    def export(self, batches: Callable[[], Iterator[list[torch.Tensor]]]) -> dict[str, nn.Module]:
        """What the harness writes after every epoch: {"backbone": the module saved as backbone.safetensors, and
        any further name: a module saved beside it as <name>.safetensors, listed in the sidecar's `exports`}
        (docs/architecture.md, "Contracts"). Called on every DDP rank (the main one writes). `batches()` starts
        a pass over the training data: each item is a batch's views as `training_loss` gets them, to
        re-estimate statistics on (Models Genesis). Return copies if you change anything: the training
        state must stay as it is, or a resumed run would differ."""
        return {"backbone": self.backbone}
