"""The wheel holds one import root, `medssl_bench`, with the four source folders under it and
nothing else (no `tests`, no top-level `harness`); pyproject's package list matches the folders."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("harness", "methods", "downstream", "leaderboard")


def source_packages() -> set[str]:
    found = set()
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            package = path.parent.relative_to(REPO)
            assert (REPO / package / "__init__.py").exists(), f"{package}/ holds modules but no __init__.py"
            found.add("medssl_bench." + ".".join(package.parts))
    return found


def test_pyproject_lists_every_package_under_the_one_root():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["packages"]) == source_packages()
    assert setuptools["package-dir"] == {f"medssl_bench.{f}": f for f in FOLDERS}


def test_the_wheel_holds_only_the_root(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("medssl_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"medssl_bench", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert {n.split("/")[1] for n in names if n.startswith("medssl_bench/")} == set(FOLDERS)
    modules = {n for n in names if n.endswith(".py")}
    assert "medssl_bench/harness/app/cli/__init__.py" in modules and "medssl_bench/methods/blocks/imle.py" in modules
    expected = {f"medssl_bench/{p.relative_to(REPO)}" for f in FOLDERS for p in (REPO / f).rglob("*.py")
                if "__pycache__" not in p.parts}
    assert modules == expected
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "bench = medssl_bench.harness.app.cli:run" in entry
