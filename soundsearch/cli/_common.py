"""What every command shares: consoles, options, error mapping, progress."""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape

from soundsearch.constants import MODE_HELP, RANKING_MODES
from soundsearch.errors import SoundsearchError, printable


def _plain_help_types() -> None:
    """Typer 0.2x prints a type column of Python annotations in --help: `<bool>` beside every
    flag (--help included) and `<path>` beside an argument already named by its metavar. A flag
    takes no value, and an argument's metavar says what it takes, so both show nothing there;
    every other parameter names its value with a metavar (tests/test_cli_basics.py checks)."""
    from typer import core

    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is None or argument is None or not hasattr(argument, "display_type_rich"):
        return  # an older typer, which prints no such column
    typed_option, typed_argument = option.display_type_rich, argument.display_type_rich

    def option_type(self, ctx):
        return None if self.is_flag and self.metavar is None else typed_option(self, ctx)

    def argument_type(self, ctx):
        return None if self.metavar is not None else typed_argument(self, ctx)

    option.display_type_rich, argument.display_type_rich = option_type, argument_type


_plain_help_types()

# Data goes to stdout, everything meant for a person to stderr, so `--json` output pipes cleanly.
out = Console(soft_wrap=False)
err = Console(stderr=True)

StoreOption = Annotated[
    Optional[Path],
    typer.Option(
        "--store",
        metavar="DIR",
        help="Feature store folder. Default: $SOUNDSEARCH_STORE, else a per-user data folder.",
        show_default=False,
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


# Mirrors soundsearch.features' registry (tests check they agree); spelled out here so that
# `--help` and completion need not import the featurizers.
class FeaturizerName(str, Enum):
    logmel = "logmel"
    aisfx = "aisfx"
    openl3 = "openl3"


def featurizer_option(help: str) -> Any:
    """`--featurizer NAME` (one of FeaturizerName) with a command's own help text."""
    return Annotated[Optional[FeaturizerName], typer.Option("--featurizer", "-f", metavar="|".join(FeaturizerName.__members__), help=help, show_default=False)]


ParamOption = Annotated[
    Optional[list[str]],
    typer.Option("--param", "-p", help="Featurizer parameter KEY=VALUE, repeatable (e.g. stats=mean,std,max).", metavar="KEY=VALUE"),
]
JobsOption = Annotated[
    Optional[int],
    typer.Option("--jobs", "-j", min=1, metavar="N", help="Worker processes computing features. Default: all cores.", show_default=False),
]
DatasetOption = Annotated[
    str,
    typer.Option("--dataset", "-d", metavar="sonyc-ust|CSV", help="'sonyc-ust', or the path of a labels CSV: a path column plus one 0/1 column per category (or a labels column)."),
]
DataDirOption = Annotated[
    Optional[Path],
    typer.Option("--data-dir", metavar="DIR", help="Where the SONYC-UST release lives. Default: $SOUNDSEARCH_DATA/sonyc-ust, else a per-user data folder.", show_default=False),
]


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """--param KEY=VALUE pairs as a dict; values are JSON where they parse, else strings."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value  # plain strings need no quotes: stats=mean,max
    return params


def shown(path: Any) -> str:
    """Printable, markup-safe path (names need not be UTF-8 and may contain brackets)."""
    return escape(printable(path))


SHOW = 10  # entries a list on the terminal shows before "... and N more"


def print_some(console: Console, lines: Sequence[str], more: str = "", limit: int = SHOW) -> None:
    """Print the first `limit` lines, then "  ... and N more<more>" for the rest."""
    for line in lines[:limit]:
        console.print(line, highlight=False, soft_wrap=True)
    if len(lines) > limit:
        console.print(f"  ... and {len(lines) - limit} more{more}", highlight=False, soft_wrap=True)


def _mode_help() -> str:
    return "How to order results: " + "; ".join(f"{m}: {text}" for m, text in MODE_HELP.items()) + (
        ". Default: the mode recorded in the model file (presence for models that record none)."
    )


def _complete_mode(incomplete: str) -> list[str]:
    return [m for m in RANKING_MODES if m.startswith(incomplete)]


ModeOption = Annotated[
    Optional[str],
    typer.Option("--mode", metavar="|".join(RANKING_MODES), help=_mode_help(), autocompletion=_complete_mode, show_default=False),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    # Escaped and never wrapped: messages carry paths (which may contain "[...]") and
    # featurizer identities longer than a terminal line, and scripts grep them.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def one_line_errors(fn: Callable) -> Callable:
    """`fn` with SoundsearchError turned into one stderr line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SoundsearchError as exc:
            raise fail(str(exc)) from None

    return wrapper


def register(app: typer.Typer, fn: Callable, name: str) -> None:
    """Add `fn` as command `name`, turning SoundsearchError into one line and exit code 1."""
    app.command(name)(one_line_errors(fn))


def clock(seconds: float | None) -> str:
    """0:18, 12:05, 1:02:03: minutes and seconds, hours only when there are any."""
    if seconds is None:
        return "-:--"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_columns(*columns_extra) -> list:
    """The columns of every progress bar: what, bar, done/total, extras, elapsed, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn
    from rich.table import Column
    from rich.text import Text

    def fixed() -> Column:
        # Words and numbers never wrap: on a narrow terminal the bar gives way instead.
        return Column(no_wrap=True)

    class Elapsed(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"elapsed {clock(task.finished_time if task.finished else task.elapsed or 0.0)}", style="progress.elapsed")

    class Left(ProgressColumn):
        # Refreshed with the bar, not at every update: the estimate otherwise flickers.
        max_refresh = 0.5

        def render(self, task) -> Text:
            left = 0.0 if task.finished else task.time_remaining
            return Text(f"left {clock(left)}", style="progress.remaining")

    return [
        TextColumn("[progress.description]{task.description}", table_column=fixed()),
        BarColumn(bar_width=None),  # the bar takes what the numbers leave, so 80 columns fit them all
        MofNCompleteColumn(table_column=fixed()),
        *columns_extra,
        Elapsed(table_column=fixed()),
        Left(table_column=fixed()),
    ]


@contextmanager
def progress(quiet: bool, *columns_extra) -> Iterator["object | None"]:
    """A rich Progress on stderr, or None with --quiet (callers then skip updates)."""
    if quiet:
        yield None
        return
    from rich.progress import Progress

    with Progress(*progress_columns(*columns_extra), console=err, transient=False) as bar:
        yield bar


@contextmanager
def waiting(quiet: bool, what: str) -> Iterator["object | None"]:
    """A spinner on stderr saying `what` while nothing can be counted yet (None with --quiet).

    It disappears when stopped, so an error raised meanwhile stands alone on stderr. Callers
    may stop it early (`.stop()`), e.g. when their progress bar takes over.
    """
    if quiet:
        yield None
        return
    status = err.status(what, spinner="dots")
    status.start()
    try:
        yield status
    finally:
        status.stop()
