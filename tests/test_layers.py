"""The two floors, enforced: the ground floor (harness/, without harness/app/) imports no plug-in
package and no top-floor code; the plug-in packages import only the ground floor (the leaderboard
also reads downstream's task registry); only the top floor (harness/app/) may import them all.

Every import counts, deferred ones inside functions included, and so does every "medssl_bench.x"
string (the registries import modules by name)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOT = "medssl_bench"
FOLDERS = ("harness", "methods", "downstream", "leaderboard")
# layer of a module -> the layers it may import (itself always)
ALLOWED = {
    "ground": {"ground"},
    "methods": {"ground"},
    "downstream": {"ground"},
    "leaderboard": {"ground", "downstream"},
    "app": {"ground", "methods", "downstream", "leaderboard"},
}
MODULE_STRING = re.compile(rf"^{ROOT}(\.\w+)+(:\w+)?$")


def layer(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == ROOT, module
    if parts[1] == "harness":
        return "app" if len(parts) > 2 and parts[2] in ("app", "__main__") else "ground"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join((ROOT, *parts))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            found.append((node.lineno, node.value.split(":")[0]))
    return [(line, name) for line, name in found if name.split(".")[0] == ROOT and len(name.split(".")) > 1]


def source_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))


def violations(files: list[Path]) -> list[str]:
    bad = {}  # one report per (file, line, layer): `from a import b` yields a and a.b
    for path in files:
        own = layer(module_name(path))
        for line, name in imported_modules(path):
            if name.split(".")[1] not in FOLDERS:
                continue
            target = layer(name)
            if target != own and target not in ALLOWED[own]:
                bad.setdefault((str(path.relative_to(REPO)), line, target), f"{own} imports {target} ({name})")
    return [f"{file}:{line}: {what}" for (file, line, _), what in bad.items()]


def test_no_upward_import_anywhere():
    assert violations(source_files()) == []


def test_the_old_top_level_names_are_gone():
    """Every import goes through the one root: no `import harness` / `from methods import ...`."""
    stale = [f"{path.relative_to(REPO)}:{line}" for path in source_files() + sorted((REPO / "tests").rglob("*.py"))
             + sorted((REPO / "benchmarks").rglob("*.py"))
             for line, name in _all_imports(path) if name.split(".")[0] in FOLDERS]
    assert stale == []


def _all_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(n.lineno, a.name) for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names] + \
           [(n.lineno, n.module) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]


@pytest.mark.parametrize("source, expected", [
    ("from medssl_bench.methods import get_method\n", "ground imports methods"),
    ("def f():\n    from medssl_bench.downstream.registry import TASKS\n", "ground imports downstream"),
    ("def f():\n    import medssl_bench.harness.app.evaluate\n", "ground imports app"),
    ('REGISTRY = {"x": "medssl_bench.leaderboard.build:build_leaderboard"}\n', "ground imports leaderboard"),
    ("from .app import cli\n", "ground imports app"),
])
def test_the_check_sees_an_upward_import(tmp_path, monkeypatch, source, expected):
    """The walk itself can fail: a planted upward import in a ground-floor file is reported,
    deferred or by name."""
    fake = tmp_path / "harness"
    fake.mkdir()
    path = fake / "planted.py"
    path.write_text(source)
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    found = violations([path])
    assert len(found) == 1 and expected in found[0], found


def test_a_plugin_importing_the_top_floor_is_reported(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    path = tmp_path / "methods" / "newmethod.py"
    path.write_text("from medssl_bench.harness.app.labelled import LabelLayout\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert violations([path]) == ["methods/newmethod.py:1: methods imports app (medssl_bench.harness.app.labelled)"]
