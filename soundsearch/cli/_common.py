"""What every command shares: consoles, options, error mapping, progress."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from soundsearch.errors import SoundsearchError

# Data goes to stdout, everything meant for a person to stderr, so `--json` output pipes cleanly.
out = Console(soft_wrap=False)
err = Console(stderr=True)

StoreOption = Annotated[
    Optional[Path],
    typer.Option(
        "--store",
        help="Feature store folder. Default: $SOUNDSEARCH_STORE, else a per-user data folder.",
        show_default=False,
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _mode_help() -> str:
    from soundsearch.ranking import MODE_HELP

    return "How to order results: " + "; ".join(f"{m.value}: {text}" for m, text in MODE_HELP.items()) + (
        ". Default: the mode recorded in the model file (presence for models that record none)."
    )


def _complete_mode(incomplete: str) -> list[str]:
    from soundsearch.ranking import MODES

    return [m for m in MODES if m.startswith(incomplete)]


ModeOption = Annotated[
    Optional[str],
    typer.Option("--mode", metavar="presence|blend|acoustic", help=_mode_help(), autocompletion=_complete_mode, show_default=False),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    # Escaped and never wrapped: messages carry paths (which may contain "[...]") and
    # featurizer identities longer than a terminal line, and scripts grep them.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def register(app: typer.Typer, fn: Callable, name: str) -> None:
    """Add `fn` as command `name`, turning SoundsearchError into one line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SoundsearchError as exc:
            raise fail(str(exc)) from None

    app.command(name)(wrapper)


@contextmanager
def progress(quiet: bool, *columns_extra) -> Iterator["object | None"]:
    """A rich Progress on stderr, or None with --quiet (callers then skip updates)."""
    if quiet:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(bar_width=None),  # the bar takes what the numbers leave, so 80 columns fit them all
        MofNCompleteColumn(),
        *columns_extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=False) as bar:
        yield bar
