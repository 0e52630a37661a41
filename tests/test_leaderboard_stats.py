"""The leaderboard's statistics (leaderboard/stats.py) on a small store whose numbers are chosen so
that the tests' expected values can be worked out by hand: paired tests between the top two of a
column (Wilcoxon over cases, t-test over seeds), Friedman + Nemenyi critical difference across
columns, the case bootstrap of single-seed cells, and how the page shows each of them."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace
from medssl_bench.leaderboard import build_leaderboard
from medssl_bench.leaderboard.aggregate import build_tables
from medssl_bench.leaderboard.stats import (BOOTSTRAP_RESAMPLES, CASE_TEST, SEED_TEST, annotate, cliques, complete_block,
                               nemenyi_q)
from tests.leaderboard_helpers import EVIL, NOW, body_rows, column_index, fail, parse, record, table

# Column means x 100, chosen so that the ranks are known:
#            fgadr/linear  brain_tumor/linear  isic2018/finetune
MEANS = {"A": (80, 75, 90), "B": (70, 77, 85), "C": (60, 65, 60), "D": (50, 55, 88)}
MEAN_RANKS = {"A": 4 / 3, "B": 2.0, "C": 10 / 3, "D": 10 / 3}  # ranks 1,2,1 / 2,1,3 / 3,3,4 / 4,4,2
DEMSAR_Q_005 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
ISIC_OFFSETS = (-0.04, -0.03, -0.02, -0.01, 0.01, 0.02, 0.03, 0.04)  # 8 cases, mean 0
ISIC_LEAD = tuple(i * 0.02 / 4.5 for i in range(1, 9))  # A = D + these: all positive, mean 0.02


def accuracy_cases(correct: range, n: int = 100) -> list[dict]:
    return [{"id": f"img{i}", "label": 0, "pred": 0 if i in correct else 1} for i in range(n)]


def dice_cases(mean: float, extra=(0.0,) * 8) -> list[dict]:
    return [{"id": f"case{i}", "case": f"case{i}", "dice": mean + o + e, "iou": 0.0}
            for i, (o, e) in enumerate(zip(ISIC_OFFSETS, extra))]


def fill(opened) -> None:
    for name in MEANS:
        opened.upsert_checkpoint({"id": name, "name": f"run {name}", "method": "simclr" if name != "D" else "random",
                                  "synthetic": False})
    seed_noise = {"A": (-1, 0, 1), "B": (-1, 1, 0), "C": (-1, 0, 1), "D": (-1, 0, 1)}
    brain_correct = {"A": range(2, 77), "B": range(0, 77), "C": range(0, 65), "D": range(0, 55)}
    for name, (fgadr, brain, isic) in MEANS.items():
        record(opened, name, "fgadr", "linear", [(fgadr + e) / 100 for e in seed_noise[name]], metric="accuracy")
        record(opened, name, "brain_tumor", "linear", [brain / 100], metric="accuracy",
               per_case=[accuracy_cases(brain_correct[name])])
        cases = dice_cases(0.88, ISIC_LEAD) if name == "A" else dice_cases(isic / 100)
        record(opened, name, "isic2018", "finetune", [float(np.mean([c["dice"] for c in cases]))], metric="dice",
               per_case=[cases])
    fail(opened, "A", "kvasir_seg", "finetune", 0, f"ValueError: {EVIL}")  # a column of failures only


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stats")
    with ResultsStore.open(f"sqlite:///{folder}/r.db", Workspace(folder)) as opened:
        fill(opened)
    return folder


@pytest.fixture(scope="module")
def annotated(store_dir):
    with ResultsStore.open(f"sqlite:///{store_dir}/r.db", Workspace(store_dir)) as store:
        (real,) = build_tables(store.results(split="test", details=False), store.checkpoints(),
                               store.evaluations(status="failed"))
        annotate(real, lambda c, t, p: store.results(checkpoint_id=c, task=t, protocol=p, split="test"))
    return real


@pytest.fixture(scope="module")
def page(store_dir) -> str:
    with ResultsStore.open(f"sqlite:///{store_dir}/r.db", Workspace(store_dir)) as store:
        return build_leaderboard(store, store_dir / "site", now=NOW).read_text()


def exact_wilcoxon_p(differences: list[float]) -> float:
    """Two-sided exact p of the signed-rank statistic by enumerating every sign assignment (no ties)."""
    ranks = {d: r for r, d in enumerate(sorted(differences, key=abs), start=1)}
    observed = sum(ranks[d] for d in differences if d > 0)
    n, centre = len(differences), len(differences) * (len(differences) + 1) / 4
    extreme = sum(1 for signs in itertools.product((0, 1), repeat=n)
                  if abs(sum(r for r, s in zip(range(1, n + 1), signs) if s) - centre) >= abs(observed - centre))
    return extreme / 2 ** n


def test_wilcoxon_over_cases_between_the_top_two(annotated):
    isic = annotated.tests[("isic2018", "finetune")]
    assert (isic.leader.checkpoint_id, isic.runner_up.checkpoint_id) == ("A", "D")
    assert isic.test == CASE_TEST and isic.n == 8
    assert isic.difference == pytest.approx(2.0)
    assert isic.p == pytest.approx(exact_wilcoxon_p([100 * d for d in ISIC_LEAD])) == pytest.approx(2 / 2 ** 8)
    assert isic.significant


def test_wilcoxon_drops_ties_and_a_two_case_lead_is_not_significant(annotated):
    brain = annotated.tests[("brain_tumor", "linear")]  # B right on 2 more of 100 images than A, else equal
    assert (brain.leader.checkpoint_id, brain.runner_up.checkpoint_id) == ("B", "A")
    assert brain.test == CASE_TEST and brain.n == 100
    leader = np.array([100.0 if i < 77 else 0.0 for i in range(100)])
    runner_up = np.array([100.0 if 2 <= i < 77 else 0.0 for i in range(100)])
    assert brain.p == pytest.approx(stats.wilcoxon(leader, runner_up).pvalue)  # zeros dropped: 2 differences
    assert not brain.significant


def test_t_test_over_seeds_without_per_case_values(annotated):
    fgadr = annotated.tests[("fgadr", "linear")]  # A 79 80 81 vs B 69 71 70: differences 10, 9, 11
    assert fgadr.test == SEED_TEST and fgadr.n == 3
    t = 10 / (1 / math.sqrt(3))  # mean 10, sd 1
    assert fgadr.p == pytest.approx(2 * stats.t.sf(t, 2))
    assert fgadr.significant


def test_a_lead_identical_on_every_seed_is_untested_not_p_zero():
    from medssl_bench.leaderboard.aggregate import Cell, Column, Row
    from medssl_bench.leaderboard.stats import paired_test

    column = Column("fgadr", "linear", "accuracy", "classification/linear")
    rows = [Row(name, name, "simclr", None, cells={column.key: Cell(dict(enumerate(values)))})
            for name, values in (("x", (61.0, 62.0, 63.0)), ("y", (55.0, 56.0, 57.0)), ("z", (55.0, 56.0, 57.0)))]
    constant = paired_test(column, rows[0], rows[1], ({}, {}))
    assert constant.p is None and constant.test is None and "same on all 3 seeds" in constant.reason
    tied = paired_test(column, rows[1], rows[2], ({}, {}))
    assert tied.test == SEED_TEST and tied.p == 1.0


def test_friedman_and_nemenyi_critical_difference(annotated):
    cd = annotated.critical_difference
    assert [c.key for c in cd.columns] == [("fgadr", "linear"), ("brain_tumor", "linear"), ("isic2018", "finetune")]
    assert {r.checkpoint_id for r in cd.rows} == set(MEANS)  # the column of failures only is left out
    assert cd.mean_ranks == pytest.approx(MEAN_RANKS)
    k, n = 4, 3
    chi2 = 12 * n / (k * (k + 1)) * (sum(r ** 2 for r in MEAN_RANKS.values()) - k * (k + 1) ** 2 / 4)
    assert chi2 == pytest.approx(5.4)
    assert cd.statistic == pytest.approx(chi2) and cd.p == pytest.approx(stats.chi2.sf(5.4, 3))
    assert not cd.significant
    assert cd.q_alpha == pytest.approx(DEMSAR_Q_005[4], abs=1e-3)
    assert cd.cd == pytest.approx(DEMSAR_Q_005[4] * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)
    assert [set(g) for g in cd.cliques] == [set(MEANS)]  # all within 2.0 < CD 2.71 of each other


def test_nemenyi_q_matches_demsar_table():
    assert [nemenyi_q(k) for k in DEMSAR_Q_005] == pytest.approx(list(DEMSAR_Q_005.values()), abs=1e-3)


def test_cliques_split_where_ranks_differ_by_more_than_cd():
    assert cliques({"a": 1.0, "b": 1.5, "c": 3.2, "d": 3.4}, 1.0) == [["a", "b"], ["c", "d"]]
    assert cliques({"a": 1.0, "b": 1.9, "c": 2.8}, 1.0) == [["a", "b"], ["b", "c"]]
    assert cliques({"a": 1.0, "b": 3.0}, 1.0) == []


def test_complete_block_drops_the_least_covered_row(annotated):
    from medssl_bench.leaderboard.aggregate import Cell, Row

    partial = Row("E", "run E", "byol", None, cells={("fgadr", "linear"): Cell({0: 99.0})})
    annotated.rows.append(partial)
    try:
        rows, columns = complete_block(annotated)
    finally:
        annotated.rows.remove(partial)
    assert partial not in rows and len(rows) == 4 and len(columns) == 3


def test_single_seed_cells_get_a_bootstrap_interval_over_cases(annotated):
    row = next(r for r in annotated.rows if r.checkpoint_id == "A")
    cell = row.cells[("isic2018", "finetune")]
    values = np.array([100 * (0.88 + o + e) for o, e in zip(ISIC_OFFSETS, ISIC_LEAD)])
    expected = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=BOOTSTRAP_RESAMPLES,
                               rng=np.random.default_rng(0)).confidence_interval
    assert cell.case_ci == pytest.approx((expected.low, expected.high))
    assert values.min() < cell.case_ci[0] < cell.mean < cell.case_ci[1] < values.max()
    assert row.cells[("fgadr", "linear")].case_ci is None  # three seeds: the t-interval


def test_page_marks_leads_and_shows_the_cd_summary(page):
    root = parse(page)
    real = table(root, "real")
    rows = body_rows(real)
    marks = {task: [s.text() for s in rows[leader][column_index(real, task)].find_all("span")
                    if s.classes() & {"ns", "sig"}]
             for task, leader in (("fgadr", "A"), ("brain_tumor", "B"), ("isic2018", "A"))}
    assert marks == {"fgadr": ["p<.05"], "brain_tumor": ["n.s."], "isic2018": ["p<.05"]}
    (tests,) = root.find_all("table", **{"class": "stats paired-tests"})
    verdicts = {tr.attrs["data-task"]: tr.find_all("td")[-1].text() for tr in tests.find_all("tr")
                if "data-task" in tr.attrs}
    assert verdicts["brain_tumor"].startswith("not significant") and verdicts["isic2018"].startswith("significant")
    assert "kvasir_seg" not in verdicts  # nobody has a result there
    (summary,) = [p for p in root.find_all("p") if "cd-summary" in p.classes()]
    assert "\u03c7\u00b2 = 5.400" in summary.text() and "no significant difference" in summary.text()
    assert [s.text() for s in summary.find_all("span") if "cd-value" in s.classes()] == ["2.708"]
    (cd_figure,) = root.find_all("figure", **{"class": "cd"})
    bars = [ln for ln in cd_figure.find_all("line") if ln.attrs.get("stroke-width") == "4"]
    assert len(bars) == 1  # one group: A, B, C and D
    cell = rows["A"][column_index(real, "isic2018")]
    assert "[" in cell.text() and "bootstrap" in page  # the single seed's interval over cases


def test_page_shows_failure_only_columns_and_random_init_costs(page):
    root = parse(page)
    real = table(root, "real")
    rows = body_rows(real)
    kvasir = rows["A"][column_index(real, "kvasir_seg")]
    assert "failed" in kvasir.classes() and f"seed 0: ValueError: {EVIL}" in kvasir.attrs["title"]
    assert rows["B"][column_index(real, "kvasir_seg")].text() == "\u2014"
    n = int(real.attrs["data-columns"])
    assert rows["D"][n + 5].text() == "none" and rows["A"][n + 5].text() == "unknown"
