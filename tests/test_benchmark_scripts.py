"""Benchmark scripts time what `bench` runs: each one that loads torch applies bench's process settings first
(harness.process.configure_process, as the `bench` entry point does). libgomp reads OMP_WAIT_POLICY once, when
torch loads it; a script that imported torch first timed spinning OpenMP threads, not bench's passive ones (its
thread environment then read PASSIVE all the same)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# Loads a script's module-level code (its imports; not main) in a fresh interpreter and reports the thread policy
# in the environment at the moment torch is first imported ("absent" if it never is).
PROBE = """
import json, os, runpy, sys
seen = {}
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "policy" not in seen:
            seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Watch())
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="probe")
print(json.dumps(seen.get("policy", "absent")))
"""


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py") if "torch" in p.read_text()))
def test_a_script_loads_torch_only_after_benchs_process_settings(script):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # the test session set it
    out = subprocess.run([sys.executable, "-c", PROBE, str(BENCHMARKS / script)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) in ("PASSIVE", "absent"), script
