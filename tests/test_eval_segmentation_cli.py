"""`bench data` + `bench eval` on the segmentation families, through the CLI: 2D per-image Dice,
3D per-volume IoU, the OOD site, and what `bench tasks` says."""
from __future__ import annotations

import pytest

from medssl_bench.downstream.families import get_family
from medssl_bench.downstream.registry import TASKS
from medssl_bench.harness.app.cli import main
from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    for task, n, size in (("busi", 24, 64), ("mmwhs_ct", 5, 32)):
        assert main(["data", "synth", task, "--out", str(root / "raw" / task), "--n", str(n), "--size", str(size)]) == 0
        assert main(["data", "prepare", task, "--src", str(root / "raw" / task), "--out", str(root / "data"),
                     "--workspace", str(root / "ws")]) == 0
    return root / "data"


@pytest.mark.slow
def test_eval_segmentation_records_per_image_dice_and_per_volume_iou(seg_root, tmp_path, capsys):
    ws = Workspace(tmp_path / "ws")
    common = ["--workspace", str(ws.root), "--data-root", str(seg_root), "--jobs", "1", "--image-size", "32"]
    assert main(["eval", "--checkpoint", "random", "--task", "busi", "--task", "mmwhs_ct", "--seeds", "1", *common]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "busi" in out and "mmwhs_ct" in out and "2 done, 0 failed" in out
    store = ResultsStore.open(None, ws)
    rows = {(r["task"], r["split"]): r for r in store.results()}
    assert {e["protocol"] for e in store.evaluations()} == {"finetune"}  # frozen only when asked for

    busi, data = rows["busi", "test"], get_family("segmentation_2d").load(seg_root / "busi")
    assert busi["metric"] == "dice" and 0 <= busi["value"] <= 1
    assert sorted(c["id"] for c in busi["per_case"]) == sorted(s.id for s in data.split("test"))
    assert busi["value"] == pytest.approx(sum(c["dice"] for c in busi["per_case"]) / len(busi["per_case"]))

    heart, volumes = rows["mmwhs_ct", "test"], get_family("segmentation_3d").load(seg_root / "mmwhs_ct")
    assert heart["metric"] == "iou_3d" and set(heart["metrics"]) >= {"iou_3d", "dice_3d", "iou_3d_all"}
    assert sorted(c["id"] for c in heart["per_case"]) == sorted(volumes.cases("test"))  # one value per volume
    assert set(heart["per_class"]) == set(volumes.classes[1:])
    assert heart["protocol_config"]["image_size"] == 32 and heart["protocol_config"]["n_train"] > 0


def test_tasks_lists_the_paper_tasks_then_the_extras(capsys):
    assert main(["tasks"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if len(line.split()) > 2]
    marks = {row[0]: row[1] for row in rows if row[0] in TASKS}
    assert len(marks) == len(TASKS) and list(marks.values()).count("yes") == 15
    assert marks["brats"] == marks["prostate_hk"] == marks["vindr_cxr"] == "yes" and marks["bccd"] == "extra"
    assert list(marks)[-1] == "bccd"  # extras after the paper's tasks


def test_prepare_reports_the_offending_file_for_a_mask_that_does_not_fit(tmp_path, capsys):
    from PIL import Image

    raw = tmp_path / "raw"
    assert main(["data", "synth", "busi", "--out", str(raw), "--n", "12", "--size", "48"]) == 0
    mask = next((raw / "Dataset_BUSI_with_GT" / "benign").glob("* (1)_mask.png"))
    Image.new("L", (20, 20)).save(mask)
    capsys.readouterr()
    assert main(["data", "prepare", "busi", "--src", str(raw), "--out", str(tmp_path / "data")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert mask.name in err and "Traceback" not in err and not (tmp_path / "data" / "busi").exists()


@pytest.mark.slow
def test_simclr_pretraining_beats_random_init_on_synthetic_busi(tmp_path):
    """Issue #5's pipeline-sanity check, on exactly the demo's path: the phantom corpus (256 images,
    which includes breast-ultrasound-like scans), SimCLR quick for 2 epochs, then BUSI fine-tuning
    in the quick profile over 3 seeds. Measured on the demo: 57.4 vs 48.2 Dice (seeds 0-2)."""
    ws, corpus, raw = tmp_path / "ws", tmp_path / "corpus", tmp_path / "raw"
    for args in (["corpus", "synth", "--out", str(corpus), "--n", "256", "--seed", "0", "--size", "96"],
                 ["corpus", "build", "--root", str(corpus), "--workspace", str(ws)],
                 ["pretrain", "--method", "simclr", "--profile", "quick", "--corpus", str(corpus),
                  "--workspace", str(ws), "--epochs", "2", "--name", "simclr-demo"],
                 ["data", "synth", "busi", "--out", str(raw), "--seed", "0"],
                 ["data", "prepare", "busi", "--src", str(raw), "--workspace", str(ws)],
                 ["eval", "--checkpoint", "simclr-demo,random", "--task", "busi", "--seeds", "3",
                  "--workspace", str(ws), "--jobs", "1"]):
        assert main(args) == 0, args
    store = ResultsStore.open(None, Workspace(ws))
    names = {c["id"]: c["name"] for c in store.checkpoints()}
    dice: dict[str, dict[int, float]] = {}
    for r in store.results(task="busi", split="test"):
        dice.setdefault(names[r["checkpoint_id"]], {})[r["seed"]] = r["value"]
    pretrained, random = dice["simclr-demo"], dice["random"]
    assert len(pretrained) == len(random) == 3
    gaps = [pretrained[s] - random[s] for s in range(3)]
    assert sum(gaps) / 3 >= 0.03, (pretrained, random)  # at least 3 Dice points on average
    assert min(gaps) > 0, (pretrained, random)          # and on every seed
