"""From the results store's flat rows to leaderboard tables: one cell per checkpoint x (task,
protocol), mean and 95% CI over seeds, then per-column best, colour scale and overall scores.

Kept free of HTML so that the numbers can be tested on their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import mean, stdev

from scipy import stats

from downstream.registry import FAMILIES, TASKS

MAIN_LABEL_FRACTION = 1.0
CI_LEVEL = 0.95
# Column groups, in page order. Classification is split by protocol: a linear probe and a
# fine-tune measure different things and must not share a column group.
GROUP_TITLES = {
    "classification/linear": "Classification (linear probe)",
    "classification/knn": "Classification (kNN probe)",
    "classification/finetune": "Classification (fine-tune)",
    "segmentation_2d": "2D segmentation",
    "segmentation_3d": "3D segmentation",
    "detection": "Detection",
    "ood_segmentation": "Out-of-distribution segmentation",
    "other": "Other tasks",
}


@dataclass(frozen=True)
class Column:
    task: str
    protocol: str
    metric: str
    group: str

    @property
    def key(self) -> tuple[str, str]:
        return self.task, self.protocol


@dataclass
class Cell:
    """One checkpoint on one column: test-split values (x100) per seed, and the records behind them."""
    by_seed: dict[int, float] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    best: bool = False
    shade: float = 0.0  # 0..1 position between the column's worst and best mean

    @property
    def mean(self) -> float:
        return mean(self.by_seed.values())

    @property
    def ci_half_width(self) -> float | None:
        """Half width of the two-sided t-interval over seeds; None with a single seed. With 3-5
        seeds a percentile bootstrap over seeds has only a handful of distinct resamples and
        understates the spread, so the t-interval is the honest choice here."""
        n = len(self.by_seed)
        if n < 2:
            return None
        return float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1)) * stdev(self.by_seed.values()) / math.sqrt(n)


@dataclass
class Row:
    checkpoint_id: str
    name: str
    method: str
    corpus_id: str | None
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    mean_rank: float | None = None
    mean_normalised: float | None = None


@dataclass
class Table:
    synthetic: bool
    columns: list[Column]
    rows: list[Row]


def column_group(task: str, protocol: str) -> str:
    family = TASKS[task].family if task in TASKS else "other"
    if family == "classification":
        return f"classification/{protocol}"
    return family if family in FAMILIES else "other"


def _group_order(group: str) -> int:
    order = list(GROUP_TITLES)
    return order.index(group) if group in order else len(order)


def _task_order(task: str) -> int:
    order = list(TASKS)
    return order.index(task) if task in order else len(order)


def paper_value(row: dict, metric: str) -> float | None:
    """The record's value of the task's paper metric (the primary one, else from `metrics`)."""
    if row["metric"] == metric:
        return row["value"]
    return (row.get("metrics") or {}).get(metric)


def is_synthetic(row: dict, checkpoint: dict | None) -> bool:
    """Evaluated on synthetic data, or pretrained on it: either way not a result about real images."""
    return bool(row.get("synthetic")) or bool(checkpoint and checkpoint.get("synthetic"))


def build_tables(results: list[dict], checkpoints: list[dict]) -> list[Table]:
    """The real-data table, then the synthetic-data one (omitted when empty), from test-split rows
    at label fraction 1.0."""
    by_id = {c["id"]: c for c in checkpoints}
    partitions: dict[bool, list[dict]] = {False: [], True: []}
    for row in results:
        if row["split"] != "test" or row["status"] != "done" or row["label_fraction"] != MAIN_LABEL_FRACTION:
            continue
        partitions[is_synthetic(row, by_id.get(row["checkpoint_id"]))].append(row)
    tables = [_table(partitions[False], by_id, synthetic=False)]
    if partitions[True]:
        tables.append(_table(partitions[True], by_id, synthetic=True))
    return tables


def _table(results: list[dict], by_id: dict[str, dict], *, synthetic: bool) -> Table:
    columns: dict[tuple[str, str], Column] = {}
    rows: dict[str, Row] = {}
    for rec in results:
        task, protocol = rec["task"], rec["protocol"]
        metric = TASKS[task].metric if task in TASKS else rec["metric"]
        value = paper_value(rec, metric)
        if value is None:  # an undefined metric (NaN stored as null) is missing, not zero
            continue
        columns.setdefault((task, protocol), Column(task, protocol, metric, column_group(task, protocol)))
        row = rows.get(rec["checkpoint_id"]) or rows.setdefault(rec["checkpoint_id"], _new_row(rec, by_id))
        cell = row.cells.setdefault((task, protocol), Cell())
        cell.by_seed[rec["seed"]] = 100.0 * value
        cell.records.append(rec)
    ordered = sorted(columns.values(), key=lambda c: (_group_order(c.group), _task_order(c.task), c.task, c.protocol))
    table = Table(synthetic, ordered, list(rows.values()))
    _mark_columns(table)
    _score_rows(table)
    table.rows.sort(key=lambda r: (-(r.mean_normalised if r.mean_normalised is not None else -1), r.name))
    return table


def _new_row(rec: dict, by_id: dict[str, dict]) -> Row:
    ckpt = by_id.get(rec["checkpoint_id"]) or {}
    prov = rec.get("provenance") or {}
    method = ckpt.get("method") or prov.get("method") or "?"
    corpus = ckpt.get("corpus_id") or (prov.get("checkpoint") or {}).get("corpus_id")
    return Row(rec["checkpoint_id"], ckpt.get("name") or rec["checkpoint_id"], method, corpus)


def _column_means(table: Table, column: Column) -> dict[str, float]:
    return {r.checkpoint_id: r.cells[column.key].mean for r in table.rows if column.key in r.cells}


def _mark_columns(table: Table) -> None:
    """Best per column (ties all marked) and each cell's place on the column's colour scale."""
    for column in table.columns:
        means = _column_means(table, column)
        low, high = min(means.values()), max(means.values())
        for row in table.rows:
            cell = row.cells.get(column.key)
            if cell is not None:
                cell.best = math.isclose(cell.mean, high)
                cell.shade = (cell.mean - low) / (high - low) if high > low else 1.0


def _average_ranks(means: dict[str, float]) -> dict[str, float]:
    """Rank 1 = best (every paper metric here is higher-is-better); ties share their average rank."""
    ordered = sorted(means.items(), key=lambda kv: -kv[1])
    ranks, i = {}, 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and math.isclose(ordered[j + 1][1], ordered[i][1]):
            j += 1
        for k in range(i, j + 1):
            ranks[ordered[k][0]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _score_rows(table: Table) -> None:
    """Mean rank and mean min-max normalised score over the columns a row has (missing columns are
    left out of its means, not counted as zero; the page shows how many columns each row covers)."""
    ranks: dict[str, list[float]] = {r.checkpoint_id: [] for r in table.rows}
    scores: dict[str, list[float]] = {r.checkpoint_id: [] for r in table.rows}
    for column in table.columns:
        means = _column_means(table, column)
        for ckpt, rank in _average_ranks(means).items():
            ranks[ckpt].append(rank)
        for row in table.rows:
            if column.key in row.cells:
                scores[row.checkpoint_id].append(row.cells[column.key].shade)
    for row in table.rows:
        row.mean_rank = mean(ranks[row.checkpoint_id]) if ranks[row.checkpoint_id] else None
        row.mean_normalised = mean(scores[row.checkpoint_id]) if scores[row.checkpoint_id] else None
