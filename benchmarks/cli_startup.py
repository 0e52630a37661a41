"""Start-up time of commands that do not train (issue #17: `bench --help` <= 0.3 s).

Each command runs as a user runs it, the `bench` script in a new process, --repeats times,
alternating the commands so that a change of load hits all alike; recorded: the median wall seconds
of each, the interpreter alone (`python -c pass`, the floor no CLI goes below) and the load average.
The workspace is empty, so `runs` times start-up, not reading runs.

    python benchmarks/cli_startup.py [--repeats 10] [--device "2-core CPU"]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {"python -c pass": None, "bench --help": ["--help"], "bench tasks": ["tasks"], "bench runs": ["runs"]}
GOAL_HELP_SECONDS = 0.3


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli_startup.json"))
    parser.add_argument("--device", default="2-core CPU, this project's machine kind",
                        help="the machine, in words, for the table")
    args = parser.parse_args()
    bench = str(Path(sys.executable).with_name("bench"))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "COLUMNS": "120", "BENCH_HOME": tmp}
        seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(args.repeats):
            for name, argv in COMMANDS.items():
                command = [sys.executable, "-c", "pass"] if argv is None else [bench, *argv]
                seconds[name].append(timed(command, env))
    medians = {name: round(statistics.median(values), 3) for name, values in seconds.items()}
    from medssl_bench.harness.provenance import code_version

    result = {"benchmark": "cli_startup", "date": time.strftime("%Y-%m-%d"), "device": args.device,
              "seconds_median": medians, "seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
              "goal_help_seconds": GOAL_HELP_SECONDS, "load_average_1min": round(os.getloadavg()[0], 2),
              "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
              "code": code_version()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"| machine | {' | '.join(f'`{name}`' for name in COMMANDS)} | load average |")
    print(f"| {args.device} | {' | '.join(f'{medians[name]:.2f} s' for name in COMMANDS)} | "
          f"{result['load_average_1min']} |")


if __name__ == "__main__":
    main()
