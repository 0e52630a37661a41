"""Commands that do not train start light: `--help`, `tasks`, `runs`, `leaderboard` and `sweep show`
import neither torch nor mmengine (each checked in a new process, as a user runs it). And the entry
points apply the process-wide settings (harness.process) that importing never does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "mmengine", "mmseg", "mmdet", "lightly")

CHECK = """
import sys
from medssl_bench.harness.app.cli import main
code = main(sys.argv[1:])
loaded = [name for name in {heavy!r} if name in sys.modules]
assert code == 0, code
assert not loaded, "loaded " + ", ".join(loaded)
"""


def run_light(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(heavy=HEAVY), *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "120"})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace with one (fake) run and one sweep study, so `runs` and `sweep show` have rows."""
    import optuna

    from medssl_bench.harness.fsutil import write_json_atomic

    ws = tmp_path_factory.mktemp("startup") / "ws"
    write_json_atomic(ws / "runs" / "simclr-r18" / "run.json", {
        "name": "simclr-r18", "method": "simclr", "backbone": "resnet18", "profile": "quick", "status": "done",
        "epochs_done": 1, "config": {"epochs": 1}, "last_loss": 1.5, "corpus": {"id": "c0ffee"}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{ws / 'sweeps.db'}", study_name="simclr-quick",
                                direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    return ws


@pytest.mark.parametrize("args", [
    ["--help"], ["tasks"], ["runs"], ["leaderboard"], ["sweep", "show"], ["corpus", "--help"], ["eval", "--help"],
], ids=lambda args: " ".join(args))
def test_commands_that_do_not_train_import_no_torch(workspace, args):
    if args[-1] != "--help" and args != ["tasks"]:
        args = [*args, "--workspace", str(workspace)]
    done = run_light(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    if args[0] == "runs":
        assert "simclr-r18" in done.stdout
    if args[0] == "sweep":
        assert "simclr-quick" in done.stdout


def test_python_m_entry_applies_the_process_settings():
    """`python -m medssl_bench.harness` (and so `torchrun -m ...`) goes through cli.run, which sets
    OMP_WAIT_POLICY before anything loads OpenMP; importing the package alone does not."""
    script = ("import os, runpy, sys\n"
              "import medssl_bench.harness.app.cli\n"
              "print(os.environ.get('OMP_WAIT_POLICY'))\n"
              "sys.argv = ['bench', '--help']\n"
              "try:\n    runpy.run_module('medssl_bench.harness', run_name='__main__')\n"
              "except SystemExit as done:\n    assert done.code == 0, done.code\n"
              "print(os.environ.get('OMP_WAIT_POLICY'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "None" and lines[-1] == "PASSIVE"


def test_the_bench_script_applies_the_process_settings(monkeypatch):
    from medssl_bench.harness.app.cli import run

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(sys, "argv", ["bench", "--help"])
    with pytest.raises(SystemExit) as done:
        run()
    assert done.value.code == 0 and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
