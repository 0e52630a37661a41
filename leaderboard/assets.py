"""The page's style and script, inlined into index.html so that it opens with no network and from
the file system (no external fonts, scripts or styles)."""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem; color: #1b1f24; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
.meta { color: #57606a; } .failed-summary { color: #9a6700; }
.table-wrap { overflow-x: auto; }
table.leaderboard, table.stats { border-collapse: collapse; margin: .5rem 0 1rem; }
table.leaderboard th, table.leaderboard td, table.stats th, table.stats td {
  border: 1px solid #d0d7de; padding: .3rem .5rem; white-space: nowrap; }
table.leaderboard thead th, table.stats thead th { background: #f6f8fa; vertical-align: bottom; }
table.leaderboard thead th[data-sort-col] { cursor: pointer; user-select: none; }
table.leaderboard thead th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.leaderboard thead th[aria-sort="descending"]::after { content: " \\25BC"; }
table.leaderboard tbody th, table.stats tbody th { text-align: left; font-weight: 600; }
table.leaderboard td { text-align: right; font-variant-numeric: tabular-nums; }
table.leaderboard td a { color: inherit; text-decoration: none; }
table.leaderboard td a:hover { text-decoration: underline; }
td.best { font-weight: 700; } .best-mark { color: #9a6700; }
td.missing { color: #8c959f; text-align: center; } td.failed { color: #9a6700; }
.failed-mark, td.has-failed { color: #9a6700; cursor: help; }
.degenerate-mark { color: #9a6700; cursor: help; }
.ns, .sig { font-size: .75em; font-weight: 700; border-radius: 3px; padding: 0 .25em; cursor: help; }
.ns { color: #fff; background: #cf222e; } .sig { color: #fff; background: #1a7f37; }
td.ns, td.sig { font-size: .9em; }
.ci { color: #57606a; font-size: .85em; }
small { color: #57606a; font-weight: 400; }
span.in-domain { font-size: .75em; padding: 0 3px; border-radius: 3px; background: #fff8c5; color: #7d4e00; }
span.test-seen { font-size: .75em; padding: 0 3px; border-radius: 3px; background: #ffebe9; color: #82071e; }
small.badge { display: inline-block; margin-top: 2px; padding: 0 4px; border-radius: 3px; background: #ddf4ff; color: #0a3069; }
td.overall { background: #f6f8fa; } td.cost { background: #f6f8fa; color: #57606a; }
tfoot tr.reference th, tfoot tr.reference td { background: #fff8c5; font-style: italic; border-top: 2px solid #9a6700; }
section.synthetic { border: 3px dashed #cf222e; padding: 0 1rem 1rem; margin-top: 2rem; background: #fff5f5; }
.banner { background: #cf222e; color: #fff; font-weight: 700; padding: .5rem .75rem; margin: 0 -1rem 1rem; }
.empty { color: #57606a; font-style: italic; }
section.profile { border-top: 2px solid #d0d7de; margin-top: 1.5rem; }
section.profile > h3 { margin-bottom: .25rem; } .profile-note { color: #57606a; margin-top: 0; }
fieldset.toggles { border: 1px solid #d0d7de; margin: .5rem 0; padding: .25rem .75rem .5rem; }
fieldset.toggles legend { color: #57606a; }
.toggle-group { display: inline-block; margin: .15rem 1.25rem .15rem 0; }
.toggle-group label { margin-right: .6rem; white-space: nowrap; }
.chart-grid { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; }
figure { margin: .5rem 0; } figcaption { font-weight: 600; }
svg.chart { background: #fff; max-width: 100%; height: auto; }
details > summary { cursor: pointer; font-weight: 600; margin: .5rem 0; }
#provenance .prov { border-top: 1px solid #d0d7de; padding: .5rem 0; }
#provenance .prov:target { background: #fff8c5; }
#provenance dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; margin: .25rem 0; }
#provenance dt { color: #57606a; } #provenance dd { margin: 0; }
pre { margin: 0; white-space: pre-wrap; font-size: .85em; }
"""

# Sorting: click a header to sort the body rows by that column; click again to reverse. Values come
# from each cell's data-sort attribute (numbers compare numerically); missing cells ("") stay last.
# Task switches: hide a column and recompute each row's mean rank, mean normalised score and task
# count over the shown columns from the cells' data-rank / data-norm (a column's ranks and
# normalised scores do not depend on the other columns, so the page's numbers are reproduced exactly
# with every task shown). The body row layout is render.py's: name, task columns, then 3 overall.
JS = """
(function () {
  function sortRows(table, th, asc) {
    var body = table.tBodies[0];
    var col = parseInt(th.getAttribute('data-sort-col'), 10);
    var numeric = th.getAttribute('data-sort-type') !== 'text';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.children[col].getAttribute('data-sort') || '';
      var y = b.children[col].getAttribute('data-sort') || '';
      if (x === '' || y === '') { return (x === '' ? 1 : 0) - (y === '' ? 1 : 0); }
      var d = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll('thead th[data-sort-col]').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
  }

  function mean(values) {
    return values.reduce(function (s, v) { return s + v; }, 0) / values.length;
  }

  function recompute(table, hidden) {
    var n = parseInt(table.getAttribute('data-columns'), 10);
    var shown = 0;
    for (var c = 1; c <= n; c++) { if (!hidden[c]) { shown++; } }
    Array.prototype.forEach.call(table.tBodies[0].rows, function (tr) {
      var ranks = [], norms = [];
      for (var c = 1; c <= n; c++) {
        var rank = tr.children[c].getAttribute('data-rank');
        if (!hidden[c] && rank !== null) {
          ranks.push(parseFloat(rank));
          norms.push(parseFloat(tr.children[c].getAttribute('data-norm')));
        }
      }
      var out = [[ranks.length ? mean(ranks) : null, 2], [norms.length ? mean(norms) : null, 3]];
      out.forEach(function (pair, i) {
        var td = tr.children[n + 1 + i];
        td.textContent = pair[0] === null ? '\\u2014' : pair[0].toFixed(pair[1]);
        td.setAttribute('data-sort', pair[0] === null ? '' : String(pair[0]));
      });
      tr.children[n + 3].textContent = ranks.length + '/' + shown;
      tr.children[n + 3].setAttribute('data-sort', String(ranks.length));
    });
    var sorted = table.querySelector('thead th[aria-sort]');
    if (sorted && parseInt(sorted.getAttribute('data-sort-col'), 10) > n) {
      sortRows(table, sorted, sorted.getAttribute('aria-sort') === 'ascending');
    }
  }

  function setColumn(table, col, show) {
    var display = show ? '' : 'none';
    table.querySelectorAll('thead tr.columns th[data-sort-col="' + col + '"]').forEach(function (th) {
      th.style.display = display;
    });
    Array.prototype.forEach.call(table.querySelectorAll('tbody tr, tfoot tr'), function (tr) {
      tr.children[col].style.display = display;
    });
  }

  function updateGroups(table, hidden) {
    table.querySelectorAll('thead th[data-group-cols]').forEach(function (th) {
      var cols = th.getAttribute('data-group-cols').split(' ');
      var visible = cols.filter(function (c) { return !hidden[c]; }).length;
      th.style.display = visible ? '' : 'none';
      if (visible) { th.setAttribute('colspan', String(visible)); }
    });
  }

  document.querySelectorAll('table.leaderboard').forEach(function (table) {
    table.querySelectorAll('thead th[data-sort-col]').forEach(function (th) {
      th.addEventListener('click', function () {
        var current = th.getAttribute('aria-sort');
        sortRows(table, th, current ? current !== 'ascending' : th.getAttribute('data-sort-first') === 'asc');
      });
    });
  });

  document.querySelectorAll('fieldset.toggles').forEach(function (fieldset) {
    var table = document.getElementById(fieldset.getAttribute('data-table'));
    var hidden = {};
    function apply() {
      fieldset.querySelectorAll('input[data-col]').forEach(function (box) {
        var col = box.getAttribute('data-col');
        hidden[col] = !box.checked;
        setColumn(table, col, box.checked);
      });
      fieldset.querySelectorAll('.toggle-group').forEach(function (group) {
        var boxes = Array.prototype.slice.call(group.querySelectorAll('input[data-col]'));
        var on = boxes.filter(function (box) { return box.checked; }).length;
        var groupBox = group.querySelector('input[data-group-toggle]');
        groupBox.checked = on === boxes.length;
        groupBox.indeterminate = on > 0 && on < boxes.length;
      });
      updateGroups(table, hidden);
      recompute(table, hidden);
    }
    fieldset.querySelectorAll('input[data-col]').forEach(function (box) { box.addEventListener('change', apply); });
    fieldset.querySelectorAll('input[data-group-toggle]').forEach(function (groupBox) {
      groupBox.addEventListener('change', function () {
        groupBox.closest('.toggle-group').querySelectorAll('input[data-col]').forEach(function (box) {
          box.checked = groupBox.checked;
        });
        apply();
      });
    });
  });
})();
"""
