"""Ark on multi-label data with uncertain labels (issue 20, item 5): the label policies on a hand-made row, the
masked BCE against a hand computation, the canonical target matrix and its malformed files, and a tiny Ark
pretraining on the CheXpert-layout phantom set (cxr_findings) through `bench data synth / prepare / pretrain`."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from medssl_bench.downstream.datasets import cxr_findings
from medssl_bench.downstream.datasets.canonical import load_classification_dataset
from medssl_bench.harness.app.cli import main
from medssl_bench.harness.app.labelled import IGNORE, apply_label_policy, load_labelled
from medssl_bench.methods.ark import ark_terms
from tests.dataset_helpers import raises
from tests.pretrain_helpers import TINY

NAN = float("nan")
RAW = np.array([[1, 0, -1], [-1, NAN, 0]], dtype=np.float32)  # positive, negative, uncertain / uncertain, blank


@pytest.mark.parametrize("uncertain, missing, expected", [
    ("ones", "zeros", [[1, 0, 1], [1, 0, 0]]),
    ("zeros", "zeros", [[1, 0, 0], [0, 0, 0]]),
    ("ignore", "zeros", [[1, 0, IGNORE], [IGNORE, 0, 0]]),
    ("ones", "ignore", [[1, 0, 1], [1, IGNORE, 0]]),
    ("ignore", "ignore", [[1, 0, IGNORE], [IGNORE, IGNORE, 0]]),
])
def test_policies_on_a_hand_made_row(uncertain, missing, expected):
    out = apply_label_policy(RAW, uncertain, missing, np.random.default_rng(0))
    assert out.dtype == np.float32 and np.array_equal(out, np.array(expected, dtype=np.float32))


@pytest.mark.parametrize("policy, low, high", [("lsr_ones", 0.55, 0.85), ("lsr_zeros", 0.0, 0.3)])
def test_label_smoothing_draws_once_per_uncertain_label_in_ark_s_range(policy, low, high):
    raw = np.full((50, 4), -1.0, dtype=np.float32)
    raw[0] = [1, 0, NAN, -1]
    out = apply_label_policy(raw, policy, "zeros", np.random.default_rng(1))
    assert list(out[0, :3]) == [1, 0, 0]
    smoothed = out[raw == -1]
    assert low <= smoothed.min() and smoothed.max() <= high and len(np.unique(smoothed)) == len(smoothed)
    assert smoothed.max() - smoothed.min() > 0.8 * (high - low)  # uniform over the range, not a constant
    again = apply_label_policy(raw, policy, "zeros", np.random.default_rng(1))
    assert np.array_equal(out, again)  # seeded: a rerun trains on the same targets


def test_masked_bce_equals_a_hand_computation_on_a_2x3_matrix():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]])
    bce = lambda x, y: max(x, 0) - x * y + math.log(1 + math.exp(-abs(x)))  # noqa: E731  (stable BCE-with-logits)
    z = torch.zeros(2, 4)
    for uncertain, missing in (("ignore", "ignore"), ("ones", "zeros"), ("ignore", "zeros")):
        target = apply_label_policy(RAW, uncertain, missing, np.random.default_rng(0))
        kept = [(i, j) for i in range(2) for j in range(3) if target[i, j] >= 0]
        by_hand = sum(bce(float(logits[i, j]), float(target[i, j])) for i, j in kept) / len(kept)
        loss, mse = ark_terms(logits, torch.from_numpy(target), z, z)
        assert loss.item() == pytest.approx(by_hand, rel=1e-6) and mse.item() == 0.0
    # ignore/ignore keeps 3 of 6 labels: (2, 1), (-1, 0), (-2, 0); "ones" keeps all six, as Ark's mean BCE
    assert len([t for t in apply_label_policy(RAW, "ignore", "ignore", None).ravel() if t >= 0]) == 3
    full = torch.from_numpy(apply_label_policy(RAW, "ones", "zeros", None))
    official = torch.nn.BCEWithLogitsLoss()(logits, full)
    assert ark_terms(logits, full, z, z)[0].item() == pytest.approx(official.item(), rel=1e-6)
    everything_masked = torch.full((2, 3), IGNORE)
    logits.requires_grad_(True)
    loss, _ = ark_terms(logits, everything_masked, z, z)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """cxr_findings (synthetic, 48 films of 32 px) through the CLI: synth, then prepare into a data root."""
    root = tmp_path_factory.mktemp("cxr")
    assert main(["data", "synth", "cxr_findings", "--out", str(root / "raw"), "--n", "48", "--size", "32"]) == 0
    assert main(["data", "prepare", "cxr_findings", "--src", str(root / "raw"), "--out", str(root / "data"),
                 "--workspace", str(root / "ws")]) == 0
    return root / "data"


def test_prepared_set_keeps_the_labels_as_written(prepared):
    data = load_classification_dataset(prepared / "cxr_findings")
    assert data.task == "multilabel" and data.classes == cxr_findings.CLASSES and data.targets.shape == (48, 6)
    train = data.target_matrix("train")
    assert (train == -1).any() and np.isnan(train).any() and (train == 1).any() and (train == 0).any()
    meta = json.loads((prepared / "cxr_findings" / "dataset.json").read_text())
    assert meta["format"] == "bench-dataset/1" and meta["targets"]["form"] == "bench-targets/1"
    counts = meta["targets"]["counts"]["train"]["Cardiomegaly"]
    assert sum(counts.values()) == len(train) and counts["uncertain"] == int((train[:, 2] == -1).sum())
    raises(lambda: data.labels("train"), "multilabel", "no single class")  # single-label evaluation refuses it


@pytest.mark.parametrize("policy", ["ones", "zeros", "lsr_ones", "ignore"])
def test_each_policy_reaches_the_training_targets(prepared, policy):
    raw = load_classification_dataset(prepared / "cxr_findings").target_matrix("train")
    data = load_labelled(["cxr_findings"], prepared, 32, 8, "ark", {"uncertain_label": policy}, seed=0)
    targets, record = data.sets[0].targets, data.consumed[0]["label_policy"]
    assert record["uncertain_label"] == policy and record["missing_label"] == "zeros"
    assert record["uncertain"] == int((raw == -1).sum()) and record["blank"] == int(np.isnan(raw).sum())
    assert np.array_equal(targets[raw == 1], np.ones((raw == 1).sum())) and not targets[np.isnan(raw)].any()
    uncertain = targets[raw == -1]
    expected = {"ones": (uncertain == 1), "zeros": (uncertain == 0), "ignore": (uncertain == IGNORE),
                "lsr_ones": (uncertain >= 0.55) & (uncertain <= 0.85)}[policy]
    assert len(uncertain) and expected.all(), uncertain


def _damaged(prepared, tmp_path, edit):
    folder = shutil.copytree(prepared / "cxr_findings", tmp_path / "cxr_findings")
    edit(folder)
    return folder


def _edit_row(path, index, change):
    lines = path.read_text().splitlines()
    lines[index] = change(lines[index])
    path.write_text("\n".join(lines) + "\n")


def _rewrite(path, old, new, count=1):
    path.write_text(path.read_text().replace(old, new, count))


@pytest.mark.parametrize("case, edit, file, fragment", [
    ("columns", lambda f: _edit_row(f / "targets.csv", 1, lambda row: row.rsplit(",", 1)[0]), "targets.csv",
     "row 2: expected 7 columns, got 6"),
    ("cell value", lambda f: _edit_row(f / "targets.csv", 1, lambda row: row.rsplit(",", 1)[0] + ",0.5"),
     "targets.csv", "row 2: target '0.5' is not one of"),
    ("order", lambda f: _edit_row(f / "targets.csv", 1, lambda row: "someone_else" + row[row.index(","):]),
     "targets.csv", "'someone_else' where samples.csv has"),
    ("header", lambda f: _rewrite(f / "targets.csv", "Cardiomegaly", "Heart"), "targets.csv", "header"),
    ("missing file", lambda f: (f / "targets.csv").unlink(), "targets.csv", "missing"),
    ("rows", lambda f: _edit_row(f / "targets.csv", -1, lambda row: "") or _rewrite(f / "targets.csv", "\n\n", "\n"),
     "targets.csv", "target rows for"),
    ("form", lambda f: _rewrite(f / "dataset.json", "bench-targets/1", "bench-targets/9"), "dataset.json",
     "bench-targets/9"),
    ("label cell", lambda f: _rewrite(f / "samples.csv", ",,train", ",3,train"), "samples.csv", "leave it empty"),
])
def test_a_malformed_target_matrix_is_one_line_naming_the_file(prepared, tmp_path, case, edit, file, fragment):
    folder = _damaged(prepared, tmp_path, edit)
    raises(lambda: load_classification_dataset(folder), str(folder / file), fragment)


def test_tiny_ark_pretrains_on_the_multilabel_phantom_set_under_ignore(prepared, tmp_path):
    ws = tmp_path / "ws"
    args = ["pretrain", "--method", "ark", "--workspace", str(ws), "--data-root", str(prepared), "--labels-from",
            "cxr_findings", "--labels-from", "phantom_mr", "--set", "uncertain_label=ignore", "--set",
            "missing_label=ignore", *TINY, "--epochs", "2", "--name", "ml"]
    assert main(args) == 0
    sidecar = json.loads((ws / "runs" / "ml" / "backbone.json").read_text())
    consumed = sidecar["labels_consumed"]
    assert [c["dataset"] for c in consumed] == ["cxr_findings", "phantom_mr"] and consumed[0]["task"] == "multilabel"
    policy = consumed[0]["label_policy"]
    assert policy["uncertain_label"] == policy["missing_label"] == "ignore"
    assert policy["ignored"] == policy["uncertain"] + policy["blank"] > 0 and "label_policy" not in consumed[1]
    rows = [json.loads(line) for line in (ws / "runs" / "ml" / "metrics.jsonl").open()]
    assert rows and all(math.isfinite(r["bce"]) for r in rows)
    config = json.dumps(sidecar)
    assert '"uncertain_label": "ignore"' in config and '"missing_label": "ignore"' in config


def test_a_bad_policy_is_one_clear_line(prepared, tmp_path, capsys):
    args = ["pretrain", "--method", "ark", "--workspace", str(tmp_path / "ws"), "--data-root", str(prepared),
            "--labels-from", "cxr_findings", "--set", "uncertain_label=maybe", *TINY]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "uncertain_label=maybe" in err and "lsr_ones" in err and "Traceback" not in err, err


def test_binary_targets_are_one_column_and_single_label_folders_stay_as_they_were(tmp_path):
    from PIL import Image

    from medssl_bench.downstream.datasets.canonical import SourceItem, write_classification_dataset
    from medssl_bench.downstream.datasets.canonical_multilabel import MultiLabelItem, write_multilabel_dataset

    paths = []
    for i in range(12):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((8, 8), 20 * i, dtype=np.uint8)).save(paths[-1])
    splits = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    codes = [1.0, 0.0, -1.0, NAN] * 3
    items = [MultiLabelItem(f"img{i}", p, (c,), s) for i, (p, c, s) in enumerate(zip(paths, codes, splits))]
    common = dict(source={"src": str(tmp_path)}, split_method="fixed", seed=0, synthetic=True)
    folder = write_multilabel_dataset(tmp_path / "data", "tb", ["TB"], items, task="binary", **common)
    data = load_classification_dataset(folder)
    assert data.task == "binary" and data.targets.shape == (12, 1) and [s.label for s in data.samples] == [-1] * 12
    labelled = load_labelled(["tb"], tmp_path / "data", 32, 4, "ark", {"uncertain_label": "ones"})
    assert labelled.layout.n_classes == (1,)  # one logit
    assert labelled.sets[0].targets[:, 0].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError):  # two columns cannot be binary: an adapter bug
        write_multilabel_dataset(tmp_path / "data", "bad", ["a", "b"], items, task="binary", **common)
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "classes": ["TB", "other"]}))
    raises(lambda: load_classification_dataset(folder), str(folder / "dataset.json"), "binary", "one class")

    single = write_classification_dataset(tmp_path / "data", "single", ["a", "b"],
                                          [SourceItem(f"img{i}", p, i % 2, s) for i, (p, s) in
                                           enumerate(zip(paths, splits))], **common)
    old = load_classification_dataset(single)
    assert old.task == "multiclass" and old.targets is None and "targets" not in old.meta
    assert not (single / "targets.csv").exists() and old.labels("train").tolist() == [0, 1] * 4
