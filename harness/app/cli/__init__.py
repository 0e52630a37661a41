"""The `bench` command line (Typer + rich).

Every sub-command raises `UserError` for problems the user can fix; `main()` turns those into one
red line on stderr and exit code 2, with no traceback.
"""
from __future__ import annotations

import sys

import typer
from rich.console import Console

from medssl_bench.harness.errors import UserError

app = typer.Typer(
    name="bench",
    help="Benchmark self-supervised pretraining for medical imaging "
    "(LVM-Med's 15 downstream tasks, pluggable SSL methods).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def workspace_option():
    """The `--workspace` option every command shares."""
    return typer.Option("workspace", "--workspace", envvar="BENCH_HOME",
                        help="Workspace folder holding corpora and runs (env BENCH_HOME).")


def _mount_subcommands() -> None:
    # Imported here so `bench --help` stays fast and sub-apps can import `console` from this module.
    from medssl_bench.harness.app.cli import checkpoints as cli_checkpoints
    from medssl_bench.harness.app.cli import eval as cli_eval
    from medssl_bench.harness.app.cli import leaderboard as cli_leaderboard
    from medssl_bench.harness.app.cli import pretrain as cli_pretrain
    from medssl_bench.harness.app.cli import sweep as cli_sweep
    from medssl_bench.harness.app.cli.corpus import corpus_app

    app.add_typer(corpus_app, name="corpus")
    cli_pretrain.register(app)
    cli_checkpoints.register(app)
    cli_eval.register(app)
    cli_leaderboard.register(app)
    cli_sweep.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bench` script: run the app, turn UserError into one line + exit 2."""
    _mount_subcommands()
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
    from medssl_bench.harness.process import configure_process

    configure_process()
    sys.exit(main())


if __name__ == "__main__":
    run()
