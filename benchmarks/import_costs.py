"""What `bench leaderboard` pays before it builds anything: the import time of each heavy package it
needs, each measured alone in a new interpreter (median of --repeats), and the bare interpreter.
Backs the start-up breakdown in benchmarks/README.md (issue #17's leaderboard ratio).

    python benchmarks/import_costs.py [--repeats 5] [--device "2-core CPU"]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODULES = ("numpy", "scipy.special", "scipy.stats", "sqlalchemy", "typer, rich.console",
           "medssl_bench.harness.app.cli", "medssl_bench.leaderboard")
PROBE = "import time; t = time.perf_counter(); import {m}; print(time.perf_counter() - t)"


def seconds(module: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE.format(m=module)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="2-core CPU, this project's machine kind")
    args = parser.parse_args()
    runs = {m: [] for m in MODULES}
    bare = []
    for _ in range(args.repeats):  # alternate, so a change of load hits every module alike
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
        for module in MODULES:
            runs[module].append(seconds(module))
    result = {"benchmark": "import_costs", "date": time.strftime("%Y-%m-%d"), "device": args.device,
              "load_average_1min": os.getloadavg()[0], "repeats": args.repeats,
              "interpreter_start_s_median": round(statistics.median(bare), 3),
              "import_s_median": {m: round(statistics.median(v), 3) for m, v in runs.items()},
              "import_s": {m: [round(x, 3) for x in v] for m, v in runs.items()}}
    out = Path(__file__).parent / "results" / "import_costs.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for module, value in result["import_s_median"].items():
        print(f"{module:32s} {value:.3f} s")
    print(f"{'(interpreter start)':32s} {result['interpreter_start_s_median']:.3f} s  -> {out}")


if __name__ == "__main__":
    main()
