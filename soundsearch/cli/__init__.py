"""The `soundsearch` command line: parse, call the library, render.

Each command lives in a module of this package and is registered here through `_register`,
which maps the library's typed errors to one stderr line and exit code 1. Command modules
import heavy libraries (torch, soundfile, ...) inside the command body so that `--help` and
shell completion, which run the program on every Tab, stay fast.
"""

from __future__ import annotations

import sys

import typer

from soundsearch import __version__
from soundsearch.cli._common import register
from soundsearch.cli import duplicates, evaluate, index, models, query, serve, train

HELP = """Search your own sound library by example: index it, then query with a recording.

Example:  soundsearch index ~/Sounds && soundsearch query ~/Sounds/dog-bark.wav
"""

app = typer.Typer(
    name="soundsearch",
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    # -h as well as --help, on every command: the short form is what people type first.
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"soundsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    # No docstring: the app's help (HELP) is the one shown.
    return None

register(app, index.index, "index")
register(app, index.status, "status")
register(app, query.query, "query")
register(app, train.train, "train")
register(app, evaluate.eval_, "eval")
app.add_typer(models.app, name="models")
register(app, serve.serve, "serve")
register(app, duplicates.duplicates, "duplicates")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except BrokenPipeError:
        # `soundsearch query ... | head` closes our stdout early: end quietly.
        try:
            sys.stdout = None  # type: ignore[assignment]
        finally:
            sys.exit(0)
