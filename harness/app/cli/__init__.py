"""The `bench` command line (Typer + rich).

Each topic module (cli/<topic>.py) defines its commands at module level on its own Typer app and
imports only cli/common; this module mounts every one of them once, at import. A module that holds
a group (corpus, data, sweep) keeps it as a sub-group; the others' commands join the top level.

Every command raises `UserError` for problems the user can fix; `main()` turns those into one red
line on stderr and exit code 2, with no traceback.
"""
from __future__ import annotations

import sys

import typer

from medssl_bench.harness.app.cli.checkpoints import checkpoints_app
from medssl_bench.harness.app.cli.common import err_console
from medssl_bench.harness.app.cli.corpus import corpus_app
from medssl_bench.harness.app.cli.data import data_app, tasks_app
from medssl_bench.harness.app.cli.eval import eval_app
from medssl_bench.harness.app.cli.leaderboard import leaderboard_app
from medssl_bench.harness.app.cli.pretrain import pretrain_app
from medssl_bench.harness.app.cli.sweep import sweep_app
from medssl_bench.harness.errors import UserError

app = typer.Typer(
    name="bench",
    help="Benchmark self-supervised pretraining for medical imaging "
    "(LVM-Med's 15 downstream tasks, pluggable SSL methods).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# In the order `bench --help` lists them: pretrain, then evaluate, then the groups.
for commands in (pretrain_app, checkpoints_app, tasks_app, eval_app, leaderboard_app):
    app.add_typer(commands)  # no name: the commands join the top level
app.add_typer(corpus_app, name="corpus")
app.add_typer(data_app, name="data")
app.add_typer(sweep_app, name="sweep")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bench` script: run the app, turn UserError into one line + exit 2."""
    try:
        code = app(args=argv, standalone_mode=False)  # a command's typer.Exit(n) comes back as n here
    except UserError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return err.exit_code
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        err_console.print("[red]aborted[/]")
        return 130
    except Exception as err:
        # Usage errors (unknown option/command) arrive here in non-standalone mode. Typer vendors
        # its own click, so recognise them by shape rather than by class.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            return err.exit_code
        raise
    return code if isinstance(code, int) else 0


def run() -> None:
    """The `bench` script and `python -m medssl_bench.harness`: process settings first, then main."""
    from medssl_bench.harness.process import configure_process

    configure_process()
    sys.exit(main())


if __name__ == "__main__":
    run()
