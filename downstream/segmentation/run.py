"""Segmentation tasks (2D, 3D via slices, prostate out of distribution) through mmsegmentation.

Protocol (LVM-Med App. B, Tables 7 and 8; repo: segmentation_2d/3d): a U-Net on the pretrained
ResNet encoder (downstream.segmentation.model: mmseg EncoderDecoder), fine-tuned end to end with Adam,
cross-entropy + Dice loss and gradient-norm clip 1, no augmentation; images resized to the
protocol's side; validated every epoch and the best-validation epoch tested. `frozen` keeps the
encoder fixed and trains the decoder only (an option; not in the paper's tables). `genesis_unet` starts the
decoder from the checkpoint's pretrained Models Genesis decoder (downstream.segmentation.genesis_head), so
Genesis' encoder-decoder transfer is measured beside the encoder-only `finetune`.
3D volumes are segmented slice by slice and trained on balanced slices: every slice showing the
scored target plus as many drawn from the others (the repo's have_label / non_label sampling).
Prostate: trained on the BMC site; val on BMC; test on the task's site.
`Protocol.target_only` (3D, the quick profile): the masks are mapped to target vs background (the
union of the scored target classes -> 1, the other structures -> 0) and a binary model is trained,
as the 2D tasks; the paper profile trains all classes.
Predictions are scored at the original image resolution (mmseg resizes them back) and at the
protocol size (`dice_at_size`, as LVM-Med), with the paper's metrics (downstream.segmentation.metrics). Label fractions subsample training cases (volumes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mmengine.registry import DefaultScope

from medssl_bench.downstream.datasets.canonical_seg import SegmentationDataset, SegSample
from medssl_bench.downstream.registry import Protocol, Task
from medssl_bench.downstream.segmentation.metrics import PaperSegMetric
from medssl_bench.downstream.segmentation.model import build_segmentor
from medssl_bench.harness.data import derived_seed
from medssl_bench.harness.errors import UserError

from mmseg.datasets import BaseSegDataset  # noqa: E402  (after segmentation.model installed the mmcv ops stand-in)

_LAST_TRAINED: dict = {}  # {training identity: {"state", "epoch"}}, one entry (see run_job)
META_KEYS = ("img_path", "seg_map_path", "ori_shape", "img_shape", "pad_shape", "scale_factor", "flip",
             "flip_direction", "reduce_zero_label", "sample_id", "case", "slice", "domain")


class SampleSet(BaseSegDataset):
    """A list of prepared samples as an mmseg dataset (its pipeline, its packing)."""

    def __init__(self, samples: list[SegSample], classes: list[str], size: int, test_mode: bool,
                 label_map: dict[int, int] | None = None):
        self._samples, self._label_map = samples, label_map
        resize = dict(type="Resize", scale=(size, size), keep_ratio=False)
        load_mask = dict(type="LoadAnnotations")
        # Train: the mask is resized with the image (nearest). Test: the mask stays at full size and
        # mmseg resizes the prediction back to it, so scores are at the original resolution.
        steps = [resize, load_mask] if test_mode else [load_mask, resize]
        palette = [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(len(classes))]
        with DefaultScope.overwrite_default_scope("mmseg"):  # the pipeline's types live in mmseg's registry
            super().__init__(metainfo=dict(classes=tuple(classes), palette=palette), test_mode=test_mode,
                             pipeline=[dict(type="LoadBenchImage"), *steps,
                                       dict(type="PackSegInputs", meta_keys=META_KEYS)])

    def load_data_list(self) -> list[dict]:
        return [dict(img_path=str(s.image), seg_map_path=str(s.mask), label_map=self._label_map, reduce_zero_label=False,
                     seg_fields=[], sample_id=s.id, case=s.case, slice=s.slice, domain=s.domain) for s in self._samples]


def case_fraction(cases: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded `fraction` of the training cases (at least one); 1.0 keeps all."""
    if fraction >= 1.0:
        return set(cases)
    rng = np.random.default_rng(derived_seed(seed, 3))
    keep = max(1, int(np.floor(len(cases) * fraction + 0.5)))
    return {cases[i] for i in rng.permutation(len(cases))[:keep]}


def balanced_slices(samples: list[SegSample], target_classes, seed: int) -> list[SegSample]:
    """Every slice showing the scored target plus an equal number (or all, if fewer) of the others,
    as the repo's have_label / non_label lists (MMWHS: keyed on the left atrium, not any structure)."""
    from PIL import Image

    targets = list(target_classes)
    has = np.array([bool(np.isin(np.asarray(Image.open(s.mask)), targets).any()) for s in samples])
    others = np.flatnonzero(~has)
    rng = np.random.default_rng(derived_seed(seed, 4))
    chosen = sorted(np.flatnonzero(has).tolist() + rng.permutation(others)[: int(has.sum())].tolist())
    return [samples[i] for i in chosen]


def training_samples(task: Task, data: SegmentationDataset, label_fraction: float, seed: int) -> list[SegSample]:
    pool = data.split("train", task.train_domain)
    cases = case_fraction(list(dict.fromkeys(s.case for s in pool)), label_fraction, seed)
    train = [s for s in pool if s.case in cases]
    return balanced_slices(train, data.target_classes, seed) if data.kind == "3d" else train


def target_labels(data: SegmentationDataset) -> tuple[list[str], dict[int, int], int]:
    """`Protocol.target_only`: (training classes, mmseg label_map of the training masks, the class a
    predicted 1 is scored as). The scored target (the union of the dataset's target classes) is 1 and
    every other class 0 in training; 255 (ignore) is left alone. Validation and test keep their
    full-class masks, and the binary prediction is scored as the first target class, so the scored
    target is exact and the other structures score what the model predicts of them: nothing."""
    targets = sorted(set(data.target_classes))
    name = "+".join(data.classes[c] for c in targets)
    label_map = {c: int(c in targets) for c in range(1, len(data.classes)) if int(c in targets) != c}
    return ["background", name], label_map, targets[0]


def run_job(task: Task, protocol: Protocol, data: SegmentationDataset, ref, *, label_fraction: float, seed: int,
            device: torch.device, work_root: Path, cache=None) -> dict:
    """One evaluation: fine-tune (or train the decoder of a frozen encoder), test the best-val epoch.
    Returns {"val": ..., "test": ..., "selected": ..., "n_train": ...}."""
    from medssl_bench.downstream.finetuning import fit_best_on_val

    if task.test_domain and task.test_domain not in data.domains:
        raise UserError(f"site {task.test_domain} is not in the prepared {data.name} data (sites present: "
                        f"{', '.join(d for d in data.domains if d) or 'none'})", data.root)
    train = training_samples(task, data, label_fraction, seed)
    val = data.split("val", task.train_domain)
    test = data.split("test", task.test_domain or task.train_domain)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if not split:
            raise UserError(f"the {name} split of {data.name} is empty; re-prepare it with more images", data.root)
    classes, label_map, predicted_as = target_labels(data) if protocol.target_only else (data.classes, None, None)
    torch.manual_seed(derived_seed(seed, 0x5EED))  # random init (and the decoder) differ per seed
    weights = [1.0, protocol.target_weight] if protocol.target_only and protocol.target_weight else None
    model = build_segmentor(ref.backbone, len(classes), ref=ref, frozen=protocol.name == "frozen",
                            dice_loss=protocol.dice_loss or "batch", class_weight=weights,
                            decoder="genesis_unet" if protocol.name == "genesis_unet" else "unet")
    metric = lambda: PaperSegMetric(task.metric, data.classes, data.target_classes, predicted_as)  # noqa: E731
    # The prostate sites train the same model (BMC, same protocol and seed) and test elsewhere:
    # train once. evaluate.plan puts such jobs back to back, so remembering the last one suffices.
    training = (ref.id, data.meta["content_hash"], repr(protocol.as_dict()), seed, label_fraction, task.train_domain)
    reuse = _LAST_TRAINED.get(training)
    out = fit_best_on_val(
        model, SampleSet(train, classes, protocol.image_size, False, label_map),
        SampleSet(val, data.classes, protocol.image_size, True), SampleSet(test, data.classes, protocol.image_size, True),
        val_metric=metric(), test_metric=metric(), key=task.metric, epochs=protocol.epochs, lr=protocol.lr,
        weight_decay=protocol.weight_decay, batch_size=protocol.batch_size, seed=seed, work_root=work_root,
        collate="pseudo_collate", scope="mmseg", trained=reuse)
    _LAST_TRAINED.clear()
    _LAST_TRAINED[training] = out.pop("trained")
    out["n_train"] = len(train)
    out["selected"]["reused_training"] = reuse is not None
    return out
