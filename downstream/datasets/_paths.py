"""Finding things in a raw download: the one helper for each lookup the adapters make.

Downloads arrive unpacked by hand, by a zip tool or by Kaggle's client, so the folder the user
points at may be the dataset folder, its parent, or a wrapper around either; folder names differ in
case between releases and file systems ("Training" / "training"), and zip tools leave `__MACOSX/`
and `._name` residue. The rules, for every adapter:

* `subfolders` / `child`: sub-folders are matched ignoring case. Two sub-folders whose names differ
  only by case ("Training/" and "training/", possible on Linux only) are refused with a UserError
  naming both: picking one would silently drop the other's files. Hidden folders and `__MACOSX/`
  are never matched.
* `candidate_roots`: where to look for the dataset folder: `src`, then its sub-folders breadth
  first down to `depth` levels, in sorted order (the shallowest match wins).
* `find_root`: the first candidate holding any of the sub-folders an adapter looks for; if it
  holds only some of the required ones, the error names the missing one; if none holds any, the
  error names `src`.
* `natural_key`: "Case10" after "Case9", "benign (10)" after "benign (9)".
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from medssl_bench.harness.errors import UserError

SKIP_DIRS = ("__MACOSX",)  # zip residue


def _listable(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in SKIP_DIRS


def subfolders(folder: Path) -> dict[str, Path]:
    """{lower-case name: sub-folder} of `folder` (hidden folders and `__MACOSX/` left out; {} if
    `folder` is not a folder). Two names that differ only by case are an error naming both."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_dir() or not _listable(p):
            continue
        key = p.name.lower()
        if key in found:
            raise UserError(f"two folders whose names differ only by case, {found[key].name}/ and {p.name}/: "
                            "keep one (merge their files into it)", folder)
        found[key] = p
    return found


def child(folder: Path, name: str, *, nested: bool = False) -> Path | None:
    """The sub-folder `name` of `folder`, matched ignoring case (see `subfolders`); None if absent.
    `nested`: a same-named folder inside it (a zip unpacked into a folder named after the zip,
    `X/X/`) is followed."""
    found = subfolders(folder).get(name.lower())
    if found is not None and nested:
        return child(found, name) or found
    return found


def candidate_roots(src: Path, depth: int = 1) -> list[Path]:
    """`src`, then its sub-folders breadth first down to `depth` levels (hidden folders and zip
    residue skipped): where an adapter looks for the dataset folder inside what the user gave."""
    src = Path(src)
    if not src.is_dir():
        raise UserError("does not exist" if not src.exists() else "is not a folder", src)
    level, found = [src], [src]
    for _ in range(depth):
        level = [c for p in level for c in sorted(p.iterdir()) if c.is_dir() and _listable(c)]
        found += level
    return found


def _folders(names: Sequence[str], joiner: str) -> str:
    listed = [f"{n}/" for n in names]
    return (", ".join(listed[:-1]) + f" {joiner} " + listed[-1] if len(listed) > 1 else listed[0]) \
        + (" folders" if len(listed) > 1 else " folder")


def find_root(src: Path, names: Sequence[str], *, layout: str, required: Sequence[str] | None = None,
              label: str = "", depth: int = 1) -> Path:
    """The dataset folder: the first of `candidate_roots(src, depth)` holding a sub-folder named
    (ignoring case) in `names`. It must also hold every name in `required` (default: all of
    `names`); a missing one is an error naming the path where it was expected. No candidate
    holding any of `names` is an error naming `src`. `label` prefixes the folder names in that
    message ("no DRIVE training/ folder found")."""
    required = list(names if required is None else required)
    for folder in candidate_roots(src, depth):
        present = [n for n in names if child(folder, n) is not None]
        if not present:
            continue
        missing = [n for n in required if n not in present]
        if missing:
            has = ", ".join(f"{n}/" for n in present)
            raise UserError(f"missing folder {missing[0]}/ (the dataset folder has {has} but no {missing[0]}/ "
                            f"folder); expected {layout}", folder / missing[0])
        return folder
    wanted = _folders(required, "and") if required else _folders(names, "or")
    raise UserError(f"no {label + ' ' if label else ''}{wanted} found; expected {layout}", src)


def natural_key(name: str) -> tuple:
    """Sort key putting embedded numbers in numeric order, ignoring case ("Case9" < "Case10")."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))
