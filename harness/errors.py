"""User-facing errors: one clear line, a non-zero exit, no traceback.

Code raises `UserError` for anything the user can fix (a bad path, a bad option, a corrupt
file). The CLI catches it at the top and prints its message; every other exception is a bug
and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input. `str(err)` is the single line shown to the user."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        line = f"{self.path}: {message}" if self.path else message
        super().__init__(" ".join(line.split()))  # one line, always


class CorruptImageError(UserError):
    """An image file that cannot be decoded."""
