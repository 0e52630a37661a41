"""Classification evaluation: metrics against hand-computed values, probes, and `run_job`."""
from __future__ import annotations

import math

import pytest
import torch

from medssl_bench.downstream.classification import classification_metrics, knn_probe, linear_probe
from medssl_bench.downstream.registry import TASKS, get_task, select_tasks

CLASSES = ["a", "b", "c"]


def test_metrics_equal_hand_computed_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1],
                          [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = classification_metrics(probs, labels, CLASSES, ids=[f"s{i}" for i in range(6)])
    # predictions 0 1 1 1 2 0: four of six right
    assert out["value"] == pytest.approx(4 / 6)
    # per-class F1: a: P 1/2 R 1/2 -> 0.5; b: P 2/3 R 1 -> 0.8; c: P 1 R 1/2 -> 2/3
    assert out["metrics"]["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # one-vs-rest AUROC: a 7/8 pairs ordered; b 8/8; c 8/8
    assert out["per_class"]["a"]["auroc"] == pytest.approx(7 / 8)
    assert out["metrics"]["auroc"] == pytest.approx((7 / 8 + 1 + 1) / 3)
    assert out["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert out["per_case"][1] == {"id": "s1", "label": 0, "pred": 1}


def test_auroc_averages_only_classes_it_is_defined_for():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    labels = torch.tensor([0, 1, 1])  # class c never occurs: its AUROC is undefined
    out = classification_metrics(probs, labels, CLASSES)
    assert out["per_class"]["c"]["auroc"] is None
    # a: positive 0.6 above negatives 0.2, 0.4 -> 1; b: positives 0.7, 0.5 above negative 0.3 -> 1
    assert out["metrics"]["auroc"] == pytest.approx(1.0)
    single = classification_metrics(probs[:1], labels[:1], CLASSES)
    assert single["metrics"]["auroc"] is None


def _splits(n_per_class: int = 20, noise: float = 1.5):
    """Three Gaussian clusters in 32 dimensions; train/val/test drawn around the same centres."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 32, generator=gen) * 2
    labels = torch.arange(3).repeat_interleave(n_per_class)
    feats = {s: centres[labels] + noise * torch.randn(len(labels), 32, generator=gen) for s in ("train", "val", "test")}
    return feats, {s: labels.clone() for s in feats}


def test_linear_probe_learns_and_selects_on_val_only():
    protocol = get_task("brain_tumor").protocol("linear", "quick")
    feats, labels = _splits()
    out = linear_probe(feats, labels, CLASSES, protocol, seed=0)
    assert out["test"]["value"] > 0.9
    # Scrambling the test labels changes the test score but not what was selected on val.
    scrambled = {**labels, "test": labels["test"].roll(7)}
    again = linear_probe(feats, scrambled, CLASSES, protocol, seed=0)
    assert again["selected"] == out["selected"]
    assert again["val"]["value"] == out["val"]["value"]
    assert again["test"]["value"] < out["test"]["value"]


def test_knn_probe_on_separable_features():
    feats, labels = _splits()
    out = knn_probe(feats, labels, CLASSES)
    assert out["test"]["value"] > 0.9
    assert out["selected"]["k"] in (5, 10, 20)
    # probabilities are vote shares: rows sum to one, so AUROC is defined and high
    assert out["test"]["metrics"]["auroc"] > 0.95


def test_registry_has_the_fifteen_tasks_of_the_paper():
    paper = [t for t in TASKS.values() if t.in_paper]
    assert len(paper) == 15 and [t.name for t in TASKS.values() if not t.in_paper] == ["bccd"]
    assert select_tasks([], all_tasks=True) == paper  # --all-tasks: the 15, not the extras
    families = [t.family for t in paper]
    assert families.count("segmentation_2d") == 5 and families.count("segmentation_3d") == 3
    assert families.count("classification") == 2 and families.count("detection") == 2
    assert families.count("ood_segmentation") == 3
    fgadr = get_task("fgadr")
    assert fgadr.protocols == ("linear", "knn", "finetune", "paper_linear") and fgadr.metric == "accuracy"
    assert fgadr.default_protocols == ("linear", "knn", "finetune")  # paper_linear runs when named
    assert fgadr.protocol("linear", "paper").lr == 1e-3 and fgadr.protocol("finetune", "paper").epochs == 30
    assert get_task("brain_tumor").protocol("linear", "quick").image_size == 64
    assert math.isclose(get_task("isic2018").reported["finetune"], 87.76)
