"""From the results store's flat rows to leaderboard tables: one cell per checkpoint x (task,
protocol), mean and 95% CI over seeds, then per-column best, colour scale, ranks and overall scores,
failed jobs, compute cost, and the label-efficiency series (every label fraction recorded).

Kept free of HTML so that the numbers can be tested on their own.
"""
from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import mean

from scipy import stats

from medssl_bench.downstream.families import FAMILIES
from medssl_bench.downstream.registry import TASKS
from medssl_bench.leaderboard.profiles import FLOOR, UNRECORDED, group_order, ranking_group

MAIN_LABEL_FRACTION = 1.0
CI_LEVEL = 0.95
# Column groups, in page order: each family's group(s) as its record titles them (classification is
# split by protocol), then tasks of no known family.
GROUP_TITLES = {**{group: title for family in FAMILIES.values() for group, title in family.group_titles().items()},
                "other": "Other tasks"}


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
    """One checkpoint on one column at one label fraction: test-split values (x100) per seed, and
    the records behind them."""
    by_seed: dict[int, float] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    best: bool = False
    shade: float = 0.0  # 0..1 position between the column's worst and best mean
    rank: float | None = None  # in its column, 1 = best
    case_ci: tuple[float, float] | None = None  # bootstrap over cases, for a single seed (leaderboard.stats)

    def __post_init__(self):
        self._summary: tuple[int, float, float | None] | None = None  # (n seeds, mean, half width)

    def _stats(self) -> tuple[int, float, float | None]:
        """Computed once per cell (the page asks many times); cells are complete before they are read."""
        n = len(self.by_seed)
        if self._summary is None or self._summary[0] != n:
            values = list(self.by_seed.values())
            centre = math.fsum(values) / n
            half = None
            if n >= 2:
                sd = math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (n - 1))
                half = t_quantile(n - 1) * sd / math.sqrt(n)
            self._summary = (n, centre, half)
        return self._summary

    @property
    def mean(self) -> float:
        return self._stats()[1]

    @property
    def ci_half_width(self) -> float | None:
        """Half width of the two-sided t-interval over seeds; None with a single seed. With 3-5
        seeds a percentile bootstrap over seeds has only a handful of distinct resamples and
        understates the spread, so the t-interval is the honest choice here."""
        return self._stats()[2]

    @property
    def ci(self) -> tuple[float, float] | None:
        """(low, high): the t-interval over seeds, else the bootstrap over cases, else None."""
        half = self.ci_half_width
        return (self.mean - half, self.mean + half) if half is not None else self.case_ci


@dataclass
class Cost:
    """Compute behind a row: evaluation jobs (wall time the store recorded) and pretraining (what the
    checkpoint's sidecar records). Hours are None when unknown, never 0 for 'unknown'."""
    eval_seconds: float = 0.0
    eval_jobs: int = 0
    eval_untimed: int = 0  # jobs with no recorded wall time
    eval_devices: dict[str, float] = field(default_factory=dict)  # device -> seconds
    pretrain_hours: float | None = None
    pretrain_device: str | None = None
    pretrain_note: str = "unknown"  # what is known when hours are not, or "none (random init)"

    @property
    def eval_hours(self) -> float | None:
        return self.eval_seconds / 3600 if self.eval_jobs > self.eval_untimed else None


@dataclass
class Row:
    checkpoint_id: str
    name: str
    method: str
    corpus_id: str | None
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    failures: dict[tuple[str, str], list[dict]] = field(default_factory=dict)  # main label fraction only
    failed_all: list[dict] = field(default_factory=list)  # every failed job of the checkpoint
    cost: Cost = field(default_factory=Cost)
    mean_rank: float | None = None
    mean_normalised: float | None = None
    badges: list[str] = field(default_factory=list)  # how the checkpoint was made, beyond its method


@dataclass
class Table:
    synthetic: bool
    columns: list[Column]
    rows: list[Row]
    # column key -> checkpoint id -> label fraction -> cell, for columns recorded at >= 2 fractions
    efficiency: dict[tuple[str, str], dict[str, dict[float, Cell]]] = field(default_factory=dict)
    tests: dict = field(default_factory=dict)  # column key -> leaderboard.stats.PairedTest
    critical_difference: object | None = None  # leaderboard.stats.CriticalDifference
    profile: str = UNRECORDED  # ranking_profile of its rows (random rows join every table)
    corpus: str | None = None  # a benchmark table's corpus

    @property
    def prefix(self) -> str:
        """Its ids on the page: "real" / "synthetic" for unrecorded profiles (as before profiles were
        recorded), else e.g. "real-paper", "real-benchmark-<corpus>"."""
        kind = "synthetic" if self.synthetic else "real"
        if self.profile == UNRECORDED:
            return kind
        return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(p for p in (kind, self.profile, self.corpus) if p))

    @property
    def failed_jobs(self) -> int:
        return sum(len(r.failed_all) for r in self.rows)

    @property
    def degenerate_columns(self) -> list[Column]:
        """Columns where every checkpoint scores 0.0 as shown (cells hold x 100 values; one decimal):
        nothing was learnt (e.g. only background), so the column ranks nothing and looks like a bug."""
        out = []
        for column in self.columns:
            means = _column_means(self, column)
            if means and max(abs(m) for m in means.values()) < 0.05:
                out.append(column)
        return out


@functools.lru_cache(maxsize=None)
def t_quantile(df: int) -> float:
    return float(stats.t.ppf(0.5 + CI_LEVEL / 2, df))


def column_group(task: str, protocol: str) -> str:
    family = FAMILIES.get(TASKS[task].family) if task in TASKS else None
    return family.group(protocol) if family is not None else "other"


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


def task_metric(task: str, fallback: str = "?") -> str:
    return TASKS[task].metric if task in TASKS else fallback


def is_synthetic(row: dict, checkpoint: dict | None) -> bool:
    """Evaluated on synthetic data, or pretrained on it: either way not a result about real images."""
    return bool(row.get("synthetic")) or bool(checkpoint and checkpoint.get("synthetic"))


def build_tables(results: list[dict], checkpoints: list[dict], failed: list[dict] = ()) -> list[Table]:
    """The real-data tables, then the synthetic-data ones, one per pretraining profile (ranking_group, in
    PROFILE_ORDER), from test-split rows of done jobs (`results`) and failed evaluations (`failed`). Random-init
    rows join every table of their kind. There is always a real-data table (empty: no results yet); synthetic
    tables only when there are synthetic rows."""
    by_id = {c["id"]: c for c in checkpoints}
    done: dict[tuple, list[dict]] = defaultdict(list)  # (synthetic, group) -> rows
    failures: dict[tuple, list[dict]] = defaultdict(list)
    for row in results:
        if row["split"] == "test" and row["status"] == "done":
            ckpt = by_id.get(row["checkpoint_id"])
            done[(is_synthetic(row, ckpt), ranking_group(ckpt))].append(row)
    for row in failed:
        ckpt = by_id.get(row["checkpoint_id"])
        failures[(is_synthetic(row, ckpt), ranking_group(ckpt))].append(row)
    tables = []
    for synthetic in (False, True):
        keys = {g for s, g in [*done, *failures] if s == synthetic}
        # random rows alone make one table; no rows at all: one empty real-data table
        groups = sorted(keys - {FLOOR}, key=group_order) or list(keys) or ([] if synthetic else [(UNRECORDED, None)])
        for group in groups:
            parts = [(synthetic, group)] + ([(synthetic, FLOOR)] if group != FLOOR else [])
            tables.append(_table([r for k in parts for r in done.get(k, [])],
                                 [r for k in parts for r in failures.get(k, [])], by_id, synthetic=synthetic,
                                 group=group))
    return tables


def _table(results: list[dict], failed: list[dict], by_id: dict[str, dict], *, synthetic: bool,
           group: tuple[str, str | None] = (UNRECORDED, None)) -> Table:
    columns: dict[tuple[str, str], Column] = {}
    rows: dict[str, Row] = {}
    by_fraction: dict[tuple[str, str], dict[str, dict[float, Cell]]] = defaultdict(lambda: defaultdict(dict))

    def row_of(rec: dict) -> Row:
        return rows.get(rec["checkpoint_id"]) or rows.setdefault(rec["checkpoint_id"], _new_row(rec, by_id))

    for rec in results:
        task, protocol = rec["task"], rec["protocol"]
        metric = task_metric(task, rec["metric"])
        _add_cost(row_of(rec).cost, rec)
        value = paper_value(rec, metric)
        if value is None:  # an undefined metric (NaN stored as null) is missing, not zero
            continue
        cell = by_fraction[(task, protocol)][rec["checkpoint_id"]].setdefault(rec["label_fraction"], Cell())
        cell.by_seed[rec["seed"]] = 100.0 * value
        cell.records.append(rec)
        if rec["label_fraction"] == MAIN_LABEL_FRACTION:
            columns.setdefault((task, protocol), Column(task, protocol, metric, column_group(task, protocol)))
            row_of(rec).cells[(task, protocol)] = cell
    for rec in failed:
        row = row_of(rec)
        _add_cost(row.cost, rec)
        row.failed_all.append(rec)
        if rec["label_fraction"] == MAIN_LABEL_FRACTION:  # failures stay visible even in a column of no results
            key = (rec["task"], rec["protocol"])
            columns.setdefault(key, Column(*key, task_metric(rec["task"]), column_group(*key)))
            row.failures.setdefault(key, []).append(rec)
    for row in rows.values():
        _pretrain_cost(row.cost, by_id.get(row.checkpoint_id))
    ordered = sorted(columns.values(), key=lambda c: (_group_order(c.group), _task_order(c.task), c.task, c.protocol))
    efficiency = {key: {ck: dict(sorted(cells.items())) for ck, cells in per_ckpt.items()}
                  for key, per_ckpt in by_fraction.items()
                  if len({f for cells in per_ckpt.values() for f in cells}) >= 2}
    table = Table(synthetic, ordered, list(rows.values()), efficiency, profile=group[0], corpus=group[1])
    _mark_columns(table)
    _score_rows(table)
    table.rows.sort(key=lambda r: (-(r.mean_normalised if r.mean_normalised is not None else -1), r.name))
    return table


def _new_row(rec: dict, by_id: dict[str, dict]) -> Row:
    ckpt = by_id.get(rec["checkpoint_id"]) or {}
    prov = rec.get("provenance") or {}
    method = ckpt.get("method") or prov.get("method") or "?"
    corpus = ckpt.get("corpus_id") or (prov.get("checkpoint") or {}).get("corpus_id")
    return Row(rec["checkpoint_id"], ckpt.get("name") or rec["checkpoint_id"], method, corpus,
               badges=checkpoint_badges(ckpt.get("sidecar") or {}))


def checkpoint_badges(sidecar: dict) -> list[str]:
    """What a reader must know to compare the row: its tuning budget, and whether it used labels."""
    badges = []
    label = sidecar.get("profile")
    if isinstance(label, str) and "(modified" in label:  # which pinned keys the run changed
        badges.append(f"profile {label}")
    if sidecar.get("sweep"):
        sweep = sidecar["sweep"]
        badges.append(f"tuned with {sweep.get('trials', '?')} trials (study {sweep.get('study', '?')})")
    if sidecar.get("category") == "supervised":
        used = ", ".join(d.get("dataset", "?") for d in sidecar.get("labels_consumed") or []) or "?"
        badges.append(f"supervised pretraining (labels of {used})")
    return badges


def device_of(host: dict | None) -> str:
    """'GPU (<name>)' / 'CPU' from a provenance host record, '?' when none was recorded."""
    if not isinstance(host, dict) or "cuda" not in host:
        return "?"
    return f"GPU ({host.get('gpu') or 'CUDA'})" if host["cuda"] else "CPU"


def _add_cost(cost: Cost, rec: dict) -> None:
    cost.eval_jobs += 1
    seconds = rec.get("wall_time_s")
    if seconds is None:
        cost.eval_untimed += 1
        return
    cost.eval_seconds += seconds
    device = device_of((rec.get("provenance") or {}).get("host"))
    cost.eval_devices[device] = cost.eval_devices.get(device, 0.0) + seconds


def _pretrain_cost(cost: Cost, ckpt: dict | None) -> None:
    """Pretraining compute from the checkpoint's sidecar: hours when it records them (`device_hours`,
    or `wall_seconds` x processes), else what it does record (epochs, steps, processes)."""
    ckpt = ckpt or {}
    side = ckpt.get("sidecar") or {}
    if ckpt.get("method") == "random":
        cost.pretrain_note = "none (random init)"
        cost.pretrain_hours = 0.0
        return
    world = side.get("world_size") or (side.get("ddp") or {}).get("world_size")
    if side.get("device_hours") is not None:
        cost.pretrain_hours = float(side["device_hours"])
    elif side.get("wall_seconds") is not None:
        cost.pretrain_hours = float(side["wall_seconds"]) * (world or 1) / 3600
    cost.pretrain_device = device_of(side.get("host")) if side.get("host") else None
    known = [f"{side['epoch']} epochs" if side.get("epoch") is not None else None,
             f"{side['step']} steps" if side.get("step") is not None else None,
             f"batch {(side.get('config') or {}).get('batch_size')}" if (side.get("config") or {}).get("batch_size")
             else None,
             f"{world} processes" if world else None]
    known = [k for k in known if k]
    if cost.pretrain_hours is None:
        cost.pretrain_note = ("unknown: the checkpoint records " + ", ".join(known) + " but no wall time") if known \
            else "unknown: the checkpoint records no compute"


def _column_means(table: Table, column: Column) -> dict[str, float]:
    return {r.checkpoint_id: r.cells[column.key].mean for r in table.rows if column.key in r.cells}


def _mark_columns(table: Table) -> None:
    """Best per column (ties all marked), each cell's place on the column's colour scale and its rank."""
    for column in table.columns:
        means = _column_means(table, column)
        if not means:  # a column of failed jobs only
            continue
        low, high = min(means.values()), max(means.values())
        ranks = average_ranks(means)
        for row in table.rows:
            cell = row.cells.get(column.key)
            if cell is not None:
                cell.best = math.isclose(cell.mean, high)
                cell.shade = (cell.mean - low) / (high - low) if high > low else 1.0
                cell.rank = ranks[row.checkpoint_id]


def average_ranks(means: dict[str, float]) -> dict[str, float]:
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
    for row in table.rows:
        cells = [row.cells[c.key] for c in table.columns if c.key in row.cells]
        row.mean_rank = mean(c.rank for c in cells) if cells else None
        row.mean_normalised = mean(c.shade for c in cells) if cells else None
