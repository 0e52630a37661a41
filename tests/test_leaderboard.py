"""The static leaderboard (leaderboard/): rendered from a fixture results store, checked by parsing
the HTML with the standard library's parser (structure, CIs, missing cells, best marks, escaping,
synthetic/real separation, the paper's reference row, no network references, charts, cost, failed
jobs, task toggles). Statistics: test_leaderboard_stats.py; the page in Chromium:
test_leaderboard_browser.py."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace
from medssl_bench.leaderboard import build_leaderboard
from tests.leaderboard_helpers import (EVIL, EVIL_CONFIG, NOW, T_975_DF2, WALL_S, Node, body_rows, column_index,
                                       fill_store, parse, record, table, trailing)

@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """A store filled once for the module (the tests only read it)."""
    folder = tmp_path_factory.mktemp("leaderboard")
    with ResultsStore.open(f"sqlite:///{folder}/r.db", Workspace(folder)) as opened:
        fill_store(opened)
    return folder


@pytest.fixture
def store(store_dir):
    with ResultsStore.open(f"sqlite:///{store_dir}/r.db", Workspace(store_dir)) as opened:
        yield opened


@pytest.fixture(scope="module")
def page(store_dir) -> str:
    with ResultsStore.open(f"sqlite:///{store_dir}/r.db", Workspace(store_dir)) as opened:
        path = build_leaderboard(opened, store_dir / "site", now=NOW)
    assert path == store_dir / "site" / "index.html"
    return path.read_text(encoding="utf-8")


def test_structure_groups_and_columns(page):
    root = parse(page)
    real = table(root, "real")
    groups = [th.text() for th in real.find_all("th") if "data-group" in th.attrs]
    assert groups == ["Classification (linear probe)", "2D segmentation", "Overall", "Compute"]
    assert [th.attrs["data-task"] for th in real.find_all("th") if "data-task" in th.attrs] == \
        ["fgadr", "brain_tumor", "isic2018"]
    assert "drive" not in {th.attrs.get("data-task") for th in real.find_all("th")}  # label fraction 0.1
    rows = body_rows(real)
    assert list(rows) == ["aaa", "bbb"]  # sorted by mean normalised score
    # every body row has a cell for every header column: name + 3 tasks + 3 overall + 2 compute + failed
    assert {len(cells) for cells in rows.values()} == {10}
    assert len(real.find_all("th", data_sort_col="9")) == 1  # the Failed header sorts the last cell
    assert root.find_all("section", id="how-to-read")


def test_cell_mean_and_t_interval(page):
    real = table(parse(page), "real")
    cell = body_rows(real)["aaa"][column_index(real, "fgadr")]
    half = T_975_DF2 * 2.0 / math.sqrt(3)  # values 70, 72, 74: sd 2
    assert cell.find_all("a")[0].text().split() == ["72.0", "\u00b1", f"{half:.1f}"]
    assert float(cell.attrs["data-sort"]) == pytest.approx(72.0)
    assert "Student-t" in page


def test_missing_cell_is_a_dash_not_zero(page):
    real = table(parse(page), "real")
    cells = body_rows(real)["bbb"]
    missing = cells[column_index(real, "isic2018")]  # bbb's only isic2018 job failed at 10% labels
    assert "missing" in missing.classes() and missing.text() == "\u2014" and missing.attrs["data-sort"] == ""
    assert trailing(real, cells)["tasks"] == "2/3"


def test_best_per_column_and_overall_scores(page):
    real = table(parse(page), "real")
    rows = body_rows(real)
    best = {task: [ck for ck, cells in rows.items() if "best" in cells[column_index(real, task)].classes()]
            for task in ("fgadr", "brain_tumor", "isic2018")}
    assert best == {"fgadr": ["bbb"], "brain_tumor": ["aaa"], "isic2018": ["aaa"]}
    assert "\u2605" in rows["bbb"][column_index(real, "fgadr")].text()
    # aaa: ranks 2, 1, 1 and normalised 0, 1, 1; bbb: ranks 1, 2 and normalised 1, 0
    assert [trailing(real, rows["aaa"])[k] for k in ("mean_rank", "mean_norm", "tasks")] == ["1.33", "0.667", "3/3"]
    assert [trailing(real, rows["bbb"])[k] for k in ("mean_rank", "mean_norm", "tasks")] == ["1.50", "0.500", "2/3"]
    # what the page's script averages when tasks are switched off: per-cell rank and normalised score
    cells = [rows["aaa"][column_index(real, t)] for t in ("fgadr", "brain_tumor", "isic2018")]
    assert [(c.attrs["data-rank"], float(c.attrs["data-norm"])) for c in cells] == [("2", 0.0), ("1", 1.0), ("1", 1.0)]


def test_task_toggles_name_every_column(page):
    root = parse(page)
    (fieldset,) = [f for f in root.find_all("fieldset") if f.attrs.get("data-table") == "table-real"]
    boxes = [i for i in fieldset.find_all("input") if "data-col" in i.attrs]
    real = table(root, "real")
    assert [b.attrs["data-col"] for b in boxes] == [str(column_index(real, t)) for t in ("fgadr", "brain_tumor",
                                                                                         "isic2018")]
    assert all("checked" in b.attrs for b in boxes)
    group_cols = {th.attrs["data-group"]: th.attrs["data-group-cols"] for th in real.find_all("th")
                  if "data-group-cols" in th.attrs}
    assert group_cols == {"classification/linear": "1 2", "segmentation_2d": "3"}


def test_failed_jobs_are_visible_with_their_reasons(page):
    root = parse(page)
    real = table(root, "real")
    cells = body_rows(real)["bbb"]
    fgadr = cells[column_index(real, "fgadr")]
    (mark,) = [s for s in fgadr.find_all("span") if "failed-mark" in s.classes()]
    assert mark.text() == "\u26a01" and f"seed 3: RuntimeError: {EVIL}" in mark.attrs["title"]
    failed = cells[-1]
    assert failed.attrs["data-sort"] == "2" and "out of memory" in failed.attrs["title"]
    assert trailing(real, body_rows(real)["aaa"])["failed"] == "0"
    assert "2 failed evaluation job(s)" in page


def test_cost_columns_sum_wall_time_and_never_show_unknown_as_zero(page):
    real = table(parse(page), "real")
    rows = body_rows(real)
    aaa, bbb = trailing(real, rows["aaa"]), trailing(real, rows["bbb"])
    # aaa: 15 done jobs (three tasks, fgadr and drive at 10%, 3 seeds each); bbb: 9 done + 2 failed; 600 s each
    assert aaa["eval_h"] == f"{15 * WALL_S / 3600:.2f}" and bbb["eval_h"] == f"{11 * WALL_S / 3600:.2f}"
    eval_cell = rows["aaa"][int(real.attrs["data-columns"]) + 4]
    assert "15 evaluation job(s); CPU: 2.50 h" in eval_cell.attrs["title"]
    assert bbb["pretrain_h"] == "4.00"  # 7200 s x 2 processes
    pretrain = rows["aaa"][int(real.attrs["data-columns"]) + 5]
    assert pretrain.text() == "unknown" and pretrain.attrs["data-sort"] == ""
    assert "10 epochs, 500 steps, batch 64" in pretrain.attrs["title"]


def test_malicious_strings_render_as_text(page):
    root = parse(page)
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(root.find_all("script")) == 1 and "alert" not in root.find_all("script")[0].text()
    assert root.find_all("img") == []  # the config value stayed text
    names = [cells[0].text() for cells in body_rows(table(root, "real")).values()]
    assert any(name.startswith(EVIL) for name in names)
    assert any(EVIL_CONFIG in pre.text() for pre in root.find_all("pre"))
    legends = [t.text() for svg in root.find_all("svg") for t in svg.find_all("text")]
    assert any(t.startswith("<script>") for t in legends)  # the name in the charts: text, shortened


def test_synthetic_results_are_a_separate_labelled_table(page):
    root = parse(page)
    assert set(body_rows(table(root, "real"))) == {"aaa", "bbb"}
    synthetic = table(root, "synthetic")
    assert set(body_rows(synthetic)) == {"syn"}
    (section,) = root.find_all("section", id="synthetic")
    assert "SYNTHETIC DATA" in section.text() and section.find_all("table", data_table="synthetic")
    assert page.index('id="real"') < page.index('id="synthetic"')
    # its own ranking: alone, it is best and first in its column
    cells = body_rows(synthetic)["syn"]
    assert [trailing(synthetic, cells)[k] for k in ("mean_rank", "mean_norm", "tasks")] == ["1.00", "1.000", "1/1"]
    assert synthetic.find_all("tfoot") == []  # the paper's numbers sit with real data only
    assert section.find_all("section", id="charts-synthetic")  # its charts stay inside the labelled box


def test_reported_in_paper_row_is_marked_and_unranked(page):
    real = table(parse(page), "real")
    (tfoot,) = real.find_all("tfoot")
    (row,) = tfoot.find_all("tr")
    cells = [c for c in row.children if isinstance(c, Node)]
    assert "reference" in row.classes() and cells[0].text().startswith("Reported in paper")
    # Not comparable, so not shown, each with its reason (tests/test_leaderboard_reference.py shows a match):
    # the paper's linear numbers come from LVM-Med's own frozen probe (paper_linear), not bench's linear probe;
    # ISIC's 87.76 is Dice at 512 px (dice_at_size), the column native-resolution Dice.
    assert [c.text() for c in cells[1:4]] == ["\u2014"] * 3  # fgadr, brain_tumor linear; isic
    assert "measured with the paper_linear / finetune protocol, not linear" in cells[1].attrs["title"]
    assert "is dice_at_size; this column is dice" in cells[3].attrs["title"]
    assert "not ranked" in row.text()
    assert "best" not in " ".join(" ".join(c.classes()) for c in cells)


def test_cells_link_to_provenance(page):
    root = parse(page)
    real = table(root, "real")
    cell = body_rows(real)["aaa"][column_index(real, "fgadr")]
    assert "seeds 0: 70.00, 1: 72.00, 2: 74.00" in cell.attrs["title"]
    anchor = cell.find_all("a")[0].attrs["href"]
    (details,) = root.find_all("div", id=anchor[1:])
    text = details.text()
    for expected in ("corpus-1", "0 \u2192 70.00", "0123456789ab", "fgadr / linear", "quick", '"lr": 0.001'):
        assert expected in text


def test_bar_charts_lengths_whiskers_and_paper_line(page):
    root = parse(page)
    (charts,) = root.find_all("section", id="charts-real")
    bars = [f for f in charts.find_all("figure") if f.attrs.get("data-task")]
    fgadr = [f for f in bars if f.attrs["data-task"] == "fgadr"]
    assert len(fgadr) == 2  # its bar chart and its label-efficiency curve
    svg = fgadr[0].find_all("svg")[0]
    rects = svg.find_all("rect")
    widths = sorted(float(r.attrs["width"]) for r in rects)
    assert widths == pytest.approx(sorted(380 * m / 100 for m in (72.0, 81.0)), abs=0.06)  # 0-100 axis, 380 px
    assert len([p for p in svg.find_all("path")]) == 2  # a CI whisker per bar
    # fgadr's paper number was measured with another protocol (paper_linear): no paper line on this chart
    assert not [g for g in svg.find_all("g") if "reported in the LVM-Med paper" in g.text()]
    (synthetic_charts,) = root.find_all("section", id="charts-synthetic")
    assert "LVM-Med paper" not in synthetic_charts.text()


def test_label_efficiency_curve_where_several_fractions(page):
    root = parse(page)
    (details,) = [d for d in root.find_all("details") if "efficiency" in d.classes()
                  and d.parent.attrs.get("id") == "charts-real"]
    (fig,) = details.find_all("figure")
    assert fig.attrs["data-task"] == "fgadr"  # drive has 10% labels only: no curve
    svg = fig.find_all("svg")[0]
    lines = svg.find_all("polyline")
    assert len(lines) == 2
    for line in lines:  # 10% then 100%: x grows, and both checkpoints score higher with all labels (y falls)
        (x1, y1), (x2, y2) = [tuple(map(float, p.split(","))) for p in line.attrs["points"].split()]
        assert x1 < x2 and y1 > y2
    assert {"10%", "100%"} <= {t.text() for t in svg.find_all("text")}


def test_profiles_mark_missing_tasks(page):
    root = parse(page)
    (charts,) = root.find_all("section", id="charts-real")
    profiles = {f.find_all("figcaption")[0].text(): f for f in charts.find_all("figure") if "data-task" not in f.attrs}
    assert set(profiles) == {"SimCLR run", EVIL}
    missing = [g for g in profiles[EVIL].find_all("g") if "missing" in g.text()]
    assert len(missing) == 1 and "isic2018" in missing[0].text()
    assert len(profiles["SimCLR run"].find_all("rect")) == 3


def test_self_contained_without_network(page):
    root = parse(page)
    assert "http://" not in page and "https://" not in page
    for tag in ("script", "link", "img", "a", "iframe", "style", "svg", "use", "image"):
        for node in root.find_all(tag):
            for attr in ("src", "href", "xlink:href"):
                target = node.attrs.get(attr)
                assert target is None or target.startswith("#") or target == "data:,", (tag, attr, target)
    assert [link.attrs for link in root.find_all("link")] == [{"rel": "icon", "href": "data:,"}]
    assert root.find_all("style")


def test_cli_writes_the_page_atomically_and_says_where(store, store_dir, tmp_path, capsys):
    from medssl_bench.harness.app.cli import main

    out = tmp_path / "site"
    for _ in range(2):
        assert main(["leaderboard", "--db", f"sqlite:///{store_dir}/r.db", "--out", str(out),
                     "--workspace", str(tmp_path)]) == 0
    assert [p.name for p in out.iterdir()] == ["index.html"]  # no temp file left
    assert (out / "index.html").stat().st_mode & 0o444 == 0o444
    assert str(out / "index.html") in " ".join(capsys.readouterr().out.split())
    assert build_leaderboard(store, out, now=NOW).read_text().count("2025-01-02T03:04:05+00:00") >= 1


def test_store_reads_only_what_the_leaderboard_asks_for(store):
    """The two store options the build relies on to stay fast: no per-case values in the bulk read,
    and per-case reads of one label fraction."""
    light = store.results(split="test", details=False)
    assert light and all("per_case" not in r and "per_class" not in r for r in light)
    assert len(light) == len(store.results(split="test"))
    tenth = store.results(checkpoint_id="aaa", task="fgadr", protocol="linear", split="test", label_fraction=0.1)
    assert [(r["label_fraction"], r["seed"]) for r in tenth] == [(0.1, 0), (0.1, 1), (0.1, 2)]


def test_empty_store(tmp_path):
    with ResultsStore.open(f"sqlite:///{tmp_path}/empty.db", Workspace(tmp_path)) as empty:
        path = build_leaderboard(empty, Path(tmp_path / "out"), now=NOW)
    root = parse(path.read_text())
    assert root.find_all("table") == [] and "No results recorded yet" in path.read_text()


def test_rows_say_their_tuning_budget_and_use_of_labels(page):
    rows = body_rows(table(parse(page), "real"))
    assert f"tuned with 8 trials (study {EVIL})" in rows["aaa"][0].text()  # escaped: it reads as text
    assert "supervised pretraining (labels of fgadr)" in rows["bbb"][0].text()
    assert "tuned with" not in rows["bbb"][0].text()
    fgadr = column_index(table(parse(page), "real"), "fgadr")
    assert "in-domain" in rows["bbb"][fgadr].text() and "in-domain" not in rows["aaa"][fgadr].text()


def test_a_column_where_every_checkpoint_scores_zero_is_marked_warned_and_can_fail_the_build(tmp_path, capsys):
    """A column that shows 0.0 for every checkpoint ranks nothing (the demo's 3D tasks once did):
    its header is marked, the CLI warns, and --fail-on-degenerate exits 1 after writing the page."""
    from medssl_bench.harness.app.cli import main
    from medssl_bench.leaderboard.sections import DEGENERATE_MARK

    url = f"sqlite:///{tmp_path}/r.db"
    with ResultsStore.open(url, Workspace(tmp_path)) as opened:
        for ckpt in ("aaa", "bbb"):
            opened.upsert_checkpoint({"id": ckpt, "name": ckpt, "method": "simclr", "synthetic": True})
        record(opened, "aaa", "mmwhs_ct", "finetune", [0.0, 0.0], metric="iou_3d", synthetic=True)
        record(opened, "bbb", "mmwhs_ct", "finetune", [0.0004], metric="iou_3d", synthetic=True)  # shows 0.0
        record(opened, "aaa", "brats", "finetune", [0.0, 0.0], metric="iou_3d", synthetic=True)
        record(opened, "bbb", "brats", "finetune", [0.0006], metric="iou_3d", synthetic=True)  # shows 0.1
    out = tmp_path / "site"
    assert main(["leaderboard", "--db", url, "--out", str(out), "--workspace", str(tmp_path)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "mmwhs_ct (finetune, synthetic data): every checkpoint scores 0.0" in printed and "brats (" not in printed
    headers = {th.attrs["data-task"]: th for th in parse((out / "index.html").read_text()).find_all("th")
               if "data-task" in th.attrs}
    assert DEGENERATE_MARK in headers["mmwhs_ct"].text() and DEGENERATE_MARK not in headers["brats"].text()
    (out / "index.html").unlink()
    assert main(["leaderboard", "--db", url, "--out", str(out), "--workspace", str(tmp_path),
                 "--fail-on-degenerate"]) == 1
    assert (out / "index.html").exists()  # written before the failure


# ---- one table per pretraining profile (issue 20) ------------------------------------------------------------

def profile_checkpoint(store, ckpt: str, label: str | None, *, method: str = "simclr", corpus: str = "corpus-1"):
    sidecar = {"profile": label, "config": {"batch_size": 256}} if label else {}
    store.upsert_checkpoint({"id": ckpt, "name": f"run {ckpt}", "method": method, "corpus_id": corpus,
                             "synthetic": False, "sidecar": sidecar})


@pytest.fixture(scope="module")
def profiles_page(tmp_path_factory) -> str:
    """fgadr: paper P 90 > benchmark B 70 > benchmark C 65 > random R 50; M (a modified paper run) 95; B2 a
    benchmark run on another corpus 99."""
    folder = tmp_path_factory.mktemp("profiles")
    with ResultsStore.open(f"sqlite:///{folder}/r.db", Workspace(folder)) as opened:
        for ckpt, label, corpus in (("P", "paper", "corpus-1"), ("B", "benchmark", "corpus-1"),
                                    ("C", "benchmark", "corpus-1"), ("B2", "benchmark", "corpus-2"),
                                    ("M", "paper (modified: epochs)", "corpus-1")):
            profile_checkpoint(opened, ckpt, label, corpus=corpus)
        opened.upsert_checkpoint({"id": "R", "name": "Random init", "method": "random", "synthetic": False})
        for ckpt, value in (("P", 0.90), ("B", 0.70), ("C", 0.65), ("R", 0.50), ("M", 0.95), ("B2", 0.99)):
            record(opened, ckpt, "fgadr", "linear", [value - 0.01, value, value + 0.01], metric="accuracy")
        return build_leaderboard(opened, folder / "site", now=NOW).read_text(encoding="utf-8")


def test_a_paper_row_and_a_benchmark_row_never_share_a_table_rank_or_best_mark(profiles_page):
    root = parse(profiles_page)
    benchmark, paper = table(root, "real-benchmark-corpus-1"), table(root, "real-paper")
    bench_rows, paper_rows = body_rows(benchmark), body_rows(paper)
    assert set(bench_rows) == {"B", "C", "R"} and set(paper_rows) == {"P", "R"}  # random: the floor of both
    fgadr_b, fgadr_p = column_index(benchmark, "fgadr"), column_index(paper, "fgadr")
    # B is best among benchmark rows although P scores higher: P is ranked in its own table only
    assert "best" in bench_rows["B"][fgadr_b].classes() and bench_rows["B"][fgadr_b].attrs["data-rank"] == "1"
    assert "best" in paper_rows["P"][fgadr_p].classes() and paper_rows["P"][fgadr_p].attrs["data-rank"] == "1"
    assert "P" not in bench_rows and "B" not in paper_rows and "M" not in paper_rows
    assert paper_rows["R"][fgadr_p].attrs["data-rank"] == "2" and bench_rows["R"][fgadr_b].attrs["data-rank"] == "3"
    # the benchmark's budget holds on one corpus: another corpus is another table
    assert set(body_rows(table(root, "real-benchmark-corpus-2"))) == {"B2", "R"}
    # a run that left its profile is ranked with the modified ones and says what it changed
    modified = body_rows(table(root, "real-modified"))
    assert set(modified) == {"M", "R"} and "profile paper (modified: epochs)" in modified["M"][0].text()
    # the fair ranking comes first, each table under a heading that names its profile
    assert profiles_page.index('data-table="real-benchmark-corpus-1"') < profiles_page.index('data-table="real-paper"')
    headings = [s.find_all("h3")[0].text() for s in root.find_all("section") if "profile" in s.classes()]
    assert headings[:2] == ["Profile: benchmark on corpus corpus-1", "Profile: benchmark on corpus corpus-2"]
    assert "Profile: paper" in headings and "Profile: modified" in headings


def test_the_ranking_profile_comes_from_the_sidecar_a_run_writes():
    from medssl_bench.harness.config import profile_label, resolve_config
    from medssl_bench.leaderboard.profiles import ranking_group, ranking_profile
    from medssl_bench.methods import get_method

    cfg = resolve_config(get_method("simclr"), "benchmark", {"image_size": 128}, {})
    assert ranking_profile({"method": "simclr", "sidecar": {"profile": profile_label(cfg)}}) == "modified"
    assert ranking_group({"method": "byol", "corpus_id": "c9", "sidecar": {"profile": "benchmark"}}) == \
        ("benchmark", "c9")
    assert ranking_group({"method": "byol", "corpus_id": "c9", "sidecar": {"profile": "paper"}}) == ("paper", None)
    assert ranking_profile({"method": "imported", "sidecar": {"profile": "paper"}}) == "imported"
    assert ranking_profile({"method": "simclr", "sidecar": {}}) == "unrecorded"
