"""Inline SVG charts (no script, no network): per-column bar charts with CI whiskers, a per-checkpoint
profile across columns, label-efficiency curves and the critical-difference diagram. Every label is
escaped; every mark carries a <title> (the browser's tooltip) with its exact numbers."""
from __future__ import annotations

import html
import math

from medssl_bench.leaderboard.aggregate import Cell, Column, Row

# Tableau 10: distinguishable, and readable on white; past ten series the dash pattern changes.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
DASHES = ("", "6 3", "2 2", "8 3 2 3")
FONT = "font-family=\"system-ui, sans-serif\" font-size=\"11\""
LABEL_CHARS = 26


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def series_style(index: int) -> tuple[str, str]:
    return PALETTE[index % len(PALETTE)], DASHES[(index // len(PALETTE)) % len(DASHES)]


def _svg(width: float, height: float, label: str, body: str) -> str:
    return (f"<svg class=\"chart\" width=\"{width:.0f}\" height=\"{height:.0f}\" "
            f"viewBox=\"0 0 {width:.0f} {height:.0f}\" role=\"img\" aria-label=\"{esc(label)}\" {FONT}>"
            f"<title>{esc(label)}</title>{body}</svg>")


def _ci_text(cell: Cell) -> str:
    ci = cell.ci
    return f"{cell.mean:.2f}" + (f" (95% CI {ci[0]:.2f} to {ci[1]:.2f})" if ci else " (no interval)")


def bar_chart(column: Column, entries: list[tuple[Row, Cell]], reference: float | None) -> str:
    """Horizontal bars (score x 100 on a 0-100 axis, so lengths compare honestly), 95% CI whiskers,
    best first; the paper's reported value as a dashed line."""
    left, plot, bar_h, gap, top = 190, 380, 14, 6, 22
    height = top + len(entries) * (bar_h + gap) + 26
    x = lambda v: left + plot * min(max(v, 0.0), 100.0) / 100.0  # noqa: E731
    parts = []
    for tick in range(0, 101, 20):
        parts.append(f"<line x1=\"{x(tick):.1f}\" x2=\"{x(tick):.1f}\" y1=\"{top - 4}\" y2=\"{height - 22}\" "
                     f"stroke=\"#d0d7de\"/><text x=\"{x(tick):.1f}\" y=\"{height - 8}\" "
                     f"text-anchor=\"middle\">{tick}</text>")
    for i, (row, cell) in enumerate(sorted(entries, key=lambda e: -e[1].mean)):
        y = top + i * (bar_h + gap)
        tip = esc(f"{row.name}: {_ci_text(cell)}, {len(cell.by_seed)} seed(s)")
        parts.append(f"<g><title>{tip}</title>"
                     f"<text x=\"{left - 6}\" y=\"{y + bar_h - 3}\" text-anchor=\"end\">{esc(short(row.name))}</text>"
                     f"<rect x=\"{left}\" y=\"{y}\" width=\"{x(cell.mean) - left:.1f}\" height=\"{bar_h}\" "
                     f"fill=\"{'#2da44e' if cell.best else '#8cc5a0'}\"/>")
        if cell.ci:
            lo, hi, mid = x(cell.ci[0]), x(cell.ci[1]), y + bar_h / 2
            whisker = f"M{lo:.1f},{mid}H{hi:.1f}M{lo:.1f},{mid - 4}V{mid + 4}M{hi:.1f},{mid - 4}V{mid + 4}"
            parts.append(f"<path d=\"{whisker}\" stroke=\"#1b1f24\" stroke-width=\"1.2\" fill=\"none\"/>")
        parts.append(f"<text x=\"{left + plot + 6}\" y=\"{y + bar_h - 3}\">{cell.mean:.1f}</text></g>")
    if reference is not None:
        parts.append(f"<g><title>{esc(f'reported in the LVM-Med paper (ResNet-50): {reference:.2f}')}</title>"
                     f"<line x1=\"{x(reference):.1f}\" x2=\"{x(reference):.1f}\" y1=\"{top - 10}\" "
                     f"y2=\"{height - 22}\" stroke=\"#9a6700\" stroke-width=\"1.5\" stroke-dasharray=\"5 3\"/>"
                     f"<text x=\"{x(reference):.1f}\" y=\"{top - 12}\" text-anchor=\"middle\" fill=\"#9a6700\">"
                     "paper</text></g>")
    label = f"{column.task} ({column.protocol}, {column.metric} x 100): mean and 95% CI per checkpoint"
    return _svg(left + plot + 50, height, label, "".join(parts))


def profile_chart(row: Row, columns: list[Column]) -> str:
    """One checkpoint across every column: bar height = its normalised score in the column (0 = the
    column's worst mean, 1 = its best); a grey cross where it has no result."""
    step, left, top, plot_h = 16, 34, 8, 80
    width, height = left + step * len(columns) + 10, top + plot_h + 90
    axis = top + plot_h
    parts = [f"<line x1=\"{left}\" x2=\"{width - 6}\" y1=\"{axis}\" y2=\"{axis}\" stroke=\"#57606a\"/>"]
    for v in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - v)
        parts.append(f"<text x=\"{left - 4}\" y=\"{y + 4:.1f}\" text-anchor=\"end\">{v:g}</text>"
                     f"<line x1=\"{left}\" x2=\"{width - 6}\" y1=\"{y:.1f}\" y2=\"{y:.1f}\" stroke=\"#eaeef2\"/>")
    for i, column in enumerate(columns):
        cx, cell = left + i * step + step / 2, row.cells.get(column.key)
        name = f"{column.task} \u00b7 {column.protocol}"
        if cell is None:
            parts.append(f"<g><title>{esc(name)}: missing (no result)</title><text x=\"{cx:.1f}\" "
                         f"y=\"{top + plot_h - 3}\" text-anchor=\"middle\" fill=\"#8c959f\">\u00d7</text></g>")
        else:
            h = max(plot_h * cell.shade, 1.0)
            tip = f"{name}: {cell.mean:.2f}, normalised {cell.shade:.2f}, rank {cell.rank:g}"
            colour = "#2da44e" if cell.best else "#4e79a7"
            parts.append(f"<rect x=\"{cx - step / 2 + 2:.1f}\" y=\"{top + plot_h - h:.1f}\" width=\"{step - 4}\" "
                         f"height=\"{h:.1f}\" fill=\"{colour}\"><title>{esc(tip)}</title></rect>")
        parts.append(f"<text transform=\"translate({cx + 3:.1f},{top + plot_h + 6}) rotate(60)\" font-size=\"9\">"
                     f"{esc(short(name, 18))}</text>")
    return _svg(width, height, f"profile of {row.name} across tasks (normalised score per column)", "".join(parts))


def _fraction_label(f: float) -> str:
    return f"{f * 100:g}%"


def efficiency_chart(column: Column, series: list[tuple[int, Row, dict[float, Cell]]]) -> str:
    """Score against label fraction (log axis), one line per checkpoint, 95% CI whiskers. Each series
    carries its checkpoint's style index, so a checkpoint keeps its colour from chart to chart."""
    fractions = sorted({f for _, _, cells in series for f in cells})
    values = [v for _, _, cells in series for c in cells.values() for v in (c.ci or (c.mean, c.mean))]
    low, high = math.floor(min(values) / 5) * 5, math.ceil(max(values) / 5) * 5
    high = high if high > low else low + 5
    left, top, plot_w, plot_h, legend_w = 44, 12, 300, 180, 210
    logs = [math.log10(f) for f in fractions]
    span = (max(logs) - min(logs)) or 1.0
    x = lambda f: left + plot_w * (math.log10(f) - min(logs)) / span  # noqa: E731
    y = lambda v: top + plot_h * (1 - (v - low) / (high - low))  # noqa: E731
    parts = [f"<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" "
             "stroke=\"#d0d7de\"/>"]
    for f in fractions:
        parts.append(f"<text x=\"{x(f):.1f}\" y=\"{top + plot_h + 14}\" text-anchor=\"middle\">"
                     f"{_fraction_label(f)}</text>")
    for v in (low, (low + high) / 2, high):
        parts.append(f"<text x=\"{left - 4}\" y=\"{y(v) + 4:.1f}\" text-anchor=\"end\">{v:g}</text>")
    parts.append(f"<text x=\"{left + plot_w / 2}\" y=\"{top + plot_h + 30}\" text-anchor=\"middle\">"
                 "labelled training data (log scale)</text>")
    for i, (style, row, cells) in enumerate(series):
        colour, dash = series_style(style)
        points = " ".join(f"{x(f):.1f},{y(c.mean):.1f}" for f, c in cells.items())
        tips = "; ".join(f"{_fraction_label(f)}: {_ci_text(c)}" for f, c in cells.items())
        marks = "".join(f"<circle cx=\"{x(f):.1f}\" cy=\"{y(c.mean):.1f}\" r=\"3\" fill=\"{colour}\"/>"
                        + (f"<line x1=\"{x(f):.1f}\" x2=\"{x(f):.1f}\" y1=\"{y(c.ci[0]):.1f}\" "
                           f"y2=\"{y(c.ci[1]):.1f}\" stroke=\"{colour}\"/>" if c.ci else "")
                        for f, c in cells.items())
        ly = top + 6 + i * 15
        parts.append(f"<g><title>{esc(f'{row.name}: {tips}')}</title>"
                     f"<polyline points=\"{points}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" "
                     f"stroke-dasharray=\"{dash}\"/>{marks}"
                     f"<line x1=\"{left + plot_w + 14}\" x2=\"{left + plot_w + 34}\" y1=\"{ly}\" y2=\"{ly}\" "
                     f"stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>"
                     f"<text x=\"{left + plot_w + 38}\" y=\"{ly + 4}\">{esc(short(row.name))}</text></g>")
    height = max(top + plot_h + 40, top + 15 * len(series) + 10)
    label = f"{column.task} ({column.protocol}): {column.metric} x 100 against label fraction"
    return _svg(left + plot_w + legend_w, height, label, "".join(parts))


def cd_diagram(names: dict[str, str], mean_ranks: dict[str, float], cd: float, groups: list[list[str]]) -> str:
    """Demšar's critical-difference diagram: mean ranks on an axis (1 = best, left), the CD as a
    ruler, thick bars joining checkpoints whose mean ranks differ by less than the CD."""
    k = len(mean_ranks)
    left, right, axis_y = 200, 200, 48
    plot = max(240, 60 * (k - 1))
    x = lambda r: left + plot * (r - 1) / (k - 1)  # noqa: E731
    ordered = sorted(mean_ranks, key=lambda c: mean_ranks[c])
    half = math.ceil(k / 2)
    bars_h = 8 * len(groups)
    height = axis_y + bars_h + 18 * half + 30
    parts = [f"<line x1=\"{x(1)}\" x2=\"{x(k)}\" y1=\"{axis_y}\" y2=\"{axis_y}\" stroke=\"#1b1f24\"/>"]
    for r in range(1, k + 1):
        parts.append(f"<line x1=\"{x(r):.1f}\" x2=\"{x(r):.1f}\" y1=\"{axis_y - 5}\" y2=\"{axis_y}\" "
                     f"stroke=\"#1b1f24\"/><text x=\"{x(r):.1f}\" y=\"{axis_y - 8}\" text-anchor=\"middle\">{r}</text>")
    cd_end = min(x(1) + plot * cd / (k - 1), x(k))
    parts.append(f"<g><title>critical difference {cd:.2f}</title><path d=\"M{x(1)},{14}H{cd_end:.1f}M{x(1)},{10}V{18}"
                 f"M{cd_end:.1f},{10}V{18}\" stroke=\"#cf222e\" stroke-width=\"1.5\"/>"
                 f"<text x=\"{(x(1) + cd_end) / 2:.1f}\" y=\"{9}\" text-anchor=\"middle\" fill=\"#cf222e\">"
                 f"CD = {cd:.2f}</text></g>")
    for g, group in enumerate(groups):
        gy = axis_y + 6 + 8 * g
        lo, hi = x(mean_ranks[group[0]]) - 3, x(mean_ranks[group[-1]]) + 3
        tip = "not significantly different: " + ", ".join(names[c] for c in group)
        parts.append(f"<line x1=\"{lo:.1f}\" x2=\"{hi:.1f}\" y1=\"{gy}\" y2=\"{gy}\" stroke=\"#1b1f24\" "
                     f"stroke-width=\"4\"><title>{esc(tip)}</title></line>")
    for i, ckpt in enumerate(ordered):
        on_left = i < half
        slot = i if on_left else k - 1 - i
        ly = axis_y + bars_h + 20 + 18 * slot
        cx, tx = x(mean_ranks[ckpt]), (left - 10 if on_left else left + plot + 10)
        parts.append(f"<g><title>{esc(f'{names[ckpt]}: mean rank {mean_ranks[ckpt]:.2f}')}</title>"
                     f"<polyline points=\"{cx:.1f},{axis_y} {cx:.1f},{ly} {tx},{ly}\" fill=\"none\" "
                     f"stroke=\"#57606a\"/><text x=\"{tx + (-4 if on_left else 4)}\" y=\"{ly + 4}\" "
                     f"text-anchor=\"{'end' if on_left else 'start'}\">"
                     f"{esc(short(names[ckpt]))} ({mean_ranks[ckpt]:.2f})</text></g>")
    return _svg(left + plot + right, height, "critical-difference diagram of mean ranks", "".join(parts))
