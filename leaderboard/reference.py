"""The paper's reported number beside a column only when the column's results are comparable with
it: the same protocol, the same metric and the same split (issue 18). Elsewhere the reference cell
says why not, so a reader never compares a native-resolution Dice with the paper's Dice at 224 px or
a seeded split with LVM-Med's published one."""
from __future__ import annotations

from medssl_bench.downstream.registry import PAPER_COMPARISON, TASKS


def split_file_of(record: dict) -> str | None:
    """The published split file a result's prepared dataset reproduces (dataset.json split.source)."""
    split = ((record.get("provenance") or {}).get("data") or {}).get("split") or {}
    source = split.get("source") if isinstance(split, dict) else None
    return source.get("file") if isinstance(source, dict) else None


def reference(task_name: str, protocol: str, metric: str, records: list[dict]) -> tuple[float | None, str]:
    """(the paper's value or None, why): the value only when `records` (the column's results) were
    computed with the paper's protocol, metric and split."""
    task = TASKS.get(task_name)
    if task is None or not task.reported:
        return None, "not reported in the paper"
    value = task.reported.get(protocol)
    if value is None:
        return None, (f"the paper's number was measured with the {' / '.join(task.reported)} protocol, "
                      f"not {protocol}")
    comparison = PAPER_COMPARISON.get(task_name)
    if comparison is None:
        return value, "LVM-Med paper, ResNet-50"
    if comparison.metric != metric:
        return None, (f"the paper's {value:.2f} is {comparison.metric}; this column is {metric} "
                      f"(each result records both)")
    note = f"; {comparison.note}" if comparison.note else ""
    if comparison.split == "unpublished":
        return value, f"LVM-Med paper, ResNet-50; its split is unpublished, so these test images differ{note}"
    if comparison.split:
        used = {split_file_of(r) for r in records}
        if used != {comparison.split}:
            return None, (f"the paper used LVM-Med's published split {comparison.split}; these results do not "
                          f"(prepare with --split-file {comparison.split} to compare){note}")
    return value, f"LVM-Med paper, ResNet-50: same protocol, metric and split{note}"


def column_records(table, column) -> list[dict]:
    """Every result record behind a column's cells (all checkpoints of the table)."""
    return [rec for row in table.rows if column.key in row.cells for rec in row.cells[column.key].records]
