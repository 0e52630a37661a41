"""The command surface: every command is there with help that teaches, and the README's set-up
is idempotent (a second `make setup` has nothing to do)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from medssl_bench.harness.app.cli import main

REPO = Path(__file__).resolve().parent.parent


def help_of(capsys, *args) -> str:
    capsys.readouterr()
    assert main([*args, "--help"]) == 0
    return capsys.readouterr().out


def test_every_command_has_help(capsys):
    top = help_of(capsys)
    for command in ("corpus", "pretrain", "runs"):
        assert command in top
    corpus = help_of(capsys, "corpus")
    for command in ("synth", "build", "show"):
        assert command in corpus
    pretrain = help_of(capsys, "pretrain")
    for text in ("--method", "--corpus", "--resume", "paper", "quick", "torchrun", "safetensors"):
        assert text in pretrain, text


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["no-such-command"]) == 2
    assert "no-such-command" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_setup_is_idempotent():
    """`make test` ran the set-up before this test; `make -q setup` says nothing is left to do."""
    if not any((REPO / ".venv").glob(".installed-*")):
        pytest.skip("the venv was not created by `make setup`")
    done = subprocess.run(["make", "-q", "setup"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, "a second `make setup` would reinstall: " + done.stdout + done.stderr


def test_ci_entry_runs_make_test():
    assert "make test" in (REPO / ".ci" / "run").read_text()
