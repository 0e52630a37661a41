"""The 15 downstream tasks of LVM-Med (NeurIPS 2023), as docs/tasks.md describes them.

One entry per task: its family (which evaluation module runs it), dataset adapter, classes,
metrics exactly as the paper computes them, protocols and their parameters. `paper` holds the
published protocol (LVM-Med Tables 7 and 8, App. B, and its repo configs where the paper is
silent); `quick` is a CPU smoke setting (ResNet-18, 64 px, few epochs).

`in_paper=False` marks an extra task the harness adds (BCCD): listed, run when named, never counted
among the 15 (`--all-tasks` runs the 15).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from medssl_bench.downstream.families import FAMILIES, get_family
from medssl_bench.harness.errors import UserError

PROFILES = ("quick", "paper")


@dataclass(frozen=True)
class Protocol:
    """How one task is trained and scored under one protocol (linear / knn / finetune)."""

    name: str
    image_size: int
    lr: float
    epochs: int
    batch_size: int
    weight_decay: float = 0.0
    backbone: str = "resnet50"
    optimizer: str = "adam"
    source: str = ""
    rois_per_image: int | None = None  # detection: RoIs sampled per training image for the box head (mmdet: 512)
    proposals: int | None = None       # detection: RPN proposals kept per image, training and test (mmdet: 1000)
    #: 3D segmentation: True = trained on the scored target only (target vs background, binary, as the
    #: 2D tasks; the quick profile), False = on all the dataset's classes (the paper); None = n/a
    target_only: bool | None = None
    #: detection paper_finetune (mmdet's R50 recipe, LVM-Med's): backbone stages fixed (1: stem + layer1;
    #: None = -1, none), BatchNorm kept in eval mode while training (None = False), and the epoch tested
    #: ("last"; None = the best-validation epoch). None = bench's default, not recorded.
    frozen_stages: int | None = None
    norm_eval: bool | None = None
    test_epoch: str | None = None
    #: segmentation: the Dice term beside cross-entropy, "batch" (LVM-Med's: per class over the whole
    #: batch, background included) or "per_image_foreground" (mmseg's per-image Dice without background,
    #: bench before 2026-12-07); None = n/a
    dice_loss: str | None = None
    #: 3D quick profile (target_only): cross-entropy weight of the target class against background's 1.
    #: The synthetic MM-WHS left atrium (~0.5 % of the training pixels) stayed below 0.5 probability for
    #: 8 epochs unweighted, so nothing was predicted (benchmarks/README.md); None = unweighted, the paper
    target_weight: float | None = None

    def as_dict(self) -> dict:
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for optional in ("target_only", "frozen_stages", "norm_eval", "test_epoch", "dice_loss", "target_weight"):
            if fields[optional] is None:  # only the protocols that set them have (and record) them
                del fields[optional]
        return fields


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    family: str                      # a key of downstream.families.FAMILIES
    dataset: str
    classes: int
    metric: str                      # the paper's metric: what the leaderboard ranks by
    metrics: tuple[str, ...]
    paper: dict[str, Protocol]        # protocol name -> paper parameters
    reported: dict[str, float] = field(default_factory=dict)  # LVM-Med R50, per protocol (docs/tasks.md)
    note: str = ""
    optional: tuple[str, ...] = ()    # protocols run only when named with --protocol
    train_domain: str | None = None   # multi-site data: the site trained (and validated) on
    test_domain: str | None = None    # ... and the site tested on
    in_paper: bool = True             # one of LVM-Med's 15 tasks (False: an extra the harness adds)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"task {self.name}: unknown family {self.family!r}; known: {', '.join(FAMILIES)}")

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self.paper)

    @property
    def default_protocols(self) -> tuple[str, ...]:
        return tuple(p for p in self.paper if p not in self.optional)

    def protocol(self, name: str, profile: str) -> Protocol:
        if name not in self.paper:
            raise UserError(f"task '{self.name}' has no '{name}' protocol; it has: {', '.join(self.paper)}")
        if profile not in PROFILES:
            raise UserError(f"unknown profile '{profile}'; choose one of: {', '.join(PROFILES)}")
        paper = self.paper[name]
        return paper if profile == "paper" else get_family(self.family).quick_protocol(paper)


def _classifier(name, lr, wd, batch, size, epochs, source) -> Protocol:
    """A classification protocol: one FC layer on pooled features (LVM-Med Table 5)."""
    return Protocol(name, size, lr, epochs, batch, wd, source=source)


CLS_METRICS = ("accuracy", "macro_f1", "auroc")
SEG_2D_SOURCE = "LVM-Med Table 7 (U-Net, Adam, Dice+CE)"
SEG_3D_SOURCE = "LVM-Med Table 8 (slice-wise U-Net, Adam)"
DETECTION_SOURCE = "LVM-Med App. B + repo command.sh (Faster R-CNN R50-FPN, Adam, clip 1)"
PAPER_DETECTION_SOURCE = ("LVM-Med's mmdet recipe, repo object_detection/configs/_base_/models/faster_rcnn_r50_fpn.py "
                          "(backbone frozen_stages=1: stem + layer1 fixed; norm_eval=True: BatchNorm statistics "
                          "fixed) + command.sh (last epoch tested); optimiser, lr, epochs, batch as bench's finetune")


def _paper_detection(finetune: Protocol) -> Protocol:
    """LVM-Med's own detection recipe beside bench's `finetune`: same schedule, mmdet's frozen stem +
    layer1 and frozen BatchNorm, the last epoch tested (docs/protocols.md)."""
    return replace(finetune, name="paper_finetune", source=PAPER_DETECTION_SOURCE, frozen_stages=1, norm_eval=True,
                   test_epoch="last")
PROSTATE_SOURCE = "LVM-Med Table 8 (train BMC, slice-wise, Adam)"
PAPER_LINEAR_SOURCE = ("LVM-Med's frozen linear protocol, repo classification_R50/train_R50_classification.py + "
                       "dataloader/yaml_data/{cfg} (encoder requires_grad False, BN in train mode, 1 FC, Adam; {recipe}; "
                       "best-val epoch tested): the protocol of the paper's reported linear number")


def _seg_task(name, title, family, dataset, classes, size, lr, epochs, batch, source, reported, note="",
              test_domain=None) -> Task:
    """A segmentation task: fine-tuned U-Net, scored by Dice (2D, OOD) or per-volume IoU (3D), as the paper;
    `frozen` (decoder trained on a fixed encoder) and `genesis_unet` (the checkpoint's pretrained Models Genesis
    decoder, downstream.segmentation.genesis_head) run when asked for."""
    metrics = {"segmentation_3d": ("iou_3d", "dice_3d"), "ood_segmentation": ("dice", "dice_at_size", "dice_3d", "iou")}
    metric, *_ = metrics.get(family, ("dice", "dice_at_size", "iou"))
    finetune = Protocol("finetune", size, lr, epochs, batch, source=source,
                        target_only=False if family == "segmentation_3d" else None, dice_loss="batch")
    frozen = replace(finetune, name="frozen", source=f"{source}; encoder frozen, decoder trained (not in the paper)")
    genesis = replace(finetune, name="genesis_unet", source=f"{source}; decoder: the checkpoint's pretrained "
                      "Models Genesis decoder, fine-tuned with the encoder (Genesis' transfer; needs a checkpoint "
                      "that exports one)")
    return Task(name, title, family, dataset, classes, metric, metrics.get(family, ("dice", "dice_at_size", "iou")),
                {"finetune": finetune, "frozen": frozen, "genesis_unet": genesis},
                {"finetune": reported}, note, optional=("frozen", "genesis_unet"),
                train_domain="BMC" if test_domain else None, test_domain=test_domain)


_VINDR_FINETUNE = Protocol("finetune", 512, 1e-4, 40, 16, 1e-4, source=DETECTION_SOURCE, rois_per_image=512,
                           proposals=1000)
_KVASIR_FINETUNE = Protocol("finetune", 512, 2.5e-4, 40, 8, 1e-4, source=DETECTION_SOURCE, rois_per_image=512,
                            proposals=1000)

TASKS: dict[str, Task] = {t.name: t for t in [
    _seg_task("isic2018", "Skin lesion segmentation (ISIC-2018)", "segmentation_2d", "isic2018", 2, 512, 1e-4, 35, 16,
              SEG_2D_SOURCE, 87.76),
    _seg_task("jsrt", "Lung segmentation (JSRT + SCR)", "segmentation_2d", "jsrt", 2, 224, 1e-3, 50, 32,
              SEG_2D_SOURCE, 95.13),
    _seg_task("kvasir_seg", "Polyp segmentation (Kvasir-SEG)", "segmentation_2d", "kvasir_seg", 2, 224, 1e-3, 35, 64,
              SEG_2D_SOURCE, 86.76),
    _seg_task("drive", "Retinal vessel segmentation (DRIVE)", "segmentation_2d", "drive", 2, 224, 1e-3, 50, 16,
              SEG_2D_SOURCE, 66.97),
    _seg_task("busi", "Breast lesion segmentation (BUSI/BUID)", "segmentation_2d", "busi", 2, 256, 1e-4, 50, 8,
              SEG_2D_SOURCE, 78.65),
    _seg_task("brats", "Brain tumour segmentation (BraTS 2018)", "segmentation_3d", "brats", 4, 224, 1.5e-3, 20, 128,
              SEG_3D_SOURCE, 73.58),
    _seg_task("mmwhs_ct", "Heart (left atrium) segmentation (MMWHS-CT)", "segmentation_3d", "mmwhs_ct", 8,
              224, 1e-3, 20, 64, SEG_3D_SOURCE, 84.91,
              note="the paper's reported target is the left atrium (label 420); all structures as an option"),
    _seg_task("mmwhs_mri", "Heart (left atrium) segmentation (MMWHS-MRI)", "segmentation_3d", "mmwhs_mri", 8,
              224, 1.5e-3, 30, 64, SEG_3D_SOURCE, 78.59),
    Task("fgadr", "Diabetic retinopathy grading (FGADR, 5 grades)", "classification", "fgadr", 5, "accuracy",
         CLS_METRICS, {
             "linear": _classifier("linear", 1e-3, 5e-3, 32, 512, 20, "LVM-Med Table 5 / App. B (1 FC, Adam, lr 1e-3); repo config: batch 32, wd 5e-3, 20 epochs"),
             "knn": _classifier("knn", 0.0, 0.0, 32, 512, 0, "weighted kNN on frozen features (not in the paper; a standard SSL probe)"),
             "finetune": _classifier("finetune", 1e-4, 5e-3, 32, 512, 30, "LVM-Med Table 5 + repo config (1 FC, Adam lr 1e-4, batch 32, wd 5e-3, 30 epochs)"),
             "paper_linear": _classifier("paper_linear", 5e-4, 5e-3, 32, 480, 20, PAPER_LINEAR_SOURCE.format(
                 cfg="fgadr_endtoend_R50_frozen_1_fcn.yml", recipe="lr 5e-4, batch 32, 20 epochs, valid_rate 0.2; "
                 "code: Adam wd 0.005, RandomCrop 480 + HorizontalFlip 0.5 + RandomAutocontrast 0.2 on train, val and test")),
         }, {"paper_linear": 68.33, "finetune": 68.32}, optional=("paper_linear",)),
    Task("brain_tumor", "Brain tumour classification (Kaggle Brain Tumor MRI, 4 classes)", "classification",
         "brain_tumor", 4, "accuracy", CLS_METRICS, {
             "linear": _classifier("linear", 5e-4, 0.0, 64, 224, 20, "LVM-Med Table 5 / App. B (1 FC, Adam lr 5e-4, batch 64, 20 epochs)"),
             "knn": _classifier("knn", 0.0, 0.0, 64, 224, 0, "weighted kNN on frozen features (not in the paper; a standard SSL probe)"),
             "finetune": _classifier("finetune", 5e-4, 0.0, 64, 224, 30, "LVM-Med Table 5 + repo config (1 FC, Adam lr 5e-4, batch 64, 30 epochs)"),
             "paper_linear": _classifier("paper_linear", 5e-4, 0.0, 64, 224, 20, PAPER_LINEAR_SOURCE.format(
                 cfg="brain_endtoend_R50_frozen_1_fcn.yml", recipe="lr 5e-4, batch 64, 20 epochs, valid_rate 0.3; "
                 "code: Adam wd 0, Resize 224, no augmentation")),
         }, {"paper_linear": 66.33, "finetune": 76.82}, optional=("paper_linear",)),
    Task("vindr_cxr", "Lung lesion detection (VinDr-CXR, 14 classes)", "detection", "vindr_cxr", 14, "ap50",
         ("ap50", "map"),
         {"finetune": _VINDR_FINETUNE,
          "paper_finetune": _paper_detection(_VINDR_FINETUNE)}, optional=("paper_finetune",)),
    Task("kvasir_det", "Polyp detection (Kvasir)", "detection", "kvasir_det", 1, "ap50", ("ap50", "map"),
         {"finetune": _KVASIR_FINETUNE,
          "paper_finetune": _paper_detection(_KVASIR_FINETUNE)}, optional=("paper_finetune",)),
    Task("bccd", "Blood cell detection (BCCD: WBC, RBC, platelets)", "detection", "bccd", 3, "ap50", ("ap50", "map"),
         {"finetune": Protocol("finetune", 512, 2.5e-4, 40, 8, 1e-4, rois_per_image=512, proposals=1000,
                               source="not in LVM-Med: its Kvasir detection recipe "
                                      "(Faster R-CNN R50-FPN, Adam, clip 1)")},
         note="an extra task, not one of the paper's 15: small, public (MIT), three cell types", in_paper=False),
    *(_seg_task(f"prostate_{site.lower()}", f"Prostate segmentation, out of distribution: train BMC, test {site}",
                "ood_segmentation", "prostate", 2, 224, 1e-3, 30, 64, PROSTATE_SOURCE, reported, test_domain=site)
      for site, reported in (("RUNMC", 62.48), ("BIDMC", 56.76), ("HK", 52.78))),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; `bench tasks` lists them: {', '.join(TASKS)}")
    return TASKS[name]


def select_tasks(names: list[str], all_tasks: bool) -> list[Task]:
    """The tasks to run: the named ones, or with --all-tasks the paper's 15 (extras run when named)."""
    if all_tasks:
        return [t for t in TASKS.values() if t.in_paper]
    if not names:
        raise UserError("name a task with --task NAME (repeatable) or use --all-tasks; `bench tasks` lists them")
    return [get_task(n) for n in names]


@dataclass(frozen=True)
class PaperComparison:
    """What a result must share with the paper's reported number (`Task.reported`, per protocol) to be
    shown beside it: the metric the paper's number is, and the split it was computed on."""

    metric: str                 # e.g. dice_at_size: Dice with the truth nearest-resized to the network size
    split: str | None = None    # None: bench's default split is LVM-Med's; a file name: LVM-Med published it,
    #                             prepare with --split-file FILE; "unpublished": LVM-Med never published it
    note: str = ""


_UNPUBLISHED = "unpublished"
# docs/protocols.md gives the evidence for every entry (LVM-Med repo files_split/, dataloader/, evaluate.py).
PAPER_COMPARISON: dict[str, PaperComparison] = {
    "isic2018": PaperComparison("dice_at_size", _UNPUBLISHED),
    "jsrt": PaperComparison("dice_at_size", _UNPUBLISHED),
    "kvasir_seg": PaperComparison("dice_at_size", "Kvasir.json"),
    "drive": PaperComparison("dice_at_size", _UNPUBLISHED),
    "busi": PaperComparison("dice_at_size", "BUID.json"),
    "brats": PaperComparison("iou_3d", _UNPUBLISHED, "the paper's BraTS target is assumed to be the whole tumour"),
    "mmwhs_ct": PaperComparison("iou_3d"),    # the published volume ids are bench's default split
    "mmwhs_mri": PaperComparison("iou_3d"),
    "fgadr": PaperComparison("accuracy"),     # ids <= 1500 train, as LVM-Med's pickle
    "brain_tumor": PaperComparison("accuracy"),  # the release's own Testing folder
    "vindr_cxr": PaperComparison("ap50_positives", None, "LVM-Med tests on images with findings only"),
    "kvasir_det": PaperComparison("ap50", _UNPUBLISHED),
    **{f"prostate_{site}": PaperComparison("dice", _UNPUBLISHED, "LVM-Med's prostate evaluation is unpublished: "
                                           "per-slice Dice assumed") for site in ("runmc", "bidmc", "hk")},
}
