"""The code a GPU run measured, for a device that gets no .git: `record` (here, by gpu_wheels.sh) writes the commit,
clean/dirty and a hash of the code to .whl/code.txt; `stamp FILE` (on the device, by run_gpu.sh) fills a result's
`code` from it when the result reads "unknown", dirty if the code there no longer hashes the same.

    python3 benchmarks/code_stamp.py record
    python3 benchmarks/code_stamp.py stamp benchmarks/results/view_costs_h100.json
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

RECORD = Path(".whl/code.txt")  # relative to the repository root, where both scripts run
FOLDERS = ("harness", "methods", "downstream", "leaderboard", "benchmarks")


def tree_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(p for folder in FOLDERS for p in Path(folder).rglob("*.py") if "__pycache__" not in p.parts):
        h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def record() -> None:
    # bench's own code_version (commit; dirty unless only results changed), loaded from its file: this runs under
    # any python3, bench installed or not, and provenance.py imports only the standard library
    spec = importlib.util.spec_from_file_location("provenance", Path("harness/provenance.py"))
    provenance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(provenance)
    code = provenance.code_version()
    RECORD.write_text(f"{code['git_sha']} {'dirty' if code['dirty'] else 'clean'} {tree_hash()}\n")


def stamp(path: Path) -> None:
    if not (path.is_file() and RECORD.is_file()):
        return
    result = json.loads(path.read_text())
    if result.get("code", {}).get("git_sha") != "unknown":
        return
    sha, state, tree = RECORD.read_text().split()
    same = tree_hash() == tree
    result["code"] = {"git_sha": sha, "dirty": state == "dirty" or not same,
                      "from": "gpu_wheels.sh's .whl/code.txt" + ("" if same else "; the code changed after it")}
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        record()
    elif sys.argv[1:2] == ["stamp"] and len(sys.argv) == 3:
        stamp(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
