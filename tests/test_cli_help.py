"""The CLI reads well at any width: every command's help at 80 and 200 columns (paragraphs reflow,
no line breaks in mid-sentence, no line wider than the terminal), `bench tasks` at 80 columns
(no word cut), and the app is mounted once, its commands callable one by one."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medssl_bench.downstream.registry import TASKS
from medssl_bench.harness.app.cli import app, main
from medssl_bench.harness.app.cli.data import tasks_app
from medssl_bench.harness.app.cli.pretrain import runs

REPO = Path(__file__).resolve().parent.parent
WIDTHS = (80, 200)


def command_paths(command, path=()) -> list[tuple[tuple[str, ...], object]]:
    """(path, click command) for the app, every command and every sub-command."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += command_paths(sub, (*path, name))
    return found


COMMANDS = command_paths(typer.main.get_command(app))


def words(text: str) -> str:
    return " ".join(text.split())


def rendered_help(capsys, monkeypatch, path, width: int) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(width))  # typer builds its rich console per call: it reads this
    capsys.readouterr()
    assert main([*path, "--help"]) == 0
    return capsys.readouterr().out.splitlines()


def description(lines: list[str]) -> list[list[str]]:
    """The rendered paragraphs of a command's help text: between the usage line and the first panel."""
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.lstrip().startswith("╭")), len(lines))
    paragraphs, current = [], []
    for line in lines[start:end]:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append(current)
            current = []
    return paragraphs + ([current] if current else [])


def test_the_walk_finds_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "pretrain", "runs", "eval", "tasks", "leaderboard", "checkpoints", "import-checkpoint", "corpus build",
            "corpus show", "corpus synth", "data prepare", "data synth", "sweep", "sweep show"} <= names


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "bench" for p, _ in COMMANDS])
def test_help_texts_are_paragraphs_without_hard_wraps(path, command):
    # rich keeps every newline of a command's help: a source line break would show at any width
    for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
        assert "\n" not in paragraph, f"hard-wrapped help in `bench {' '.join(path)}`: {paragraph[:60]!r}"
    for param in command.params:
        assert "\n" not in (getattr(param, "help", None) or ""), (path, param.name)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "bench" for p, _ in COMMANDS])
def test_help_renders_at_80_and_200_columns(capsys, monkeypatch, path, command, width):
    lines = rendered_help(capsys, monkeypatch, path, width)
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, f"`bench {' '.join(path)} --help` at {width} columns: {too_wide[0]!r}"
    source = [words(p) for p in inspect.cleandoc(command.help or "").split("\n\n") if p.strip()]
    shown = description(lines)
    assert [words(" ".join(p)) for p in shown] == source  # every paragraph, whole and in order
    text_width = width - 2  # rich indents the help text by one column on each side
    for paragraph in shown:
        for line, following in zip(paragraph, paragraph[1:]):
            # a line ends early only when the next word would not have fit: no break mid-sentence
            assert len(line.strip()) + 1 + len(following.split()[0]) > text_width, (path, width, line)
    if width == 200:
        for text in source:
            if len(text) <= text_width:
                assert any(text == line.strip() for line in lines), (path, text)  # one line, unbroken


def test_tasks_table_keeps_every_word_whole_at_80_columns():
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "medssl_bench.harness", "tasks"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), max(lines, key=len)
    tokens = {token for line in lines for token in line.split()}
    for task in TASKS.values():
        assert {task.name, task.family, task.metric} <= tokens, task.name
        assert {p for p in task.protocols if p not in task.optional} <= tokens, task.name
        assert {f"({p})" for p in task.optional} <= tokens, task.name
    assert {"task", "paper", "metric", "protocols"} <= tokens
    assert "(docs/tasks.md)" in lines[0] and "/".join(("..", "shared")) not in done.stdout  # the title points to the docs


def test_app_is_mounted_once_however_often_main_runs(capsys):
    def shape():
        return (len(app.registered_commands), len(app.registered_groups),
                sorted(typer.main.get_command(app).commands))

    before = shape()
    for _ in range(3):
        assert main(["--help"]) == 0
    assert shape() == before
    assert "pretrain" in before[2] and "sweep" in before[2]


def test_a_command_function_runs_by_itself(tmp_path, capsys):
    runs(workspace=tmp_path / "ws")  # a plain function: no app, no mounting
    assert "no runs in" in capsys.readouterr().out
    result = CliRunner().invoke(tasks_app, [], terminal_width=120)  # a sub-app on its own
    assert result.exit_code == 0, result.output
    assert "brain_tumor" in result.output and "bccd" in result.output
