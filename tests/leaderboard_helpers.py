"""Shared by the leaderboard tests: a fixture results store's contents (real and synthetic rows,
failures, a hostile method name) and a small HTML tree parsed with the standard library."""
from __future__ import annotations

from datetime import datetime, timezone
from html.parser import HTMLParser

from medssl_bench.harness.store import EvalKey

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


WALL_S = 600.0  # each job's recorded wall time


def provenance(dataset: str, synthetic: bool, method: str) -> dict:
    return {"method": method, "profile": "quick", "pretrain_config": {"lr": 0.3, "note": EVIL_CONFIG},
            "code": {"git_sha": "0123456789abcdef", "dirty": False}, "host": {"machine": "x86_64", "cuda": False},
            "data": {"dataset": dataset, "content_hash": "h" * 16, "synthetic": synthetic}}


def record(store, ckpt, task, protocol, values, *, metric, synthetic=False, method="simclr", fraction=1.0,
           per_case=None, transfer=True):
    """One done job per value (seeds 0, 1, ...); `per_case`: per seed, the test split's per-case list."""
    for seed, value in enumerate(values):
        other = {"macro_f1": 0.1} if metric == "accuracy" else {"iou": 0.1}
        split = {"metric": metric, "value": value, "metrics": {metric: value, **other}}
        test = {**split, "per_case": per_case[seed]} if per_case else split
        store.record_done(EvalKey(ckpt, task, protocol, fraction, seed), splits={"val": split, "test": test},
                          protocol={"lr": 1e-3, "comment": EVIL_CONFIG},
                          provenance={**provenance(task, synthetic, method), "transfer": transfer,
                                      "transfer_reason": None if transfer else "pretraining consumed fgadr"},
                          wall_time_s=WALL_S)


def fail(store, ckpt, task, protocol, seed, reason, *, fraction=1.0, method="byol"):
    store.record_failed(EvalKey(ckpt, task, protocol, fraction, seed), reason=reason, protocol={"lr": 1e-3},
                        provenance=provenance(task, False, method), wall_time_s=WALL_S)


def fill_store(opened) -> None:
    opened.upsert_checkpoint({"id": "aaa", "name": "SimCLR run", "method": "simclr", "corpus_id": "corpus-1",
                              "synthetic": False, "sidecar": {"epoch": 10, "step": 500, "config": {"batch_size": 64},
                                                              "sweep": {"trials": 8, "study": EVIL}}})
    opened.upsert_checkpoint({"id": "bbb", "name": EVIL, "method": "byol", "corpus_id": "corpus-2",
                              "synthetic": False, "sidecar": {"wall_seconds": 7200, "world_size": 2,
                                                              "host": {"cuda": True, "gpu": "H100"},
                                                              "category": "supervised",
                                                              "labels_consumed": [{"dataset": "fgadr"}]}})
    opened.upsert_checkpoint({"id": "syn", "name": "Phantom DINO", "method": "dino", "corpus_id": "phantoms",
                              "synthetic": None})
    record(opened, "aaa", "fgadr", "linear", [0.70, 0.72, 0.74], metric="accuracy")
    record(opened, "bbb", "fgadr", "linear", [0.80, 0.80, 0.83], metric="accuracy", method="byol",
           transfer=False)  # bbb's pretraining consumed fgadr's training labels
    record(opened, "aaa", "brain_tumor", "linear", [0.60, 0.61, 0.62], metric="accuracy")
    record(opened, "bbb", "brain_tumor", "linear", [0.50, 0.50, 0.50], metric="accuracy", method="byol")
    record(opened, "aaa", "isic2018", "finetune", [0.85, 0.86, 0.87], metric="dice")  # bbb has none
    record(opened, "aaa", "drive", "finetune", [0.5, 0.5, 0.5], metric="dice", fraction=0.1)  # not main view
    # fgadr at 10% labels too: a label-efficiency curve, not a column
    record(opened, "aaa", "fgadr", "linear", [0.60, 0.62, 0.64], metric="accuracy", fraction=0.1)
    record(opened, "bbb", "fgadr", "linear", [0.75, 0.74, 0.76], metric="accuracy", fraction=0.1, method="byol")
    fail(opened, "bbb", "fgadr", "linear", 3, f"RuntimeError: {EVIL}")  # beside bbb's three done seeds
    fail(opened, "bbb", "isic2018", "finetune", 0, "out of memory", fraction=0.1)  # not in a main-view cell
    record(opened, "syn", "fgadr", "linear", [0.99, 0.98, 0.97], metric="accuracy", synthetic=True, method="dino")


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


def trailing(tbl: Node, cells: list[Node]) -> dict[str, str]:
    """The cells after the task columns, by name, as text."""
    n = int(tbl.attrs["data-columns"])
    names = ("mean_rank", "mean_norm", "tasks", "eval_h", "pretrain_h", "failed")
    return dict(zip(names, (c.text() for c in cells[n + 1:])))
