"""The page's sections beside the main tables: significance, charts, how to read, provenance."""
from __future__ import annotations

import json

from medssl_bench.downstream.registry import TASKS
from medssl_bench.leaderboard.aggregate import CI_LEVEL, Cell, Column, Row, Table
from medssl_bench.leaderboard.charts import bar_chart, cd_diagram, efficiency_chart, esc, profile_chart
from medssl_bench.leaderboard.reference import reference as paper_reference
from medssl_bench.leaderboard.stats import ALPHA, CASE_TEST, MIN_CASES, SEED_TEST, PairedTest

MISSING = "\u2014"  # an em dash: never a zero
BEST_MARK = "\u2605"
DEGENERATE_MARK = "\u2205"  # empty set: the column holds no signal
DEGENERATE_NOTE = ("every checkpoint scores 0.0 here: the models learnt nothing of the scored target "
                   "(e.g. background only), so this column ranks nothing")


def code_versions(cell: Cell) -> set[str]:
    out = set()
    for rec in cell.records:
        code = (rec.get("provenance") or {}).get("code") or {}
        sha = str(code.get("git_sha") or "unknown")
        out.add(sha[:12] + (" (dirty)" if code.get("dirty") else ""))
    return out


def _verdict(test: PairedTest) -> str:
    if test.p is None:
        return f"<td class=\"ns\">untested: {esc(test.reason)}</td>"
    if test.significant:
        return f"<td class=\"sig\">significant (p &lt; {ALPHA:g})</td>"
    return f"<td class=\"ns\">not significant (p \u2265 {ALPHA:g})</td>"


def significance_section(table: Table, prefix: str) -> str:
    rows = []
    for column in table.columns:
        test = table.tests.get(column.key)
        if test is None:
            continue
        p = MISSING if test.p is None else f"{test.p:.3g}"
        rows.append(f"<tr data-task=\"{esc(column.task)}\" data-protocol=\"{esc(column.protocol)}\">"
                    f"<th scope=\"row\">{esc(column.task)} <small>{esc(column.protocol)}</small></th>"
                    f"<td>{esc(test.leader.name)}</td><td>{esc(test.runner_up.name)}</td>"
                    f"<td>{test.difference:.2f}</td><td>{esc(test.test or MISSING)}</td><td>{test.n or MISSING}</td>"
                    f"<td class=\"p-value\">{p}</td>{_verdict(test)}</tr>")
    paired = ("<p class=\"empty\">No column has two checkpoints with results yet.</p>" if not rows else
              "<div class=\"table-wrap\"><table class=\"stats paired-tests\"><thead><tr><th>Task</th><th>Leader</th>"
              "<th>Runner-up</th><th>Lead</th><th>Test</th><th>n</th><th>p</th><th>Verdict</th></tr></thead>"
              f"<tbody>{''.join(rows)}</tbody></table></div>")
    return (f"<section class=\"significance\" id=\"significance-{prefix}\"><h3>Is the lead real?</h3>"
            "<p>Per task column, the best checkpoint against the runner-up (by mean), two-sided, "
            f"\u03b1 = {ALPHA:g}, not corrected for the number of columns. {esc(CASE_TEST)} "
            f"(scipy.stats.wilcoxon) on the per-case values (each case averaged over the seeds) of the test cases "
            f"both were evaluated on, when there are at least {MIN_CASES}; otherwise a {esc(SEED_TEST)} "
            "(scipy.stats.ttest_rel) over the seeds both ran (detection AP50 is not a mean over images, so it "
            "is always paired over seeds; a Wilcoxon test over 3\u20135 seeds could never reach p &lt; 0.05). "
            "In the table the leader's cell says <span class=\"sig\">p&lt;.05</span>, <span class=\"ns\">n.s."
            "</span> or <span class=\"ns\">untested</span>.</p>"
            f"{paired}{_cd_html(table)}</section>")


def _cd_html(table: Table) -> str:
    head = "<h3>Across tasks: Friedman test and Nemenyi critical difference</h3>"
    cd = table.critical_difference
    if cd is None:
        return (head + "<p class=\"empty cd-missing\">Needs at least 3 checkpoints with results on the same 2 or "
                "more task columns.</p>")
    names = {r.checkpoint_id: r.name for r in cd.rows}
    verdict = ("the checkpoints differ (p &lt; 0.05): pairs further apart than the CD differ significantly"
               if cd.significant else
               "no significant difference between the checkpoints overall (p \u2265 0.05): the Nemenyi groups "
               "below are shown for reference only")
    listing = "".join(
        f"<tr><th scope=\"row\">{esc(names[c])}</th><td>{cd.mean_ranks[c]:.2f}</td></tr>"
        for c in sorted(cd.mean_ranks, key=lambda c: cd.mean_ranks[c]))
    columns = ", ".join(f"{c.task}/{c.protocol}" for c in cd.columns)
    return (head + f"<p class=\"cd-summary\">Over the {len(cd.columns)} task columns every one of these "
            f"{len(cd.rows)} checkpoints has a result in ({esc(columns)}): Friedman "
            f"\u03c7\u00b2 = {cd.statistic:.3f}, p = <span class=\"cd-p\">{cd.p:.3g}</span> "
            "(scipy.stats.friedmanchisquare): " + verdict + ". Nemenyi critical difference "
            f"CD = q<sub>{ALPHA:g}</sub> \u221a(k(k+1)/6N) = {cd.q_alpha:.3f} \u00b7 "
            f"\u221a({len(cd.rows)}\u00b7{len(cd.rows) + 1}/(6\u00b7{len(cd.columns)})) = "
            f"<span class=\"cd-value\">{cd.cd:.3f}</span>, q from scipy.stats.studentized_range (Dem\u0161ar 2006). "
            "Checkpoints joined by a thick bar are within one CD of each other.</p>"
            f"<figure class=\"cd\">{cd_diagram(names, cd.mean_ranks, cd.cd, cd.cliques)}</figure>"
            "<table class=\"stats cd-ranks\"><thead><tr><th>Checkpoint</th><th>Mean rank</th></tr></thead>"
            f"<tbody>{listing}</tbody></table>")


def charts_section(table: Table, prefix: str, *, reference: bool) -> str:
    bars = []
    for column in table.columns:
        entries = [(r, r.cells[column.key]) for r in table.rows if column.key in r.cells]
        if entries:
            value = paper_reference(column.task, column.protocol, column.metric,
                                    [rec for _, cell in entries for rec in cell.records])[0] if reference else None
            bars.append(_figure(column, bar_chart(column, entries, value)))
    profiles = "".join(f"<figure><figcaption>{esc(r.name)}</figcaption>{profile_chart(r, table.columns)}</figure>"
                       for r in table.rows)
    curves = []
    order = [c.key for c in table.columns]  # page order, then columns recorded only below full labels
    for key in sorted(table.efficiency, key=lambda k: (order.index(k) if k in order else len(order), k)):
        per_ckpt = table.efficiency[key]
        column = next((c for c in table.columns if c.key == key), None) or Column(
            *key, TASKS[key[0]].metric if key[0] in TASKS else "?", "other")
        series = [(i, r, per_ckpt[r.checkpoint_id]) for i, r in enumerate(table.rows) if r.checkpoint_id in per_ckpt]
        curves.append(_figure(column, efficiency_chart(column, series)))
    efficiency = "".join(curves) or ("<p class=\"empty\">No task is recorded at more than one label fraction "
                                     "(bench eval --label-fraction 0.01 ...).</p>")
    return (f"<section class=\"charts\" id=\"charts-{prefix}\"><h3>Charts</h3>"
            f"<details open><summary>Scores per task with {CI_LEVEL:.0%} intervals ({_count(len(bars), 'task')})"
            "</summary>"
            f"<div class=\"chart-grid\">{''.join(bars)}</div></details>"
            "<details><summary>Profile of each checkpoint across tasks</summary>"
            f"<div class=\"chart-grid\">{profiles}</div></details>"
            f"<details open class=\"efficiency\"><summary>Label efficiency ({_count(len(curves), 'task')} with "
            f"several label fractions)</summary><div class=\"chart-grid\">{efficiency}</div></details></section>")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _figure(column: Column, svg: str) -> str:
    return (f"<figure data-task=\"{esc(column.task)}\" data-protocol=\"{esc(column.protocol)}\"><figcaption>"
            f"{esc(column.task)} <small>{esc(column.protocol)} \u00b7 {esc(column.metric)}</small></figcaption>"
            f"{svg}</figure>")


def how_to_read() -> str:
    level = f"{CI_LEVEL:.0%}"
    return f"""<section id="how-to-read"><h2>How to read this page</h2>
<ul>
<li><b>Cells</b>: mean over seeds of the test-split score (\u00d7 100) in the task's paper metric, \u00b1 the
half-width of a {level} Student-t confidence interval over seeds (mean \u00b1 t<sub>0.975, n-1</sub> \u00b7 s / \u221an,
s the sample standard deviation of the n seeds). A t-interval is used rather than a bootstrap because
with 3\u20135 seeds a bootstrap over seeds has only a handful of distinct resamples. A single seed has no interval
over seeds; where its per-case values are recorded, the cell shows [low, high], a {level} percentile bootstrap
over the test cases (scipy.stats.bootstrap). Hover a cell for its seeds; click it for its configuration and
provenance.</li>
<li><b>Colour</b>: per column, from the column's lowest mean (light) to its highest (dark green).
{BEST_MARK} marks the best mean in each column (ties are all marked). Whether the lead over the runner-up is
real is tested (see <i>Is the lead real?</i> under each table): the leader's cell is marked p&lt;.05, n.s. or
untested.</li>
<li><b>Missing</b>: {MISSING} means no result was recorded for that checkpoint and task. It is never
counted as zero. \u26a0 failed means the job was run and failed; \u26a0n on a cell counts failed seeds beside
the results. Hover for the reasons. {DEGENERATE_MARK} on a column header: every checkpoint scores 0.0 in that
column, so it ranks nothing (usually a schedule too short for a small target to be learnt).</li>
<li><b>Mean rank</b>: in each task column the checkpoints with a result are ranked (1 = best, ties share the
average rank); a row's mean rank is the mean over the shown columns it has. <b>Mean norm. score</b>: in each column,
(score \u2212 column min) / (column max \u2212 column min) over the rows of that table (1 when all are equal),
averaged over the shown columns the row has. <b>Tasks</b> shows how many shown columns a row covers: a row with
missing tasks is averaged over fewer columns, so compare rows with equal coverage. Untick tasks above a table to
leave them out: both means are recomputed at once. Rows start sorted by mean normalised score; click any header to
sort (missing values stay last).</li>
<li><b>Compute</b>: Eval h is the wall time the store recorded for every evaluation job of the checkpoint (all
label fractions, seeds and failed jobs), in hours; hover for the split by device (CPU or GPU). Pretrain h is
read from the checkpoint's record (its sidecar): "unknown" when it records no time (hover for what it does
record), "none" for random initialisation. An unknown cost is never shown as 0.</li>
<li><b>in-domain</b> marks a checkpoint pretrained on the task's own training labels; <b>saw test</b> marks a
checkpoint whose pretraining corpus held some of the task's test images (the same decoded pixels; hover for how
many). Neither score is a clean transfer.</li>
<li><b>Synthetic data</b>: results evaluated on synthetic images, or from checkpoints pretrained on a
synthetic corpus, are in their own table with its own ranking, tests and charts.</li>
<li><b>Profiles</b>: each table holds the checkpoints of one pretraining profile, ranked only among themselves
(best marks, ranks, scores, tests): <i>benchmark</i> (every method on one budget: the ranking of methods; one table
per corpus), <i>paper</i> (each method's published recipe), <i>imported</i>, <i>modified</i> (a run that changed a
setting its profile pins; the row says which), <i>quick</i> (smoke runs) and <i>unrecorded</i>. Random
initialisation has no pretraining and appears in every table as its floor. A row's profile is what its checkpoint
records (docs/methods.md, "Profiles").</li>
<li><b>Reported in paper</b>: the LVM-Med paper's published numbers (ResNet-50) for reference, not ranked
and not part of the colour scale or the overall scores; a dashed line in the per-task charts. A number is shown
only under a column computed with the paper's protocol, metric and split (hover it: an unpublished split is said);
elsewhere the cell says why not (docs/protocols.md).</li>
<li><b>Charts</b>: bars on a 0\u2013100 axis with {level} interval whiskers; profiles show each checkpoint's
normalised score per column (\u00d7 where it has no result); label-efficiency curves plot the score against the
fraction of labelled training data where several fractions are recorded. Hover any mark for its numbers.</li>
</ul></section>"""


def provenance_section(tables: list[Table]) -> str:
    parts = ["<section id=\"provenance\"><h2>Provenance of every cell</h2>"]
    for table in tables:
        prefix = table.prefix
        for r, row in enumerate(table.rows):
            for i, column in enumerate(table.columns):
                cell = row.cells.get(column.key)
                if cell is not None:
                    parts.append(_provenance_entry(cell, row, column, f"prov-{prefix}-{r}-{i}", table))
    parts.append("</section>")
    return "\n".join(parts)


def _distinct_json(values) -> str:
    """The distinct values as pretty JSON, one block each (usually one: the seeds share a config)."""
    distinct: dict[str, object] = {}
    for value in values:  # compared in compact form (the C encoder), pretty-printed once each
        distinct.setdefault(json.dumps(value, sort_keys=True, default=str), value)
    return "".join(f"<pre>{esc(json.dumps(v, indent=1, sort_keys=True, default=str))}</pre>" for v in distinct.values())


def _provenance_entry(cell: Cell, row: Row, column: Column, anchor: str, table: Table) -> str:
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
        ("Code version", esc(", ".join(sorted(code_versions(cell))))),
        ("Protocol config", _distinct_json(rec.get("protocol_config") for rec in cell.records)),
        ("Pretraining config", _distinct_json(p.get("pretrain_config") for p in provs)),
    ]
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields)
    label = f"{'synthetic' if table.synthetic else 'real'} data, profile {table.profile}"
    return (f"<div class=\"prov\" id=\"{anchor}\"><b>{esc(row.name)} \u2014 {esc(column.task)} "
            f"({esc(column.protocol)})</b> <small>{label}</small><dl>{body}</dl></div>")
