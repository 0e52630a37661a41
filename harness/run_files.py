"""Reading a run's own files back, when they may be damaged: a kill (or power loss) mid-write, a full disk,
a file planted in the run folder. Each damaged file is one UserError naming it and what to do, never a
traceback; the one expected damage (the half-written last line of metrics.jsonl, left by a kill while a
step was logged) is dropped with a note.

    runs/<name>/metrics.jsonl            read_metrics / keep_metrics_until
    runs/<name>/train/last_checkpoint    check_resume_checkpoint (mmengine's pointer to the newest epoch)
    runs/<name>/train/epoch_N.pth        check_resume_checkpoint (mmengine's full checkpoint)
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Callable

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import write_text_atomic

METRICS_FILE = "metrics.jsonl"
MMENGINE_KEYS = ("meta", "state_dict", "message_hub")  # what mmengine's save_checkpoint always writes


def read_metrics(path: Path, note: Callable[[str], None] | None = None) -> list[dict]:
    """The rows of a metrics.jsonl. A last line without its newline that is not JSON was cut by a kill
    mid-write: dropped, with a `note`. Any other bad line is a UserError naming the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as err:
        raise UserError(f"cannot read the run's metrics ({err.strerror or type(err).__name__})", path) from None
    lines, rows = text.split("\n"), []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["step"])
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # no newline after it: the write was cut short
                if note:
                    note(f"{path}: dropped its last line, half-written when the run was killed")
                break
            raise UserError(f"line {number} is not a metrics row (JSON with a step); delete that line (or the "
                            "file: it is a log, the checkpoints do not need it) and --resume again", path) from None
        rows.append(row)
    return rows


def keep_metrics_until(path: Path, step: int, note: Callable[[str], None] | None = None) -> None:
    """Rewrite metrics.jsonl with the rows up to `step` (a resumed run restarts after its last full
    checkpoint), atomically: a crash now keeps the old file, and a cut last line is gone."""
    if not Path(path).exists():
        return
    kept = [row for row in read_metrics(path, note) if int(row["step"]) <= step]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))


def epoch_checkpoints(train_dir: Path) -> list[Path]:
    """mmengine's epoch_N.pth files in `train_dir`, newest first."""
    found = [(int(m.group(1)), p) for p in Path(train_dir).glob("epoch_*.pth")
             if (m := re.fullmatch(r"epoch_(\d+)\.pth", p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _previous(train_dir: Path, damaged: Path | None) -> str:
    """What to do instead: resume from the epoch before, by naming its file in last_checkpoint."""
    earlier = [p for p in epoch_checkpoints(train_dir) if damaged is None or p.name != damaged.name]
    pointer = Path(train_dir) / "last_checkpoint"
    if not earlier:
        return "no other epoch checkpoint is left: start the run again under a new --name"
    return (f"to --resume from the previous epoch, write {earlier[0]} into {pointer} "
            f"{'and delete the damaged file ' if damaged else ''}(or start the run again under a new --name)")


def check_resume_checkpoint(filename: str | Path | None, train_dir: Path) -> Path:
    """The full checkpoint mmengine is about to resume from, proved readable first: a truthful pointer, a
    complete zip archive, and the objects mmengine writes (read with weights_only=True and the few types
    mmengine's own checkpoints need, so a planted pickle runs nothing). Returns the path."""
    pointer = Path(train_dir) / "last_checkpoint"
    if filename is None or not str(filename).strip():
        raise UserError(f"empty: the run was killed while it was written; {_previous(train_dir, None)}", pointer)
    path = Path(str(filename).strip())
    if not path.is_file():
        raise UserError(f"{pointer} names a checkpoint that is not there; {_previous(train_dir, None)}", path)
    if not zipfile.is_zipfile(path):
        raise UserError(f"damaged checkpoint: truncated or not a torch.save archive ({path.stat().st_size} "
                        f"bytes); {_previous(train_dir, path)}", path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()  # CRC of every member: catches damage the index does not show
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        bad_member = str(err) or type(err).__name__
    if bad_member:
        raise UserError(f"damaged checkpoint ({bad_member}); {_previous(train_dir, path)}", path)
    obj = _load_trusted(path, train_dir)
    if not isinstance(obj, dict) or any(key not in obj for key in MMENGINE_KEYS):
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"not a checkpoint this run wrote (holds {keys}, not mmengine's {', '.join(MMENGINE_KEYS)}); "
                        f"delete it; {_previous(train_dir, path)}", path)
    return path


def _load_trusted(path: Path, train_dir: Path) -> object:
    import torch

    from medssl_bench.harness.torch_compat import trusted_mmengine_checkpoint

    try:
        with trusted_mmengine_checkpoint():
            # memory-mapped: testzip above has read (and CRC-checked) every byte, so this proves only what the
            # pickle holds without materialising the weights a second time before mmengine loads them
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch reports damage and refused globals with many exception types
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(err))
        needs = f"it needs {found.group(1)}" if found else "it holds objects"
        what = (f"not a checkpoint this run wrote: {needs}, which mmengine's never do (nothing in it was run); "
                "delete it") if "Weights only load failed" in str(err) else \
            f"damaged checkpoint ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]})"
        raise UserError(f"{what}; {_previous(train_dir, path)}", path) from None
