"""The static leaderboard (leaderboard/): rendered from a fixture results store, checked by parsing
the HTML with the standard library's parser (structure, CIs, missing cells, best marks, escaping,
synthetic/real separation, the paper's reference row, no network references)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.store import EvalKey, ResultsStore
from harness.workspace import Workspace
from leaderboard import build_leaderboard

EVIL = "<script>alert(1)</script>"
EVIL_CONFIG = '"><img src=x onerror=alert(2)>'
T_975_DF2 = 4.302652729749464  # Student t quantile 0.975 with 2 degrees of freedom (tables)
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
VOID = {"br", "meta", "img", "hr", "input", "link", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str, **attrs) -> list["Node"]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child.tag == tag and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())


class TreeBuilder(HTMLParser):
    """A minimal DOM: enough to walk tables, rows and cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:  # tolerate stray end tags
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


def provenance(dataset: str, synthetic: bool, method: str) -> dict:
    return {"method": method, "profile": "quick", "pretrain_config": {"lr": 0.3, "note": EVIL_CONFIG},
            "code": {"git_sha": "0123456789abcdef", "dirty": False},
            "data": {"dataset": dataset, "content_hash": "h" * 16, "synthetic": synthetic}}


def record(store, ckpt, task, protocol, values, *, metric, synthetic=False, method="simclr", fraction=1.0):
    for seed, value in enumerate(values):
        other = {"macro_f1": 0.1} if metric == "accuracy" else {"iou": 0.1}
        split = {"metric": metric, "value": value, "metrics": {metric: value, **other}}
        store.record_done(EvalKey(ckpt, task, protocol, fraction, seed), splits={"val": split, "test": split},
                          protocol={"lr": 1e-3, "comment": EVIL_CONFIG},
                          provenance=provenance(task, synthetic, method), wall_time_s=1.0)


@pytest.fixture
def store(tmp_path):
    opened = ResultsStore.open(f"sqlite:///{tmp_path}/r.db", Workspace(tmp_path))
    opened.upsert_checkpoint({"id": "aaa", "name": "SimCLR run", "method": "simclr", "corpus_id": "corpus-1",
                              "synthetic": False})
    opened.upsert_checkpoint({"id": "bbb", "name": EVIL, "method": "byol", "corpus_id": "corpus-2",
                              "synthetic": False})
    opened.upsert_checkpoint({"id": "syn", "name": "Phantom DINO", "method": "dino", "corpus_id": "phantoms",
                              "synthetic": None})
    record(opened, "aaa", "fgadr", "linear", [0.70, 0.72, 0.74], metric="accuracy")
    record(opened, "bbb", "fgadr", "linear", [0.80, 0.80, 0.83], metric="accuracy", method="byol")
    record(opened, "aaa", "brain_tumor", "linear", [0.60, 0.61, 0.62], metric="accuracy")
    record(opened, "bbb", "brain_tumor", "linear", [0.50, 0.50, 0.50], metric="accuracy", method="byol")
    record(opened, "aaa", "isic2018", "finetune", [0.85, 0.86, 0.87], metric="dice")  # bbb has none
    record(opened, "aaa", "drive", "finetune", [0.5, 0.5, 0.5], metric="dice", fraction=0.1)  # not main view
    record(opened, "syn", "fgadr", "linear", [0.99, 0.98, 0.97], metric="accuracy", synthetic=True, method="dino")
    yield opened
    opened.close()


@pytest.fixture
def page(store, tmp_path) -> str:
    path = build_leaderboard(store, tmp_path / "site", now=NOW)
    assert path == tmp_path / "site" / "index.html"
    return path.read_text(encoding="utf-8")


def table(root: Node, name: str) -> Node:
    (found,) = root.find_all("table", data_table=name)
    return found


def body_rows(tbl: Node) -> dict[str, list[Node]]:
    """checkpoint id -> the row's cells (name header first)."""
    (tbody,) = tbl.find_all("tbody")
    return {tr.attrs["data-checkpoint"]: [c for c in tr.children if isinstance(c, Node)]
            for tr in tbody.find_all("tr")}


def column_index(tbl: Node, task: str) -> int:
    (th,) = tbl.find_all("th", data_task=task)
    return int(th.attrs["data-sort-col"])


def test_structure_groups_and_columns(page):
    root = parse(page)
    real = table(root, "real")
    groups = [th.text() for th in real.find_all("th") if "data-group" in th.attrs]
    assert groups == ["Classification (linear probe)", "2D segmentation", "Overall"]
    assert [th.attrs["data-task"] for th in real.find_all("th") if "data-task" in th.attrs] == \
        ["fgadr", "brain_tumor", "isic2018"]
    assert "drive" not in {th.attrs.get("data-task") for th in real.find_all("th")}  # label fraction 0.1
    rows = body_rows(real)
    assert list(rows) == ["aaa", "bbb"]  # sorted by mean normalised score
    # every body row has a cell for every header column (name + 3 tasks + 3 overall)
    assert {len(cells) for cells in rows.values()} == {7}
    assert root.find_all("section", id="how-to-read")


def test_cell_mean_and_t_interval(page):
    real = table(parse(page), "real")
    cell = body_rows(real)["aaa"][column_index(real, "fgadr")]
    half = T_975_DF2 * 2.0 / math.sqrt(3)  # values 70, 72, 74: sd 2
    assert cell.find_all("a")[0].text().split() == ["72.0", "\u00b1", f"{half:.1f}"]
    assert float(cell.attrs["data-sort"]) == pytest.approx(72.0)
    assert "Student-t" in page


def test_missing_cell_is_a_dash_not_zero(page):
    real = table(parse(page), "real")
    cells = body_rows(real)["bbb"]
    missing = cells[column_index(real, "isic2018")]
    assert "missing" in missing.classes() and missing.text() == "\u2014" and missing.attrs["data-sort"] == ""
    assert cells[-1].text() == "2/3"  # tasks covered


def test_best_per_column_and_overall_scores(page):
    real = table(parse(page), "real")
    rows = body_rows(real)
    best = {task: [ck for ck, cells in rows.items() if "best" in cells[column_index(real, task)].classes()]
            for task in ("fgadr", "brain_tumor", "isic2018")}
    assert best == {"fgadr": ["bbb"], "brain_tumor": ["aaa"], "isic2018": ["aaa"]}
    assert "\u2605" in rows["bbb"][column_index(real, "fgadr")].text()
    # aaa: ranks 2, 1, 1 and normalised 0, 1, 1; bbb: ranks 1, 2 and normalised 1, 0
    assert [c.text() for c in rows["aaa"][-3:]] == ["1.33", "0.667", "3/3"]
    assert [c.text() for c in rows["bbb"][-3:]] == ["1.50", "0.500", "2/3"]


def test_malicious_strings_render_as_text(page):
    root = parse(page)
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(root.find_all("script")) == 1 and "alert" not in root.find_all("script")[0].text()
    assert root.find_all("img") == []  # the config value stayed text
    names = [cells[0].text() for cells in body_rows(table(root, "real")).values()]
    assert any(name.startswith(EVIL) for name in names)
    assert any(EVIL_CONFIG in pre.text() for pre in root.find_all("pre"))


def test_synthetic_results_are_a_separate_labelled_table(page):
    root = parse(page)
    assert set(body_rows(table(root, "real"))) == {"aaa", "bbb"}
    synthetic = table(root, "synthetic")
    assert set(body_rows(synthetic)) == {"syn"}
    (section,) = root.find_all("section", id="synthetic")
    assert "SYNTHETIC DATA" in section.text() and section.find_all("table", data_table="synthetic")
    assert page.index('id="real"') < page.index('id="synthetic"')
    # its own ranking: alone, it is best and first in its column
    cells = body_rows(synthetic)["syn"]
    assert [c.text() for c in cells[-3:]] == ["1.00", "1.000", "1/1"]
    assert synthetic.find_all("tfoot") == []  # the paper's numbers sit with real data only


def test_reported_in_paper_row_is_marked_and_unranked(page):
    real = table(parse(page), "real")
    (tfoot,) = real.find_all("tfoot")
    (row,) = tfoot.find_all("tr")
    cells = [c for c in row.children if isinstance(c, Node)]
    assert "reference" in row.classes() and cells[0].text().startswith("Reported in paper")
    assert [c.text() for c in cells[1:4]] == ["68.33", "66.33", "87.76"]  # fgadr, brain_tumor linear; isic
    assert "not ranked" in row.text()
    assert "best" not in " ".join(" ".join(c.classes()) for c in cells)


def test_cells_link_to_provenance(page):
    root = parse(page)
    real = table(root, "real")
    cell = body_rows(real)["aaa"][column_index(real, "fgadr")]
    assert "seeds 0: 70.00, 1: 72.00, 2: 74.00" in cell.attrs["title"]
    anchor = cell.find_all("a")[0].attrs["href"]
    (details,) = root.find_all("div", id=anchor[1:])
    text = details.text()
    for expected in ("corpus-1", "0 \u2192 70.00", "0123456789ab", "fgadr / linear", "quick", '"lr": 0.001'):
        assert expected in text


def test_self_contained_without_network(page):
    root = parse(page)
    assert "http://" not in page and "https://" not in page
    for tag in ("script", "link", "img", "a", "iframe", "style"):
        for node in root.find_all(tag):
            for attr in ("src", "href"):
                target = node.attrs.get(attr)
                assert target is None or target.startswith("#"), (tag, attr, target)
    assert root.find_all("link") == [] and root.find_all("style")


def test_cli_writes_the_page_atomically_and_says_where(store, tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "site"
    for _ in range(2):
        assert main(["leaderboard", "--db", f"sqlite:///{tmp_path}/r.db", "--out", str(out),
                     "--workspace", str(tmp_path)]) == 0
    assert [p.name for p in out.iterdir()] == ["index.html"]  # no temp file left
    assert (out / "index.html").stat().st_mode & 0o444 == 0o444
    assert str(out / "index.html") in " ".join(capsys.readouterr().out.split())
    assert build_leaderboard(store, out, now=NOW).read_text().count("2025-01-02T03:04:05+00:00") >= 1


def test_empty_store(tmp_path):
    with ResultsStore.open(f"sqlite:///{tmp_path}/empty.db", Workspace(tmp_path)) as empty:
        path = build_leaderboard(empty, Path(tmp_path / "out"), now=NOW)
    root = parse(path.read_text())
    assert root.find_all("table") == [] and "No results recorded yet" in path.read_text()


# A stand-in for the browser DOM, just the parts the sort script touches, so that the script's
# behaviour is checked by running it (node) on the rows and headers the page really has.
DOM_SHIM = r"""
const spec = JSON.parse(require('fs').readFileSync(0, 'utf8'));
function el(attrs) {
  return {attrs: attrs, listeners: {},
          getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; },
          setAttribute(k, v) { this.attrs[k] = String(v); }, removeAttribute(k) { delete this.attrs[k]; },
          addEventListener(type, f) { this.listeners[type] = f; }};
}
const body = {rows: [], appendChild(r) { const i = this.rows.indexOf(r); if (i >= 0) this.rows.splice(i, 1); this.rows.push(r); }};
spec.rows.forEach(function (r) { const row = el({}); row.id = r.id; row.children = r.sorts.map(s => el({'data-sort': s})); body.rows.push(row); });
const headers = spec.headers.map(el);
const table = {tBodies: [body], querySelectorAll() { return headers; }};
global.document = {querySelectorAll() { return [table]; }};
eval(spec.script);
const orders = spec.clicks.map(function (col) {
  headers.find(h => h.attrs['data-sort-col'] === String(col)).listeners.click();
  return body.rows.map(r => r.id);
});
console.log(JSON.stringify(orders));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_sort_script_reorders_rows(page):
    root = parse(page)
    real = table(root, "real")
    (script,) = root.find_all("script")
    headers = [th.attrs for th in real.find_all("th") if "data-sort-col" in th.attrs]
    (tbody,) = real.find_all("tbody")
    rows = [{"id": tr.attrs["data-checkpoint"],
             "sorts": [c.attrs.get("data-sort", "") for c in tr.children if isinstance(c, Node)]}
            for tr in tbody.find_all("tr")]
    brain, isic = column_index(real, "brain_tumor"), column_index(real, "isic2018")
    clicks = [brain, brain, isic, isic, 0, len(rows[0]["sorts"]) - 3]  # ..., name, mean rank
    spec = {"script": script.text(), "headers": headers, "rows": rows, "clicks": clicks}
    out = subprocess.run(["node", "-e", DOM_SHIM], input=json.dumps(spec), capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert json.loads(out) == [
        ["aaa", "bbb"], ["bbb", "aaa"],  # numeric, best first, then reversed
        ["aaa", "bbb"], ["aaa", "bbb"],  # bbb has no isic2018 result: last both ways
        ["bbb", "aaa"],                  # names as text: "<script..." before "simclr run"
        ["aaa", "bbb"],                  # mean rank: lowest (best) first
    ]
