"""Names the user gives (run, sweep study, imported checkpoint) become folder names in the workspace, so
one rule checks them all: a safe character set, a bounded length, nothing a path could hide in."""
from __future__ import annotations

import re

from medssl_bench.harness.errors import UserError

MAX_NAME = 100
# `bench eval --checkpoint random|all` mean the random-init baseline and every checkpoint
RESERVED_NAMES = {"random", "all"}
# first a letter or digit: no hidden folder, no option-like "-x", no "." or ".."; no separators at all
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str, option: str = "--name", max_len: int = MAX_NAME) -> str:
    """`name` if it is safe as one folder name inside the workspace, else a UserError naming `option`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > max_len or name in RESERVED_NAMES:
        raise UserError(f"{option} {name!r} is not a name: it must be letters, digits, '.', '_' or '-', at most "
                        f"{max_len}, starting with a letter or digit (no '/', no path), and not "
                        f"{' or '.join(sorted(RESERVED_NAMES))}; choose another")
    return name
