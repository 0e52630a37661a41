"""Is a lead real? Per column, a paired test between the top two checkpoints; across columns, a
Friedman test with the Nemenyi critical difference (Demšar 2006, "Statistical comparisons of
classifiers over multiple data sets", JMLR 7, sections 3.2.2 and 3.2.3). Also the bootstrap interval
over cases of a single-seed cell. The tests are scipy's; this module only chooses what is paired.

Per-case values come from the store's `per_case` lists: the paper metric is the mean over cases of
accuracy (label == pred), per-image Dice or per-volume IoU. AP50 is not a mean over images, so
detection columns are paired over seeds.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from medssl_bench.leaderboard.aggregate import CI_LEVEL, Cell, Column, Row, Table

ALPHA = 0.05
MIN_CASES = 6  # fewer common cases than this: pair over seeds (Wilcoxon cannot reach p < 0.05 below 6)
BOOTSTRAP_RESAMPLES = 2000
CASE_TEST = "Wilcoxon signed-rank over cases"
SEED_TEST = "paired t-test over seeds"

# (checkpoint id, task, protocol) -> that column's test-split records, with their per-case values
CaseLoader = Callable[[str, str, str], list[dict]]


@dataclass
class PairedTest:
    column: Column
    leader: Row
    runner_up: Row
    difference: float  # leader mean - runner-up mean, x100
    test: str | None = None  # CASE_TEST or SEED_TEST; None when no test was possible
    n: int = 0  # cases or seeds paired
    p: float | None = None
    reason: str = ""  # why there is no test

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA


@dataclass
class CriticalDifference:
    rows: list[Row]
    columns: list[Column]
    mean_ranks: dict[str, float]  # checkpoint id -> mean rank over `columns` among `rows`
    statistic: float
    p: float
    q_alpha: float
    cd: float
    cliques: list[list[str]]  # groups of checkpoint ids whose mean ranks differ by less than cd

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def case_values(per_case: list[dict] | None, metric: str) -> dict[str, float] | None:
    """Case id -> the case's share of the paper metric; None when the metric is not a mean over cases."""
    if not per_case:
        return None
    out = {}
    for case in per_case:
        if metric == "accuracy":
            value = float(case["label"] == case["pred"]) if "label" in case and "pred" in case else None
        else:
            value = case.get("iou" if metric == "iou_3d" else metric)
        if value is None or "id" not in case:
            return None
        out[str(case["id"])] = 100.0 * float(value)
    return out


def cell_case_means(cell: Cell, per_case: dict[tuple[int, float], list[dict]], metric: str) -> dict[str, float]:
    """Case id -> its value averaged over the cell's seeds; {} when any seed lacks per-case values."""
    sums: dict[str, list[float]] = {}
    for rec in cell.records:
        values = case_values(per_case.get((rec["seed"], rec["label_fraction"])), metric)
        if values is None:
            return {}
        for case, value in values.items():
            sums.setdefault(case, []).append(value)
    return {case: sum(v) / len(v) for case, v in sums.items()}


def paired_test(column: Column, leader: Row, runner_up: Row, cases: tuple[dict, dict]) -> PairedTest:
    """Wilcoxon over the cases both were tested on (values averaged over seeds), else a paired t-test
    over the seeds both ran (Wilcoxon over 3-5 seeds can never reach p < 0.05)."""
    a, b = leader.cells[column.key], runner_up.cells[column.key]
    result = PairedTest(column, leader, runner_up, a.mean - b.mean)
    common = sorted(set(cases[0]) & set(cases[1]))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        if len(common) >= MIN_CASES:
            x, y = np.array([cases[0][c] for c in common]), np.array([cases[1][c] for c in common])
            result.test, result.n = CASE_TEST, len(common)
            result.p = 1.0 if np.all(x == y) else float(stats.wilcoxon(x, y).pvalue)
            return result
        seeds = sorted(set(a.by_seed) & set(b.by_seed))
        if len(seeds) < 2:
            result.reason = (f"only {len(seeds)} common seed(s) and {len(common)} common cases with per-case "
                             "values: no paired test possible")
            return result
        x, y = np.array([a.by_seed[s] for s in seeds]), np.array([b.by_seed[s] for s in seeds])
        d = x - y
        if np.ptp(d) <= 1e-9 * max(1.0, float(np.abs(d).max())):  # (float noise aside) one difference
            if np.any(d != 0):
                result.reason = (f"the lead is the same on all {len(seeds)} seeds: with no variance a "
                                 "t-test is undefined")
                return result
            p = 1.0
        else:
            p = float(stats.ttest_rel(x, y).pvalue)
    result.test, result.n, result.p = SEED_TEST, len(seeds), p
    return result


def bootstrap_ci(values: list[float], seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean over cases (scipy.stats.bootstrap)."""
    if len(values) < 2 or len(set(values)) < 2:
        return None
    res = stats.bootstrap((np.asarray(values),), np.mean, confidence_level=CI_LEVEL, method="percentile",
                          n_resamples=BOOTSTRAP_RESAMPLES, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def annotate(table: Table, load_cases: CaseLoader) -> None:
    """Fill in the table's paired tests, its critical-difference summary and the case bootstrap of
    single-seed cells, loading per-case values only for the cells that need them."""
    loaded: dict[tuple[str, str, str], dict[tuple[int, float], list[dict]]] = {}

    def per_case(row: Row, column: Column) -> dict[tuple[int, float], list[dict]]:
        key = (row.checkpoint_id, column.task, column.protocol)
        if key not in loaded:
            loaded[key] = {(r["seed"], r["label_fraction"]): r.get("per_case") for r in load_cases(*key)}
        return loaded[key]

    for column in table.columns:
        ranked = sorted((r for r in table.rows if column.key in r.cells), key=lambda r: -r.cells[column.key].mean)
        for row in ranked:
            cell = row.cells[column.key]
            if len(cell.by_seed) == 1:
                values = cell_case_means(cell, per_case(row, column), column.metric)
                cell.case_ci = bootstrap_ci(list(values.values()))
        if len(ranked) >= 2:
            leader, runner_up = ranked[:2]
            cases = tuple(cell_case_means(r.cells[column.key], per_case(r, column), column.metric)
                          for r in (leader, runner_up))
            table.tests[column.key] = paired_test(column, leader, runner_up, cases)
    table.critical_difference = critical_difference(table)


def complete_block(table: Table) -> tuple[list[Row], list[Column]]:
    """Rows and columns forming a complete matrix (Friedman needs every checkpoint on every column):
    drop the least-covered row one at a time and keep the largest matrix of >= 3 rows x >= 2 columns."""
    rows = [r for r in table.rows if r.cells]
    best: tuple[list[Row], list[Column]] = ([], [])
    while len(rows) >= 3:
        columns = [c for c in table.columns if all(c.key in r.cells for r in rows)]
        if len(columns) >= 2 and len(rows) * len(columns) > len(best[0]) * len(best[1]):
            best = (list(rows), columns)
        rows.remove(min(rows, key=lambda r: (len(r.cells), r.name)))
    return best


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Critical value q_alpha of the Nemenyi test: the studentized range quantile / sqrt(2) (Demšar, eq. 5)."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)


def critical_difference(table: Table) -> CriticalDifference | None:
    rows, columns = complete_block(table)
    if not rows:
        return None
    k, n = len(rows), len(columns)
    matrix = np.array([[r.cells[c.key].mean for c in columns] for r in rows])  # k methods x n columns
    ranks = np.column_stack([stats.rankdata(-matrix[:, j]) for j in range(n)])  # 1 = best, ties averaged
    mean_ranks = {r.checkpoint_id: float(v) for r, v in zip(rows, ranks.mean(axis=1))}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        friedman = stats.friedmanchisquare(*matrix)
    statistic = float(friedman.statistic)
    p = float(friedman.pvalue) if not math.isnan(friedman.pvalue) else 1.0  # all tied in every column
    q = nemenyi_q(k)
    cd = q * math.sqrt(k * (k + 1) / (6 * n))
    return CriticalDifference(rows, columns, mean_ranks, statistic, p, q, cd, cliques(mean_ranks, cd))


def cliques(mean_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """Maximal runs of checkpoints (in mean-rank order) whose first and last differ by less than cd."""
    ordered = sorted(mean_ranks, key=lambda c: mean_ranks[c])
    groups: list[list[str]] = []
    for i, start in enumerate(ordered):
        group = [c for c in ordered[i:] if mean_ranks[c] - mean_ranks[start] < cd]
        if len(group) >= 2 and not (groups and set(group) <= set(groups[-1])):
            groups.append(group)
    return groups
