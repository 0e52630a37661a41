"""The paper's number is shown beside a column only when protocol, metric and split match
(leaderboard/reference.py); otherwise the reason is given."""
from __future__ import annotations

from medssl_bench.leaderboard.reference import reference


def with_split(file: str | None) -> dict:
    split = {"rule": "published", "source": {"file": file, "sha256": "0" * 64}} if file else {"rule": "seeded"}
    return {"provenance": {"data": {"split": split}}}


def test_same_protocol_metric_and_published_split_shows_the_value():
    value, why = reference("kvasir_seg", "finetune", "dice_at_size", [with_split("Kvasir.json")] * 2)
    assert value == 86.76 and "same protocol, metric and split" in why


def test_another_split_metric_or_protocol_hides_it_with_the_reason():
    value, why = reference("kvasir_seg", "finetune", "dice_at_size", [with_split("Kvasir.json"), with_split(None)])
    assert value is None and "--split-file Kvasir.json" in why
    value, why = reference("kvasir_seg", "finetune", "dice", [with_split("Kvasir.json")])
    assert value is None and "86.76 is dice_at_size; this column is dice" in why
    value, why = reference("kvasir_seg", "frozen", "dice_at_size", [with_split("Kvasir.json")])
    assert value is None and "measured with the finetune protocol, not frozen" in why
    assert reference("bccd", "finetune", "ap50", []) == (None, "not reported in the paper")


def test_an_unpublished_split_shows_the_value_and_says_the_images_differ():
    value, why = reference("mmwhs_ct", "finetune", "iou_3d", [with_split(None)])
    assert value == 84.91 and "same protocol, metric and split" in why  # the published ids are the default
    value, why = reference("brats", "finetune", "iou_3d", [with_split(None)])
    assert value == 73.58 and "split is unpublished" in why and "whole tumour" in why


def test_a_comparable_column_shows_the_number_and_the_paper_line(tmp_path):
    from medssl_bench.harness.store import ResultsStore
    from medssl_bench.harness.workspace import Workspace
    from medssl_bench.leaderboard import build_leaderboard
    from tests.leaderboard_helpers import NOW, Node, parse, record, table

    with ResultsStore.open(f"sqlite:///{tmp_path}/r.db", Workspace(tmp_path)) as store:
        store.upsert_checkpoint({"id": "aaa", "name": "SimCLR run", "method": "simclr", "synthetic": False})
        record(store, "aaa", "mmwhs_ct", "finetune", [0.80, 0.82], metric="iou_3d")
        page = build_leaderboard(store, tmp_path / "site", now=NOW).read_text()
    root = parse(page)
    (tfoot,) = table(root, "real").find_all("tfoot")
    cells = [c for c in tfoot.find_all("tr")[0].children if isinstance(c, Node)]
    assert cells[1].text() == "84.91" and "same protocol, metric and split" in cells[1].attrs["title"]
    (charts,) = root.find_all("section", id="charts-real")
    (paper,) = [g for g in charts.find_all("g") if "reported in the LVM-Med paper" in g.text()]
    assert "84.91" in paper.text()
