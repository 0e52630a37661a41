"""Classification tasks (FGADR grading, Brain Tumor MRI): linear probe, kNN and fine-tune.

Protocols (LVM-Med Table 5, App. B; one FC layer on the pooled backbone features, Adam, CE):
- linear: the frozen encoder's features are computed once per checkpoint and cached; a linear
  layer is trained on them. Its learning rate and weight decay (a small grid around the paper's)
  and its epoch are chosen on the validation split, never on test. Features are standardised
  with the training statistics, so checkpoints with different feature scales compete fairly.
- knn: weighted k-nearest-neighbour vote on cosine similarity (temperature 0.07, as InstDisc and
  DINO); k chosen on validation.
- finetune: encoder + FC trained end to end by mmengine's Runner; the epoch with the best
  validation accuracy is the one tested (as the paper's repo does).
- paper_linear: LVM-Med's own "frozen" linear protocol, the one its reported linear numbers
  (68.33 FGADR, 66.33 Brain Tumor) were measured with (repo classification_R50/
  train_R50_classification.py with dataloader/yaml_data/{fgadr,brain}_endtoend_R50_frozen_1_fcn.yml):
  every encoder parameter has requires_grad False, but the model is in train() mode while it
  trains, so BatchNorm running statistics keep moving with the downstream images (val and test
  run in eval() mode with those statistics); one FC layer; Adam (wd 0.005 for FGADR, 0 for Brain
  Tumor: it reaches only the FC, the frozen parameters get no gradient), no gradient clipping;
  the last of equally good validation epochs is tested (the repo saves on `>=`). Images as the
  repo's transforms (PAPER_LINEAR_TRANSFORMS), which it applies to the val and test images too:
  FGADR's random crop, flip and autocontrast are drawn for every val/test image as well (here
  from a generator seeded per seed and image, so a rerun scores the same crops). Trained
  through mmengine's Runner, not on cached features: the features change with every step.
Metrics: accuracy (the paper's), macro-F1 and macro one-vs-rest AUROC (torchmetrics), per-class
recall/F1/AUROC, and per-image outcomes so the leaderboard can bootstrap confidence intervals.
"""
from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel, ImgDataPreprocessor
from PIL import Image
from torch import nn
from torchmetrics.functional.classification import multiclass_auroc, multiclass_f1_score, multiclass_recall

from medssl_bench.downstream.datasets.canonical import ClassificationDataset, Sample, label_fraction_subset
from medssl_bench.downstream.finetuning import fit_best_on_val
from medssl_bench.downstream.registry import Protocol, Task
from medssl_bench.harness.backbones import BACKBONES, build_backbone
from medssl_bench.harness.data import IMAGE_MEAN, IMAGE_STD, derived_seed
from medssl_bench.harness.fsutil import atomic_path
from medssl_bench.harness.imageio import load_rgb

SPLITS = ("train", "val", "test")
KNN_TEMPERATURE = 0.07
KNN_KS = (5, 10, 20)
LINEAR_LR_FACTORS = (0.3, 1.0, 3.0)
LINEAR_WEIGHT_DECAYS = (0.0, 1e-4, 1e-2)


# ----------------------------------------------------------------------------- metrics
def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str],
                           ids: list[str] | None = None) -> dict:
    """Accuracy, macro-F1 and macro AUROC of class probabilities `probs` (N, C) against `labels`.

    AUROC is averaged over the classes it is defined for (present and absent in `labels`);
    None when it is defined for none.
    """
    num_classes = len(classes)
    labels = labels.long()
    preds = probs.argmax(1)
    recall = multiclass_recall(preds, labels, num_classes, average=None)
    f1 = multiclass_f1_score(preds, labels, num_classes, average="macro")
    per_class_f1 = multiclass_f1_score(preds, labels, num_classes, average=None)
    counts = torch.bincount(labels, minlength=num_classes)
    defined = (counts > 0) & (counts < len(labels))
    with warnings.catch_warnings():  # undefined classes are excluded below; torchmetrics warns about them
        warnings.simplefilter("ignore", UserWarning)
        auroc_all = multiclass_auroc(probs.float(), labels, num_classes, average=None, thresholds=None)
    auroc = float(auroc_all[defined].mean()) if defined.any() else None
    per_class = {name: {"n": int(counts[c]), "recall": float(recall[c]), "f1": float(per_class_f1[c]),
                        "auroc": float(auroc_all[c]) if defined[c] else None} for c, name in enumerate(classes)}
    ids = ids if ids is not None else [str(i) for i in range(len(labels))]
    per_case = [{"id": i, "label": int(t), "pred": int(p)} for i, t, p in zip(ids, labels.tolist(), preds.tolist())]
    accuracy = float((preds == labels).float().mean())
    return {"metric": "accuracy", "value": accuracy,
            "metrics": {"accuracy": accuracy, "macro_f1": float(f1), "auroc": auroc, "n": len(labels)},
            "per_class": per_class, "per_case": per_case}


# ----------------------------------------------------------------------------- images
def load_image(sample: Sample, size: int) -> torch.Tensor:
    """(3, size, size) uint8, decoded as pretraining decodes (grayscale replicated, 16-bit windowed),
    resized bilinearly; a file that cannot be decoded raises CorruptImageError naming it."""
    rgb = load_rgb(sample.path).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


class ImageSet(torch.utils.data.Dataset):
    """Samples as mmengine batches: {"inputs": uint8 image, "data_samples": label}."""

    def __init__(self, samples: list[Sample], size: int, flip: bool = False):
        self.samples, self.size, self.flip = samples, size, flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        image = load_image(self.samples[index], self.size)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"inputs": image, "data_samples": self.samples[index].label}


def preprocessor() -> ImgDataPreprocessor:
    return ImgDataPreprocessor(mean=[m * 255 for m in IMAGE_MEAN], std=[s * 255 for s in IMAGE_STD])


# ----------------------------------------------------------------------------- frozen features
def build_encoder(ref, seed: int) -> nn.Module:
    """The checkpoint's backbone; random init is seeded per evaluation seed (a baseline over seeds)."""
    from medssl_bench.harness.checkpoint_index import load_checkpoint_into

    torch.manual_seed(derived_seed(seed, 0x5EED))
    backbone, _ = build_backbone(ref.backbone)
    load_checkpoint_into(ref, backbone)
    return backbone


@torch.no_grad()
def extract_features(encoder: nn.Module, samples: list[Sample], size: int, batch_size: int,
                     device: torch.device) -> torch.Tensor:
    encoder.eval().to(device)
    norm = preprocessor().to(device)
    loader = torch.utils.data.DataLoader(ImageSet(samples, size), batch_size=batch_size, num_workers=0)
    chunks = [encoder(norm({"inputs": batch["inputs"]})["inputs"]).float().cpu() for batch in loader]
    return torch.cat(chunks)


class FeatureCache:
    """Frozen features per (checkpoint, data content, image size): computed once, kept in memory
    and on disk (safetensors, written atomically) for later runs."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        self.computed = 0

    def get(self, ref, seed: int, data: ClassificationDataset, protocol: Protocol, device) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file, save_file

        # Random init differs per seed; a pretrained checkpoint's frozen features do not.
        owner = f"{ref.id}-seed{seed}" if ref.path is None else ref.id
        key = f"{owner}/{data.name}-{data.meta['content_hash'][:16]}-{protocol.image_size}px"
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"{key}.safetensors" if self.folder else None
        if path is not None and path.is_file():
            feats = load_file(str(path))
        else:
            encoder = build_encoder(ref, seed)
            feats = {s: extract_features(encoder, data.split(s), protocol.image_size, protocol.batch_size, device)
                     for s in SPLITS}
            self.computed += 1
            if path is not None:
                with atomic_path(path) as tmp:
                    save_file(feats, str(tmp))
        self.memory[key] = feats
        return feats


# ----------------------------------------------------------------------------- probes
def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def linear_probe(feats: dict, labels: dict, classes: list[str], protocol: Protocol, seed: int) -> dict:
    """Train one FC layer on cached features (Adam, the paper's lr and batch); pick lr, weight
    decay and epoch on val. Returns {"val": result, "test": result, "selected": {...}} ("test"
    only when test features are given)."""
    scored = [s for s in ("val", "test") if s in feats]  # a sweep passes no test features
    x_train, *x_scored = _standardise(feats["train"], *(feats[s] for s in scored))
    x_val, y_train = x_scored[0], labels["train"]
    best = (-1.0, math.inf, None, None)
    for lr_factor in LINEAR_LR_FACTORS:
        for wd in sorted({*LINEAR_WEIGHT_DECAYS, protocol.weight_decay}):
            gen = torch.Generator().manual_seed(derived_seed(seed, 1))
            head = nn.Linear(x_train.shape[1], len(classes))
            with torch.no_grad():
                head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
                head.bias.zero_()
            optim = torch.optim.Adam(head.parameters(), lr=protocol.lr * lr_factor, weight_decay=wd)
            for epoch in range(protocol.epochs):
                for idx in torch.randperm(len(y_train), generator=gen).split(protocol.batch_size):
                    optim.zero_grad()
                    F.cross_entropy(head(x_train[idx]), y_train[idx]).backward()
                    optim.step()
                with torch.no_grad():
                    logits = head(x_val)
                    acc = float((logits.argmax(1) == labels["val"]).float().mean())
                    loss = float(F.cross_entropy(logits, labels["val"]))
                if acc > best[0] or (acc == best[0] and loss < best[1]):
                    best = (acc, loss, copy.deepcopy(head.state_dict()),
                            {"lr": protocol.lr * lr_factor, "weight_decay": wd, "epoch": epoch + 1})
    head.load_state_dict(best[2])
    with torch.no_grad():
        out = {s: classification_metrics(head(x).softmax(1), labels[s], classes) for s, x in zip(scored, x_scored)}
    out["selected"] = best[3]
    return out


def knn_probe(feats: dict, labels: dict, classes: list[str]) -> dict:
    """Cosine-similarity kNN with exp(sim / 0.07) weighted votes; k chosen on val."""
    train = F.normalize(feats["train"], dim=1)

    def votes(x: torch.Tensor, k: int) -> torch.Tensor:
        sims, idx = (F.normalize(x, dim=1) @ train.T).topk(min(k, len(train)), dim=1)
        onehot = F.one_hot(labels["train"][idx], len(classes)).float()
        scores = (onehot * (sims / KNN_TEMPERATURE).exp().unsqueeze(-1)).sum(1)
        return scores / scores.sum(1, keepdim=True)

    best_k = max(KNN_KS, key=lambda k: (float((votes(feats["val"], k).argmax(1) == labels["val"]).float().mean()), -k))
    out = {s: classification_metrics(votes(feats[s], best_k), labels[s], classes)
           for s in ("val", "test") if s in feats}
    out["selected"] = {"k": best_k, "temperature": KNN_TEMPERATURE}
    return out


# ----------------------------------------------------------------------------- fine-tune
class Classifier(BaseModel):
    """Backbone + one FC layer (LVM-Med's '1-fcn' head)."""

    def __init__(self, backbone: nn.Module, width: int, num_classes: int):
        super().__init__(data_preprocessor=preprocessor())
        self.backbone, self.head = backbone, nn.Linear(width, num_classes)

    def forward(self, inputs, data_samples=None, mode: str = "tensor"):
        logits = self.head(self.backbone(inputs))
        if mode == "loss":
            return {"loss": F.cross_entropy(logits, data_samples)}
        if mode == "predict":
            return list(zip(logits.softmax(1).float().cpu(), data_samples.cpu()))
        return logits


class ClassificationMetric(BaseMetric):
    """mmengine metric: keeps the full result of the last evaluation in `self.last`."""

    default_prefix = ""  # plain metric keys ("accuracy"): the best-epoch hook looks them up

    def __init__(self, classes: list[str]):
        super().__init__()
        self.classes, self.last = classes, None

    def process(self, data_batch, data_samples) -> None:
        self.results.extend(data_samples)

    def compute_metrics(self, results: list) -> dict:
        probs = torch.stack([p for p, _ in results])
        labels = torch.stack([t for _, t in results])
        self.last = classification_metrics(probs, labels, self.classes)
        return {"accuracy": self.last["value"]}


def finetune(ref, data: ClassificationDataset, train: list[Sample], protocol: Protocol, seed: int,
             work_root: Path) -> dict:
    """Fine-tune backbone + FC with mmengine's Runner; test the best-validation epoch."""
    model = Classifier(build_encoder(ref, seed), BACKBONES[ref.backbone][1], len(data.classes))
    out = fit_best_on_val(
        model, ImageSet(train, protocol.image_size, flip=True), ImageSet(data.split("val"), protocol.image_size),
        ImageSet(data.split("test"), protocol.image_size), val_metric=ClassificationMetric(data.classes),
        test_metric=ClassificationMetric(data.classes), key="accuracy", epochs=protocol.epochs, lr=protocol.lr,
        weight_decay=protocol.weight_decay, batch_size=protocol.batch_size, seed=seed, work_root=work_root)
    out.pop("trained")
    return out


# ----------------------------------------------------------------------------- paper_linear
#: LVM-Med's per-dataset image transforms for its frozen protocol (train_R50_classification.py,
#: train_R50): brain = Resize((224, 224)) only; fgadr = RandomCrop(480) of the image at its own size
#: (FGADR's 1280 px), RandomHorizontalFlip(0.5), RandomAutocontrast(0.2). The same Compose is the
#: ImageFolder transform of its train, val (a split of train) and test sets. `crop_scale`: the image
#: is first resized to crop_scale * image_size (1280 px for the paper's 480 crop: FGADR's native
#: size, so a no-op on the real data), then cropped to image_size; the quick profile keeps the ratio.
PAPER_LINEAR_TRANSFORMS = {
    "brain_tumor": {"crop_scale": None, "flip": 0.0, "autocontrast": 0.0, "eval_too": True,
                    "repo": "transforms.Resize((224, 224))"},
    "fgadr": {"crop_scale": 1280 / 480, "flip": 0.5, "autocontrast": 0.2, "eval_too": True,
              "repo": "transforms.RandomCrop((480, 480)), RandomHorizontalFlip(p=0.5), RandomAutocontrast(p=0.2)"},
}


class PaperLinearImageSet(torch.utils.data.Dataset):
    """Images through LVM-Med's frozen-protocol transforms (PAPER_LINEAR_TRANSFORMS[dataset]).

    Training images draw from the global RNG (seeded by the Runner); val/test images (`eval_seed`
    given) from a generator seeded per (seed, image), so their random crops repeat across runs."""

    def __init__(self, samples: list[Sample], size: int, recipe: dict, eval_seed: int | None = None):
        self.samples, self.size, self.recipe, self.eval_seed = samples, size, recipe, eval_seed

    def __len__(self) -> int:
        return len(self.samples)

    def _transform(self, rgb: Image.Image) -> Image.Image:
        from torchvision.transforms import functional as TF

        scale = self.recipe["crop_scale"]
        if scale is None:
            return rgb.resize((self.size, self.size), Image.BILINEAR)
        full = round(self.size * scale)
        rgb = rgb.resize((full, full), Image.BILINEAR) if rgb.size != (full, full) else rgb
        top, left = (int(v) for v in torch.randint(0, full - self.size + 1, (2,)))
        rgb = TF.crop(rgb, top, left, self.size, self.size)
        if torch.rand(()) < self.recipe["flip"]:
            rgb = TF.hflip(rgb)
        if torch.rand(()) < self.recipe["autocontrast"]:
            rgb = TF.autocontrast(rgb)
        return rgb

    def __getitem__(self, index: int) -> dict:
        rgb = load_rgb(self.samples[index].path)
        if self.eval_seed is None:
            rgb = self._transform(rgb)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derived_seed(self.eval_seed, 3, index))
                rgb = self._transform(rgb)
        image = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
        return {"inputs": image, "data_samples": self.samples[index].label}


def freeze_encoder(model: "Classifier") -> None:
    """LVM-Med's frozen encoder: requires_grad False on every backbone parameter; the module is
    left to the trainer's train()/eval() switching, so BN running statistics still update."""
    for param in model.backbone.parameters():
        param.requires_grad = False


def paper_linear(ref, data: ClassificationDataset, train: list[Sample], protocol: Protocol, seed: int,
                 work_root: Path) -> dict:
    """LVM-Med's frozen linear protocol (module docstring), through mmengine's Runner."""
    if data.name not in PAPER_LINEAR_TRANSFORMS:
        raise ValueError(f"paper_linear: LVM-Med's frozen protocol is defined for "
                         f"{', '.join(PAPER_LINEAR_TRANSFORMS)}, not {data.name}")
    recipe = PAPER_LINEAR_TRANSFORMS[data.name]
    model = Classifier(build_encoder(ref, seed), BACKBONES[ref.backbone][1], len(data.classes))
    freeze_encoder(model)
    size = protocol.image_size
    eval_seed = seed if recipe["eval_too"] else None
    out = fit_best_on_val(
        model, PaperLinearImageSet(train, size, recipe),
        PaperLinearImageSet(data.split("val"), size, recipe, eval_seed=derived_seed(seed, 4)),
        PaperLinearImageSet(data.split("test"), size, recipe, eval_seed=derived_seed(seed, 5)),
        val_metric=ClassificationMetric(data.classes), test_metric=ClassificationMetric(data.classes),
        key="accuracy", epochs=protocol.epochs, lr=protocol.lr, weight_decay=protocol.weight_decay,
        batch_size=protocol.batch_size, seed=seed, work_root=work_root, clip_grad=None, last_tie=True)
    out.pop("trained")
    out["selected"]["recipe"] = {
        "encoder": "frozen: requires_grad False on every backbone parameter, BN in train() mode while training "
                   "(running statistics updated), eval() mode for val/test",
        "head": "1 FC", "optimizer": "adam", "clip_grad": None, "best_val_ties": "last epoch (>=)",
        "transforms": {k: recipe[k] for k in ("crop_scale", "flip", "autocontrast")},
        "eval_transforms": "the train transforms, seeded per image" if recipe["eval_too"] else "none",
        "repo_transforms": recipe["repo"],
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    return out


# ----------------------------------------------------------------------------- one job
def run_job(task: Task, protocol: Protocol, data: ClassificationDataset, ref, *, label_fraction: float, seed: int,
            cache: FeatureCache, device: torch.device, work_root: Path) -> dict:
    """One evaluation: returns {"val": ..., "test": ..., "selected": ..., "n_train": ...}."""
    train_labels = data.labels("train")
    keep = label_fraction_subset(train_labels, label_fraction, seed)
    train = [data.split("train")[i] for i in keep]
    if protocol.name == "finetune":
        out = finetune(ref, data, train, protocol, seed, work_root)
    elif protocol.name == "paper_linear":
        out = paper_linear(ref, data, train, protocol, seed, work_root)
    else:
        feats = cache.get(ref, seed, data, protocol, device)
        feats = {**feats, "train": feats["train"][torch.as_tensor(keep)]}
        labels = {"train": torch.as_tensor(train_labels[keep]), "val": torch.as_tensor(data.labels("val")),
                  "test": torch.as_tensor(data.labels("test"))}
        if protocol.name == "linear":
            out = linear_probe(feats, labels, data.classes, protocol, seed)
        else:
            out = knn_probe(feats, labels, data.classes)
    for split in ("val", "test"):  # every protocol scores the split in sample order: name the cases
        for case, sample in zip(out[split]["per_case"], data.split(split), strict=True):
            case["id"] = sample.id
    out["n_train"] = len(train)
    return out


def validation_score(encoder: nn.Module, data: ClassificationDataset, protocol: Protocol, seed: int,
                     device: torch.device) -> float:
    """A sweep's score of `encoder` on one task: the kNN or linear probe fitted on train, selected
    and scored on val. Reads only the train and val images, never test."""
    feats = {s: extract_features(encoder, data.split(s), protocol.image_size, protocol.batch_size, device)
             for s in ("train", "val")}
    labels = {s: torch.as_tensor(data.labels(s)) for s in ("train", "val")}
    if protocol.name == "linear":
        return linear_probe(feats, labels, data.classes, protocol, seed)["val"]["value"]
    return knn_probe(feats, labels, data.classes)["val"]["value"]
