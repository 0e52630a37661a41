"""Leaderboard tables (leaderboard.aggregate) as one self-contained HTML page.

Every string that comes from the store (names, methods, ids, configs, dataset names, failure
reasons) goes through `esc`: a checkpoint named `<script>...` must render as text, not run.

Body row layout (the page's script relies on it): name, one cell per column, then mean rank, mean
normalised score, tasks covered, evaluation compute, pretraining compute, failed jobs.
"""
from __future__ import annotations

from datetime import datetime
from itertools import groupby

from medssl_bench.downstream.registry import TASKS
from medssl_bench.leaderboard.aggregate import GROUP_TITLES, MAIN_LABEL_FRACTION, Cell, Column, Cost, Row, Table
from medssl_bench.leaderboard.assets import CSS, JS
from medssl_bench.leaderboard.charts import esc
from medssl_bench.leaderboard.profiles import FLOOR, note
from medssl_bench.leaderboard.reference import column_records, reference
from medssl_bench.leaderboard.sections import (BEST_MARK, DEGENERATE_MARK, DEGENERATE_NOTE, MISSING, charts_section,
                                               code_versions, how_to_read, provenance_section, significance_section)

WARN = "\u26a0"
TRAILING = 6  # body cells after the task columns
REASONS_SHOWN = 12


def fmt(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def render_page(tables: list[Table], *, store_url: str, now: datetime) -> str:
    real = [t for t in tables if not t.synthetic]
    synthetic = [t for t in tables if t.synthetic]
    failed = sum(t.failed_jobs for t in tables)
    parts = [
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        # an empty icon: otherwise a browser asks the server for /favicon.ico (a 404 in its console)
        "<link rel=\"icon\" href=\"data:,\">",
        f"<title>bench leaderboard</title><style>{CSS}</style></head><body>",
        "<header><h1>bench leaderboard</h1>",
        f"<p class=\"meta\">Generated {esc(now.isoformat(timespec='seconds'))} from results store "
        f"<code>{esc(store_url)}</code>. Test split, label fraction {MAIN_LABEL_FRACTION:g}, "
        "scores \u00d7 100 in each task's paper metric. <a href=\"#how-to-read\">How to read this page</a>.</p>",
        f"<p class=\"meta failed-summary\">{WARN} {failed} failed evaluation job(s) in the store: see the "
        "Failed column and the marks in the cells (hover for the reasons).</p>" if failed else "",
        "</header>",
        "<section id=\"real\"><h2>Real-data results</h2>",
        *[part for table in real for part in _profile_parts(table, reference=True)],
        "</section>",
    ]
    if synthetic:
        parts += [
            "<section id=\"synthetic\" class=\"synthetic\">",
            "<div class=\"banner\" role=\"note\">SYNTHETIC DATA \u2014 these results come from synthetic "
            "images (evaluation data or pretraining corpus). They say nothing about medical performance "
            "and are ranked only among themselves, never with the real-data results above.</div>",
            "<h2>Synthetic-data results (not comparable with real-data results)</h2>",
            *[part for table in synthetic for part in _profile_parts(table, reference=False)],
            "</section>",
        ]
    parts += [how_to_read(), provenance_section(tables), f"<script>{JS}</script></body></html>\n"]
    return "\n".join(p for p in parts if p)


def _profile_parts(table: Table, *, reference: bool) -> list[str]:
    """One profile's table under its heading: which pretraining profile its rows share, and that they are
    ranked only among themselves (leaderboard.profiles)."""
    if not table.rows:
        return _table_parts(table, table.prefix, reference=reference)
    corpus = f" <small>on corpus <code>{esc(table.corpus)}</code></small>" if table.corpus else ""
    floor = "" if (table.profile, table.corpus) == FLOOR else \
        " Random initialisation (no pretraining) is shown in every table as its floor."
    return [f"<section class=\"profile\" id=\"profile-{esc(table.prefix)}\" data-profile=\"{esc(table.profile)}\">"
            f"<h3>Profile: {esc(table.profile)}{corpus}</h3><p class=\"profile-note\">{esc(note(table.profile))} "
            f"Ranked only among themselves: no rank, best mark or test compares them with another table.{floor}</p>",
            *_table_parts(table, table.prefix, reference=reference), "</section>"]


def _table_parts(table: Table, prefix: str, *, reference: bool) -> list[str]:
    if not table.rows:
        return ["<p class=\"empty\">No results recorded yet.</p>"]
    return [_toggles(table, prefix), _table_html(table, prefix, reference=reference),
            significance_section(table, prefix), charts_section(table, prefix, reference=reference)]


def _toggles(table: Table, prefix: str) -> str:
    """Task switches (VTAB style): hiding a column recomputes each row's means over the shown ones."""
    groups = []
    for group, cols in groupby(enumerate(table.columns, start=1), key=lambda ic: ic[1].group):
        boxes = "".join(f"<label><input type=\"checkbox\" checked data-col=\"{i}\"> {esc(c.task)} "
                        f"<small>{esc(c.protocol)}</small></label>" for i, c in cols)
        groups.append(f"<span class=\"toggle-group\"><label class=\"group-toggle\"><input type=\"checkbox\" checked "
                      f"data-group-toggle=\"{esc(group)}\"> <b>{esc(GROUP_TITLES.get(group, group))}</b></label>"
                      f"{boxes}</span>")
    return (f"<fieldset class=\"toggles\" data-table=\"table-{prefix}\"><legend>Tasks in the overall scores "
            "(untick to leave a task out; the means are recomputed)</legend>" + "".join(groups) + "</fieldset>")


def _table_html(table: Table, prefix: str, *, reference: bool) -> str:
    first = len(table.columns) + 1  # body cell index of the first overall column (0 is the name)
    head_groups = "".join(
        f"<th colspan=\"{len(idx)}\" data-group=\"{esc(g)}\" data-group-cols=\"{' '.join(map(str, idx))}\" "
        f"scope=\"colgroup\">{esc(GROUP_TITLES.get(g, g))}</th>"
        for g, idx in ((g, [i for i, _ in cols]) for g, cols in groupby(enumerate(table.columns, start=1),
                                                                     key=lambda ic: ic[1].group)))
    degenerate = {c.key for c in table.degenerate_columns}
    head_columns = "".join(_column_header(c, i + 1, c.key in degenerate) for i, c in enumerate(table.columns))
    sortable = lambda i, first_dir, title, text: (  # noqa: E731
        f"<th scope=\"col\" data-sort-col=\"{i}\" data-sort-first=\"{first_dir}\" title=\"{title}\">{text}</th>")
    head = (
        "<thead><tr class=\"groups\">"
        "<th rowspan=\"2\" scope=\"col\" data-sort-col=\"0\" data-sort-type=\"text\" data-sort-first=\"asc\">"
        "Checkpoint</th>"
        f"{head_groups}<th colspan=\"3\" scope=\"colgroup\" data-group=\"overall\">Overall</th>"
        "<th colspan=\"2\" scope=\"colgroup\" data-group=\"cost\">Compute</th>"
        f"<th rowspan=\"2\" scope=\"col\" data-sort-col=\"{first + 5}\" data-sort-first=\"desc\" "
        "title=\"evaluation jobs of this checkpoint that failed (hover a count for the reasons)\">Failed</th></tr>"
        f"<tr class=\"columns\">{head_columns}"
        + sortable(first, "asc", "mean over the shown tasks of the row's rank in each task column (1 = best)",
                   "Mean rank")
        + sortable(first + 1, "desc", "mean over the shown tasks of (score - column min) / (column max - column min)",
                   "Mean norm. score")
        + sortable(first + 2, "desc", "shown task columns this row has a result in", "Tasks")
        + sortable(first + 3, "desc", "evaluation compute: sum of the recorded wall time of every evaluation "
                   "job of this checkpoint (all label fractions and seeds, failed jobs included), hours", "Eval h")
        + sortable(first + 4, "desc", "pretraining compute from the checkpoint's record, device hours", "Pretrain h")
        + "</tr></thead>")
    body = "".join(_row_html(row, table, prefix, r) for r, row in enumerate(table.rows))
    foot = _reference_row(table) if reference else ""
    return (f"<div class=\"table-wrap\"><table class=\"leaderboard\" id=\"table-{prefix}\" data-table=\"{prefix}\" "
            f"data-columns=\"{len(table.columns)}\">"
            f"{head}<tbody>{body}</tbody>{foot}</table></div>")


def _column_header(column: Column, index: int, degenerate: bool = False) -> str:
    task = TASKS.get(column.task)
    title = f"{task.title if task else column.task} \u2014 {column.protocol}, {column.metric}"
    mark = ""
    if degenerate:
        title += f"; {DEGENERATE_NOTE}"
        mark = f" <span class=\"degenerate-mark\" title=\"{esc(DEGENERATE_NOTE)}\">{DEGENERATE_MARK}</span>"
    return (f"<th scope=\"col\" data-sort-col=\"{index}\" data-sort-first=\"desc\" data-task=\"{esc(column.task)}\" "
            f"data-protocol=\"{esc(column.protocol)}\" title=\"{esc(title)}\">{esc(column.task)}{mark}"
            f"<br><small>{esc(column.protocol)} \u00b7 {esc(column.metric)}</small></th>")


def _row_html(row: Row, table: Table, prefix: str, r: int) -> str:
    cells = "".join(_cell_html(row, c, table, f"prov-{prefix}-{r}-{i}") for i, c in enumerate(table.columns))
    covered = sum(1 for c in table.columns if c.key in row.cells)
    name = (f"<th scope=\"row\" data-sort=\"{esc(row.name.lower())}\">{esc(row.name)}"
            f"<br><small>{esc(row.method)} \u00b7 {esc(row.checkpoint_id)}</small>"
            + "".join(f"<br><small class=\"badge\">{esc(b)}</small>" for b in row.badges) + "</th>")
    overall = (
        f"<td class=\"overall mean-rank\" data-sort=\"{_sort_value(row.mean_rank)}\">{fmt(row.mean_rank, 2)}</td>"
        f"<td class=\"overall mean-norm\" data-sort=\"{_sort_value(row.mean_normalised)}\">"
        f"{fmt(row.mean_normalised, 3)}</td>"
        f"<td class=\"overall covered\" data-sort=\"{covered}\">{covered}/{len(table.columns)}</td>")
    return (f"<tr data-checkpoint=\"{esc(row.checkpoint_id)}\">{name}{cells}{overall}{_cost_cells(row.cost)}"
            f"{_failed_cell(row.failed_all)}</tr>")


def _sort_value(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


def _reasons(failures: list[dict]) -> str:
    lines = [f"{f['task']} / {f['protocol']}, label fraction {f['label_fraction']:g}, seed {f['seed']}: "
             f"{(f.get('reason') or 'no reason recorded')[:300]}" for f in failures[:REASONS_SHOWN]]
    more = len(failures) - REASONS_SHOWN
    return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def _cell_html(row: Row, column: Column, table: Table, anchor: str) -> str:
    cell, failures = row.cells.get(column.key), row.failures.get(column.key, [])
    if cell is None:
        if failures:
            return (f"<td class=\"missing failed\" data-sort=\"\" title=\"{esc(_reasons(failures))}\">"
                    f"{WARN} failed</td>")
        return f"<td class=\"missing\" data-sort=\"\" title=\"no result recorded\">{MISSING}</td>"
    half = cell.ci_half_width
    if half is not None:
        ci = f" <span class=\"ci\">\u00b1 {fmt(half)}</span>"
    elif cell.case_ci is not None:
        ci = (f" <span class=\"ci\" title=\"1 seed: 95% bootstrap interval over cases\">"
              f"[{fmt(cell.case_ci[0])}, {fmt(cell.case_ci[1])}]</span>")
    else:
        ci = " <span class=\"ci\">(1 seed)</span>"
    mark = f" <span class=\"best-mark\" title=\"best in column\">{BEST_MARK}</span>" if cell.best else ""
    mark += _lead_mark(table.tests.get(column.key), row)
    if failures:
        mark += f" <span class=\"failed-mark\" title=\"{esc(_reasons(failures))}\">{WARN}{len(failures)}</span>"
    in_domain = [r for r in cell.records if (r.get("provenance") or {}).get("transfer") is False]
    if in_domain:  # the checkpoint was pretrained on this task's training labels (Ark): not a transfer
        reason = (in_domain[0].get("provenance") or {}).get("transfer_reason") or "labels seen in pretraining"
        mark += f" <span class=\"in-domain\" title=\"{esc('not a transfer: ' + reason)}\">in-domain</span>"
    mark += _test_seen_mark(cell)
    # lighter = worse, darker green = better, per column; text stays readable at the dark end
    style = f"background-color: hsl(140, 55%, {96 - 36 * cell.shade:.0f}%)"
    classes = "score best" if cell.best else "score"
    return (f"<td class=\"{classes}\" data-sort=\"{_sort_value(cell.mean)}\" data-rank=\"{cell.rank:g}\" "
            f"data-norm=\"{_sort_value(cell.shade)}\" style=\"{style}\" title=\"{esc(_cell_summary(cell))}\">"
            f"<a href=\"#{anchor}\">{fmt(cell.mean)}{ci}</a>{mark}</td>")


def _test_seen_mark(cell: Cell) -> str:
    """A mark when the checkpoint's pretraining corpus held some of the cell's test images (the records'
    `test_overlap`, harness.app.leakage): the score is not a clean transfer."""
    overlaps = [(r.get("provenance") or {}).get("test_overlap") or {} for r in cell.records]
    seen = [o for o in overlaps if o.get("seen")]
    if not seen:
        return ""
    worst = max(seen, key=lambda o: o["seen"])
    title = (f"pretraining corpus {worst.get('corpus')} holds {worst['seen']} of the {worst.get('test_images')} "
             f"test images (same pixels), e.g. {', '.join(worst.get('seen_ids') or [])}")
    return f" <span class=\"test-seen\" title=\"{esc(title)}\">saw test</span>"


def _lead_mark(test, row: Row) -> str:
    """On the column leader's cell: whether its lead over the runner-up survived the paired test."""
    if test is None or test.leader is not row:
        return ""
    if test.p is None:
        return (f" <span class=\"ns\" title=\"{esc(f'lead over {test.runner_up.name} untested: {test.reason}')}\">"
                "untested</span>")
    detail = f"lead of {test.difference:.2f} over {test.runner_up.name}: {test.test}, n = {test.n}, p = {test.p:.3g}"
    if test.significant:
        return f" <span class=\"sig\" title=\"{esc(detail)}\">p&lt;.05</span>"
    return f" <span class=\"ns\" title=\"{esc(detail + ' (not significant)')}\">n.s.</span>"


def _cell_summary(cell: Cell) -> str:
    seeds = ", ".join(f"{s}: {v:.2f}" for s, v in sorted(cell.by_seed.items()))
    versions = ", ".join(sorted(code_versions(cell)))
    return f"seeds {seeds}; code {versions}; click for config and provenance"


def _cost_cells(cost: Cost) -> str:
    hours = cost.eval_hours
    devices = ", ".join(f"{d}: {s / 3600:.2f} h" for d, s in sorted(cost.eval_devices.items()))
    untimed = f"; {cost.eval_untimed} job(s) with no recorded time" if cost.eval_untimed else ""
    eval_title = f"{cost.eval_jobs} evaluation job(s); {devices or 'no recorded time'}{untimed}"
    eval_text = "unknown" if hours is None else f"{hours:.2f}" + ("+" if cost.eval_untimed else "")
    if cost.pretrain_hours is None:
        pre_text, pre_sort = "unknown", ""
    elif cost.pretrain_note.startswith("none"):
        pre_text, pre_sort = "none", "0"
    else:
        pre_text, pre_sort = f"{cost.pretrain_hours:.2f}", _sort_value(cost.pretrain_hours)
    pre_title = cost.pretrain_note if cost.pretrain_hours is None or pre_text == "none" else \
        f"{cost.pretrain_hours:.2f} device hours" + (f" on {cost.pretrain_device}" if cost.pretrain_device else "")
    return (f"<td class=\"cost eval-cost\" data-sort=\"{_sort_value(hours)}\" title=\"{esc(eval_title)}\">"
            f"{esc(eval_text)}</td><td class=\"cost pretrain-cost\" data-sort=\"{pre_sort}\" "
            f"title=\"{esc(pre_title)}\">{esc(pre_text)}</td>")


def _failed_cell(failures: list[dict]) -> str:
    if not failures:
        return "<td class=\"failed-count\" data-sort=\"0\">0</td>"
    return (f"<td class=\"failed-count has-failed\" data-sort=\"{len(failures)}\" title=\"{esc(_reasons(failures))}\">"
            f"{WARN} {len(failures)}</td>")


def _reference_row(table: Table) -> str:
    cells = []
    for column in table.columns:
        value, why = reference(column.task, column.protocol, column.metric, column_records(table, column))
        cells.append(f"<td class=\"missing\" title=\"{esc(why)}\">{MISSING}</td>" if value is None
                     else f"<td title=\"{esc(why)}\">{value:.2f}</td>")
    return ("<tfoot><tr class=\"reference\"><th scope=\"row\">Reported in paper<br>"
            "<small>LVM-Med (ResNet-50) \u00b7 not ranked</small></th>"
            f"{''.join(cells)}<td colspan=\"{TRAILING}\">not ranked</td></tr></tfoot>")
