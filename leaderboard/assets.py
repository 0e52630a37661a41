"""The page's style and script, inlined into index.html so that it opens with no network and from
the file system (no external fonts, scripts or styles)."""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem; color: #1b1f24; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #57606a; }
.table-wrap { overflow-x: auto; }
table.leaderboard { border-collapse: collapse; margin: .5rem 0 1rem; }
table.leaderboard th, table.leaderboard td { border: 1px solid #d0d7de; padding: .3rem .5rem; white-space: nowrap; }
table.leaderboard thead th { background: #f6f8fa; vertical-align: bottom; }
table.leaderboard thead th[data-sort-col] { cursor: pointer; user-select: none; }
table.leaderboard thead th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.leaderboard thead th[aria-sort="descending"]::after { content: " \\25BC"; }
table.leaderboard tbody th { text-align: left; font-weight: 600; }
table.leaderboard td { text-align: right; font-variant-numeric: tabular-nums; }
table.leaderboard td a { color: inherit; text-decoration: none; }
table.leaderboard td a:hover { text-decoration: underline; }
td.best { font-weight: 700; } .best-mark { color: #9a6700; }
td.missing { color: #8c959f; text-align: center; }
.ci { color: #57606a; font-size: .85em; }
small { color: #57606a; font-weight: 400; }
td.overall { background: #f6f8fa; }
tfoot tr.reference th, tfoot tr.reference td { background: #fff8c5; font-style: italic; border-top: 2px solid #9a6700; }
section.synthetic { border: 3px dashed #cf222e; padding: 0 1rem 1rem; margin-top: 2rem; background: #fff5f5; }
.banner { background: #cf222e; color: #fff; font-weight: 700; padding: .5rem .75rem; margin: 0 -1rem 1rem; }
.empty { color: #57606a; font-style: italic; }
#provenance .prov { border-top: 1px solid #d0d7de; padding: .5rem 0; }
#provenance .prov:target { background: #fff8c5; }
#provenance dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; margin: .25rem 0; }
#provenance dt { color: #57606a; } #provenance dd { margin: 0; }
pre { margin: 0; white-space: pre-wrap; font-size: .85em; }
"""

# Click a header to sort the body rows by that column; click again to reverse. Values come from
# each cell's data-sort attribute (numbers compare numerically); missing cells ("") stay last.
JS = """
(function () {
  document.querySelectorAll('table.leaderboard').forEach(function (table) {
    var body = table.tBodies[0];
    var headers = table.querySelectorAll('thead th[data-sort-col]');
    headers.forEach(function (th) {
      th.addEventListener('click', function () {
        var col = parseInt(th.getAttribute('data-sort-col'), 10);
        var numeric = th.getAttribute('data-sort-type') !== 'text';
        var current = th.getAttribute('aria-sort');
        var asc = current ? current !== 'ascending' : th.getAttribute('data-sort-first') === 'asc';
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.children[col].getAttribute('data-sort') || '';
          var y = b.children[col].getAttribute('data-sort') || '';
          if (x === '' || y === '') { return (x === '' ? 1 : 0) - (y === '' ? 1 : 0); }
          var d = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
          return asc ? d : -d;
        });
        rows.forEach(function (r) { body.appendChild(r); });
        headers.forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      });
    });
  });
})();
"""
