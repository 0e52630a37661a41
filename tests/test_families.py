"""Task families as records: each one's runner and loader resolve, the quick profile each family
derives from the paper protocols, and the leaderboard's column groups."""
from __future__ import annotations

import pytest

from medssl_bench.downstream.families import FAMILIES, Family, get_family
from medssl_bench.downstream.registry import TASKS, Task
from medssl_bench.harness.errors import UserError
from medssl_bench.leaderboard.aggregate import GROUP_TITLES, column_group


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_resolves_its_runner_and_loader(name):
    family = FAMILIES[name]
    assert callable(family.run_module().run_job)
    module, function = family.loader.split(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))
    assert any(t.family == name for t in TASKS.values()), f"no task uses family {name}"


@pytest.mark.parametrize("task, protocol, expected", [
    ("brain_tumor", "linear", dict(image_size=64, backbone="resnet18", epochs=60, batch_size=32)),
    ("brain_tumor", "knn", dict(image_size=64, backbone="resnet18", epochs=0, batch_size=32)),
    ("fgadr", "finetune", dict(image_size=64, backbone="resnet18", epochs=4, batch_size=32)),
    ("isic2018", "finetune", dict(image_size=64, backbone="resnet18", epochs=20, batch_size=8)),
    ("brats", "finetune", dict(image_size=64, backbone="resnet18", epochs=8, batch_size=8)),
    ("prostate_hk", "frozen", dict(image_size=64, backbone="resnet18", epochs=12, batch_size=8)),
    ("vindr_cxr", "finetune", dict(image_size=128, backbone="resnet18", epochs=4, batch_size=4,
                                   rois_per_image=64, proposals=256)),
])
def test_quick_profile_per_family(task, protocol, expected):
    paper = TASKS[task].protocol(protocol, "paper")
    quick = TASKS[task].protocol(protocol, "quick")
    assert {k: getattr(quick, k) for k in expected} == expected
    assert (quick.lr, quick.weight_decay, quick.optimizer, quick.name) == (paper.lr, paper.weight_decay,
                                                                            paper.optimizer, paper.name)
    assert quick.source.startswith(f"quick (CPU) version of: {paper.source}")
    assert quick.source.endswith("; 64 RoIs, 256 proposals") == (TASKS[task].family == "detection")


def test_leaderboard_groups_follow_the_records():
    assert list(GROUP_TITLES) == ["classification/linear", "classification/paper_linear", "classification/knn",
                                  "classification/finetune",
                                  "segmentation_2d", "segmentation_3d", "detection", "ood_segmentation", "other"]
    assert column_group("fgadr", "linear") == "classification/linear"
    assert column_group("brain_tumor", "paper_linear") == "classification/paper_linear"
    assert column_group("brats", "finetune") == column_group("brats", "frozen") == "segmentation_3d"
    assert column_group("no_such_task", "finetune") == "other"


def test_a_task_of_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown family 'segmentation_4d'"):
        Task("x", "X", "segmentation_4d", "x", 2, "dice", ("dice",), {})
    with pytest.raises(UserError, match="unknown task family 'nope'"):
        get_family("nope")


def load_marker(folder):
    return ("loaded", folder)


def test_a_new_family_is_one_record(monkeypatch):
    record = Family("registration", "Registration", __name__, f"{__name__}:load_marker",
                    quick={"image_size": 32, "epochs": 1}, quick_note="toy")
    monkeypatch.setitem(FAMILIES, "registration", record)
    task = Task("toy", "Toy", "registration", "toy", 1, "dice", ("dice",),
                {"finetune": TASKS["jsrt"].paper["finetune"]})
    assert get_family("registration").load("somewhere") == ("loaded", "somewhere")
    quick = task.protocol("finetune", "quick")
    assert (quick.image_size, quick.epochs) == (32, 1) and quick.source.endswith("; toy")
    assert record.group("finetune") == "registration" and record.group_titles() == {"registration": "Registration"}
