"""Leaderboard tables (leaderboard.aggregate) as one self-contained HTML page.

Every string that comes from the store (names, methods, ids, configs, dataset names) goes through
`esc`: a checkpoint named `<script>...` must render as text, not run.
"""
from __future__ import annotations

import html
import json
from datetime import datetime
from itertools import groupby

from downstream.registry import TASKS
from leaderboard.aggregate import CI_LEVEL, GROUP_TITLES, MAIN_LABEL_FRACTION, Cell, Column, Row, Table
from leaderboard.assets import CSS, JS

MISSING = "\u2014"  # an em dash: never a zero
BEST_MARK = "\u2605"


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def render_page(tables: list[Table], *, store_url: str, now: datetime) -> str:
    real = next(t for t in tables if not t.synthetic)
    synthetic = next((t for t in tables if t.synthetic), None)
    parts = [
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>bench leaderboard</title><style>{CSS}</style></head><body>",
        "<header><h1>bench leaderboard</h1>",
        f"<p class=\"meta\">Generated {esc(now.isoformat(timespec='seconds'))} from results store "
        f"<code>{esc(store_url)}</code>. Test split, label fraction {MAIN_LABEL_FRACTION:g}, "
        "scores \u00d7 100 in each task's paper metric. <a href=\"#how-to-read\">How to read this page</a>.</p>",
        "</header>",
        "<section id=\"real\"><h2>Real-data results</h2>",
        _table_html(real, "real", reference=True),
        "</section>",
    ]
    if synthetic is not None:
        parts += [
            "<section id=\"synthetic\" class=\"synthetic\">",
            "<div class=\"banner\" role=\"note\">SYNTHETIC DATA \u2014 these results come from synthetic "
            "images (evaluation data or pretraining corpus). They say nothing about medical performance "
            "and are ranked only among themselves, never with the real-data results above.</div>",
            "<h2>Synthetic-data results (not comparable with real-data results)</h2>",
            _table_html(synthetic, "synthetic", reference=False),
            "</section>",
        ]
    parts += [_how_to_read(), _provenance_section(tables), f"<script>{JS}</script></body></html>\n"]
    return "\n".join(parts)


def _table_html(table: Table, prefix: str, *, reference: bool) -> str:
    if not table.rows:
        return "<p class=\"empty\">No results recorded yet.</p>"
    groups = [(g, list(cols)) for g, cols in groupby(table.columns, key=lambda c: c.group)]
    first = len(table.columns) + 1  # body cell index of the first overall column (0 is the name)
    head_groups = "".join(
        f"<th colspan=\"{len(cols)}\" data-group=\"{esc(g)}\" scope=\"colgroup\">{esc(GROUP_TITLES.get(g, g))}</th>"
        for g, cols in groups)
    head_columns = "".join(_column_header(c, i + 1) for i, c in enumerate(table.columns))
    head = (
        "<thead><tr class=\"groups\">"
        "<th rowspan=\"2\" scope=\"col\" data-sort-col=\"0\" data-sort-type=\"text\" data-sort-first=\"asc\">"
        "Checkpoint</th>"
        f"{head_groups}<th colspan=\"3\" scope=\"colgroup\" data-group=\"overall\">Overall</th></tr>"
        f"<tr class=\"columns\">{head_columns}"
        f"<th scope=\"col\" data-sort-col=\"{first}\" data-sort-first=\"asc\" "
        "title=\"mean over the row's tasks of its rank in each task column (1 = best)\">Mean rank</th>"
        f"<th scope=\"col\" data-sort-col=\"{first + 1}\" data-sort-first=\"desc\" "
        "title=\"mean over the row's tasks of (score - column min) / (column max - column min)\">"
        "Mean norm. score</th>"
        f"<th scope=\"col\" data-sort-col=\"{first + 2}\" data-sort-first=\"desc\">Tasks</th></tr></thead>"
    )
    body = "".join(_row_html(row, table, prefix, r) for r, row in enumerate(table.rows))
    foot = _reference_row(table.columns) if reference else ""
    return (f"<div class=\"table-wrap\"><table class=\"leaderboard\" id=\"table-{prefix}\" data-table=\"{prefix}\">"
            f"{head}<tbody>{body}</tbody>{foot}</table></div>")


def _column_header(column: Column, index: int) -> str:
    task = TASKS.get(column.task)
    title = f"{task.title if task else column.task} \u2014 {column.protocol}, {column.metric}"
    return (f"<th scope=\"col\" data-sort-col=\"{index}\" data-sort-first=\"desc\" data-task=\"{esc(column.task)}\" "
            f"data-protocol=\"{esc(column.protocol)}\" title=\"{esc(title)}\">{esc(column.task)}"
            f"<br><small>{esc(column.protocol)} \u00b7 {esc(column.metric)}</small></th>")


def _row_html(row: Row, table: Table, prefix: str, r: int) -> str:
    cells = "".join(_cell_html(row.cells.get(c.key), f"prov-{prefix}-{r}-{i}")
                    for i, c in enumerate(table.columns))
    covered = sum(1 for c in table.columns if c.key in row.cells)
    name = (f"<th scope=\"row\" data-sort=\"{esc(row.name.lower())}\">{esc(row.name)}"
            f"<br><small>{esc(row.method)} \u00b7 {esc(row.checkpoint_id)}</small></th>")
    overall = (
        f"<td class=\"overall\" data-sort=\"{_sort_value(row.mean_rank)}\">{fmt(row.mean_rank, 2)}</td>"
        f"<td class=\"overall\" data-sort=\"{_sort_value(row.mean_normalised)}\">{fmt(row.mean_normalised, 3)}</td>"
        f"<td class=\"overall\" data-sort=\"{covered}\">{covered}/{len(table.columns)}</td>")
    return f"<tr data-checkpoint=\"{esc(row.checkpoint_id)}\">{name}{cells}{overall}</tr>"


def _sort_value(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


def _cell_html(cell: Cell | None, anchor: str) -> str:
    if cell is None:
        return f"<td class=\"missing\" data-sort=\"\" title=\"no result recorded\">{MISSING}</td>"
    half = cell.ci_half_width
    ci = f" <span class=\"ci\">\u00b1 {fmt(half)}</span>" if half is not None else " <span class=\"ci\">(1 seed)</span>"
    mark = f" <span class=\"best-mark\" title=\"best in column\">{BEST_MARK}</span>" if cell.best else ""
    # lighter = worse, darker green = better, per column; text stays readable at the dark end
    style = f"background-color: hsl(140, 55%, {96 - 36 * cell.shade:.0f}%)"
    classes = "score best" if cell.best else "score"
    return (f"<td class=\"{classes}\" data-sort=\"{_sort_value(cell.mean)}\" style=\"{style}\" "
            f"title=\"{esc(_cell_summary(cell))}\"><a href=\"#{anchor}\">{fmt(cell.mean)}{ci}</a>{mark}</td>")


def _cell_summary(cell: Cell) -> str:
    seeds = ", ".join(f"{s}: {v:.2f}" for s, v in sorted(cell.by_seed.items()))
    versions = ", ".join(sorted(_code_versions(cell)))
    return f"seeds {seeds}; code {versions}; click for config and provenance"


def _code_versions(cell: Cell) -> set[str]:
    out = set()
    for rec in cell.records:
        code = (rec.get("provenance") or {}).get("code") or {}
        sha = str(code.get("git_sha") or "unknown")
        out.add(sha[:12] + (" (dirty)" if code.get("dirty") else ""))
    return out


def _reference_row(columns: list[Column]) -> str:
    cells = []
    for column in columns:
        task = TASKS.get(column.task)
        value = task.reported.get(column.protocol) if task else None
        cells.append(f"<td class=\"missing\" title=\"not reported in the paper\">{MISSING}</td>" if value is None
                     else f"<td title=\"LVM-Med paper, ResNet-50\">{value:.2f}</td>")
    return ("<tfoot><tr class=\"reference\"><th scope=\"row\">Reported in paper<br>"
            "<small>LVM-Med (ResNet-50) \u00b7 not ranked</small></th>"
            f"{''.join(cells)}<td colspan=\"3\">not ranked</td></tr></tfoot>")


def _how_to_read() -> str:
    level = f"{CI_LEVEL:.0%}"
    return f"""<section id="how-to-read"><h2>How to read this page</h2>
<ul>
<li><b>Cells</b>: mean over seeds of the test-split score (\u00d7 100) in the task's paper metric, \u00b1 the
half-width of a {level} Student-t confidence interval over seeds (mean \u00b1 t<sub>0.975, n-1</sub> \u00b7 s / \u221an,
s the sample standard deviation of the n seeds). A t-interval is used rather than a bootstrap because
with 3\u20135 seeds a bootstrap over seeds has only a handful of distinct resamples. A single seed has no interval.
Hover a cell for its seeds; click it for its configuration and provenance.</li>
<li><b>Colour</b>: per column, from the column's lowest mean (light) to its highest (dark green).
{BEST_MARK} marks the best mean in each column (ties are all marked). The best mean is not a significant
lead when the intervals overlap.</li>
<li><b>Missing</b>: {MISSING} means no result was recorded for that checkpoint and task. It is never
counted as zero.</li>
<li><b>Mean rank</b>: in each task column the checkpoints with a result are ranked (1 = best, ties share the
average rank); a row's mean rank is the mean over the columns it has. <b>Mean norm. score</b>: in each column,
(score \u2212 column min) / (column max \u2212 column min) over the rows of that table (1 when all are equal),
averaged over the columns the row has. <b>Tasks</b> shows how many columns a row covers: a row with missing
tasks is averaged over fewer columns, so compare rows with equal coverage. Rows start sorted by mean
normalised score; click any header to sort (missing values stay last).</li>
<li><b>Synthetic data</b>: results evaluated on synthetic images, or from checkpoints pretrained on a
synthetic corpus, are in their own table with its own ranking.</li>
<li><b>Reported in paper</b>: the LVM-Med paper's published numbers (ResNet-50) for reference, not ranked
and not part of the colour scale or the overall scores.</li>
</ul></section>"""


def _provenance_section(tables: list[Table]) -> str:
    parts = ["<section id=\"provenance\"><h2>Provenance of every cell</h2>"]
    for table in tables:
        prefix = "synthetic" if table.synthetic else "real"
        for r, row in enumerate(table.rows):
            for i, column in enumerate(table.columns):
                cell = row.cells.get(column.key)
                if cell is not None:
                    parts.append(_provenance_entry(cell, row, column, f"prov-{prefix}-{r}-{i}", prefix))
    parts.append("</section>")
    return "\n".join(parts)


def _distinct_json(values) -> str:
    """The distinct values as pretty JSON, one block each (usually one: the seeds share a config)."""
    seen = []
    for value in values:
        text = json.dumps(value, indent=1, sort_keys=True, default=str)
        if text not in seen:
            seen.append(text)
    return "".join(f"<pre>{esc(t)}</pre>" for t in seen)


def _provenance_entry(cell: Cell, row: Row, column: Column, anchor: str, prefix: str) -> str:
    provs = [rec.get("provenance") or {} for rec in cell.records]
    datasets = {f"{(p.get('data') or {}).get('dataset', '?')} (content hash {rec.get('data_hash') or '?'})"
                for p, rec in zip(provs, cell.records)}
    seeds = ", ".join(f"{s} \u2192 {v:.2f}" for s, v in sorted(cell.by_seed.items()))
    fields = [
        ("Checkpoint", f"{esc(row.name)} <small>({esc(row.checkpoint_id)})</small>"),
        ("Method", esc(row.method)),
        ("Corpus id", esc(row.corpus_id or "unknown")),
        ("Task / protocol", f"{esc(column.task)} / {esc(column.protocol)} ({esc(column.metric)}, test split)"),
        ("Seeds", esc(seeds)),
        ("Evaluation data", esc("; ".join(sorted(datasets)))),
        ("Profile", esc(", ".join(sorted({str(p.get("profile", "?")) for p in provs})))),
        ("Code version", esc(", ".join(sorted(_code_versions(cell))))),
        ("Protocol config", _distinct_json(rec.get("protocol_config") for rec in cell.records)),
        ("Pretraining config", _distinct_json(p.get("pretrain_config") for p in provs)),
    ]
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields)
    label = "synthetic data" if prefix == "synthetic" else "real data"
    return (f"<div class=\"prov\" id=\"{anchor}\"><b>{esc(row.name)} \u2014 {esc(column.task)} "
            f"({esc(column.protocol)})</b> <small>{label}</small><dl>{body}</dl></div>")
