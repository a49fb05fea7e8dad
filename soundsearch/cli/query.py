"""`soundsearch query`: the recordings of the store most similar to a query recording."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from soundsearch.cli._common import JsonOption, ModeOption, StoreOption, err, out
from soundsearch.constants import INSIDE_MAX_HOURS, PREFILTER_CANDIDATES, PREFILTER_MIN_ITEMS
from soundsearch.errors import printable as _shown  # plain text: callers escape where markup needs it
from soundsearch.present.document import clock, display_paths
from soundsearch.present.document import moment_clock as _momentclock

if TYPE_CHECKING:
    from rich.table import Table

    from soundsearch.search.engine import SearchResults

# One glyph per category: who has the sound ("differs" resolved by the query's own presence).
GLYPHS = {"both": ("●", "bold green"), "neither": ("·", "dim"), "query": ("◐", "yellow"), "result": ("◑", "cyan")}
LEGEND = "● both have it  · neither has it  ◐ only the query has it  ◑ only the result has it"
LOCATED_LEGEND = "⊃ m:ss–m:ss  the query's own sound was found there, inside the recording"


class GroupBy(str, Enum):
    FILE = "file"


def _complete_category(incomplete: str) -> list[str]:
    # Completion runs on every Tab: offer the default taxonomy without loading a model.
    from soundsearch.taxonomy import SONYC_UST_COARSE

    return [c for c in SONYC_UST_COARSE if c.startswith(incomplete)]


def query(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="A recording to search with (any format `index` reads); a long one counts as all its items.", show_default=False),
    ],
    k: Annotated[int, typer.Option("-k", "--top", min=1, metavar="K", help="How many results to show.")] = 10,
    store: StoreOption = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", metavar="NAME|PATH", help="Model name or .safetensors path. Default: the shipped default model.", show_default=False),
    ] = None,
    json_out: JsonOption = False,
    require: Annotated[
        Optional[list[str]],
        typer.Option(
            "--require", metavar="CATEGORY", autocompletion=_complete_category,
            help="Keep only results predicted to contain this category along with the query (state both). Repeatable.",
        ),
    ] = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option(
            "--exclude", metavar="CATEGORY", autocompletion=_complete_category,
            help="Drop results predicted to share this category with the query (state both). Repeatable.",
        ),
    ] = None,
    min_level: Annotated[
        Optional[int],
        typer.Option("--min-level", min=0, metavar="LEVEL", help="Drop results whose similarity level (categories in agreement) is below this.", show_default=False),
    ] = None,
    mode: ModeOption = None,
    include_self: Annotated[
        bool, typer.Option("--include-self", help="Also list the query's own items when it is in the store (hidden by default).")
    ] = False,
    html: Annotated[
        Optional[Path],
        typer.Option("--html", metavar="PATH", help="Write the results as a self-contained page with players and waveforms.", show_default=False),
    ] = None,
    csv_out: Annotated[
        Optional[Path], typer.Option("--csv", metavar="PATH", help="Write the results as CSV ('-': stdout).", show_default=False)
    ] = None,
    m3u: Annotated[
        Optional[Path],
        typer.Option("--m3u", metavar="PATH", help="Write the results as an M3U playlist ('-': stdout).", show_default=False),
    ] = None,
    paths_out: Annotated[
        bool, typer.Option("--paths", help="Print one full path per line (each file once) instead of the table.")
    ] = False,
    start: Annotated[
        Optional[str],
        typer.Option("--start", metavar="TIME", help="Search with FILE from this time on (seconds or m:ss, e.g. 1:35).", show_default=False),
    ] = None,
    end: Annotated[
        Optional[str],
        typer.Option("--end", metavar="TIME", help="Search with FILE up to this time (seconds or m:ss, e.g. 1:36).", show_default=False),
    ] = None,
    group_by: Annotated[
        Optional[GroupBy],
        typer.Option("--group-by", metavar="file", help="One row per file: its best moment and how many of its moments matched.", show_default=False),
    ] = None,
    exact: Annotated[
        bool, typer.Option("--exact", help=f"Score every stored item, even in a store of {PREFILTER_MIN_ITEMS:,} items or more (where only the prefilter's candidates are scored).")
    ] = False,
    inside: Annotated[
        Optional[bool],
        typer.Option("--inside/--no-inside", help=f"Look for the query's own sound inside the stored long recordings, located in time (default: when they add up to at most {INSIDE_MAX_HOURS:g} hours; queries of up to 30 s).", show_default=False),
    ] = None,
    candidates: Annotated[
        Optional[int],
        typer.Option("--candidates", min=1, metavar="N", help=f"Score only the N items the prefilter puts first for the query, at any store size and mode (default {PREFILTER_CANDIDATES:,} in stores of {PREFILTER_MIN_ITEMS:,} items or more).", show_default=False),
    ] = None,
) -> None:
    """Find the recordings most similar to FILE: same sound events present, same absent.

    Each stored item is scored against the query by the model. Results are ranked by the
    model file's recorded mode, or --mode: presence (the similarity level, how many
    categories both recordings agree on, then the model's expected agreement), blend (the
    expected agreement blended with acoustic similarity by the model's fitted weight) or
    acoustic (sounds like). Copies of the query (re-encoded, trimmed, re-gained...) come right
    after the query itself, marked "copy". The breakdown shows, per category, whether both
    have it (●), neither (·) or only one (✕), as the model predicts.

    The query's own items are hidden unless --include-self. --html writes a page to listen to
    every result; --csv, --m3u and --paths export them.

    Every result names its moment (the time range of the matched item in a long recording);
    --start/--end search with a region of FILE; --group-by file lists each file once.

    Example:  soundsearch query ~/Sounds/dog-bark-street.wav -k 5 --require dog --html dog.html

    Example:  soundsearch query street-2.wav --start 1:35 --end 1:36 --group-by file

    In large stores (the blend and acoustic modes) a prefilter picks candidates and only those
    are scored: --exact scores every item, --candidates N sets how many.
    """
    # Over 60 lines on purpose: typer declares its 17 options as parameters (~60 lines);
    # the body checks FILE, runs SearchEngine.search and hands the document to the exports and render.
    from soundsearch.audio.files import not_regular_reason
    from soundsearch.audio.items import parse_time
    from soundsearch.errors import AudioError

    path = file.expanduser()
    # One stat that never raises: Path.is_dir() raised PermissionError for a file in a folder
    # we may not enter, and a pipe named .wav hung the decoder forever.
    reason = not_regular_reason(path)
    if reason is not None:
        if reason.startswith("is a directory"):
            reason = "is a folder; give one recording to search with"
        elif reason.startswith("no such file"):
            reason = "no such file"
        raise AudioError(path, reason)
    if exact and candidates is not None:
        raise typer.BadParameter("--exact scores every item: leave out --candidates", param_hint="--candidates")
    t_start = parse_time(start, "--start") if start is not None else None
    t_end = parse_time(end, "--end") if end is not None else None
    # Only now numpy & co: a mistyped path is answered at once. The model is loaded as arrays
    # and scored in numpy: torch is imported only by a featurizer that needs it, for a query
    # file the store does not hold unchanged.
    from soundsearch.model.arrays import load_arrays
    from soundsearch.model.registry import resolve_model
    from soundsearch.paths import resolve_store_dir
    from soundsearch.search.engine import SearchEngine
    from soundsearch.store import Store

    with Store.open(resolve_store_dir(store)) as st:
        loaded = load_arrays(resolve_model(model))
        engine = SearchEngine(st, loaded)
        if engine.n_items == 0:
            from soundsearch.errors import StoreError

            raise StoreError(f"the store at {_shown(st.path)} holds no items: run `soundsearch index PATH` first")
        if not engine.cache_path().is_file():
            err.print(
                f"preparing the search cache for this store and model '{loaded.name}' (once)...",
                highlight=False, soft_wrap=True,
            )
        results = engine.search(
            path, k=k, require=require or (), exclude=exclude or (), min_level=min_level, mode=mode,
            include_self=include_self, start=t_start, end=t_end, group_by=group_by.value if group_by else None,
            candidates=candidates, exact=exact, inside=inside,
        )
        roots = st.roots()
        doc = to_json(results, st, loaded, roots)
        text = json_document(doc, loaded.name)  # refuses non-finite scores before any output
        from soundsearch.present.explain import filter_notes

        notes = filter_notes(doc)
        written = _write_exports(doc, html, csv_out, m3u, notes)
        if json_out:
            typer.echo(text)
        elif paths_out:
            from soundsearch.present.export import to_paths

            typer.echo(to_paths(doc["results"]), nl=False)
        elif not any(p is not None and str(p) == "-" for p in (csv_out, m3u)):
            render(results, roots, loaded.name, notes)
        for what, where in written:
            err.print(f"wrote {what} to {_shown(where)}", highlight=False, soft_wrap=True)


def _write_exports(doc: dict, html, csv_out, m3u, notes: list[str]) -> list[tuple[str, Path]]:
    """Write the requested files ('-' is stdout); [(what, path)] of the files written."""
    from soundsearch.errors import SoundsearchError
    from soundsearch.present.export import query_export

    jobs = []
    if csv_out is not None:
        jobs.append(("CSV", csv_out, lambda: query_export(doc, "csv")))
    if m3u is not None:
        jobs.append(("playlist", m3u, lambda: query_export(doc, "m3u")))
    if html is not None:
        from soundsearch.present.html import static_page

        jobs.append(("page", html, lambda: static_page(doc, notes)))
    written = []
    for what, where, make in jobs:
        text = make()
        if str(where) == "-":
            typer.echo(text, nl=False)
            continue
        target = where.expanduser()
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise SoundsearchError(f"cannot write {what} to {_shown(target)}: {exc.strerror or exc}") from None
        written.append((what, target))
    return written


# --------------------------------------------------------------------------------------------
# Rendering


def short_codes(names: list[str]) -> list[str]:
    """Unique short codes for category names: initials of hyphenated words, else a prefix."""
    codes: list[str] = []
    for name in names:
        words = [w for w in name.replace("_", "-").replace(" ", "-").split("-") if w]
        code = "".join(w[0] for w in words) if len(words) > 1 else name[: min(len(name), 3)]
        code = code.lower() or "?"
        base, n = code, 2
        while code in codes:
            code = f"{base}{n}"
            n += 1
        codes.append(code)
    return codes


def _length(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else clock(seconds)


def _fit_left(text: str, width: int) -> str:
    """Cut from the left: the file name at the end says most about a recording."""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1 :] if width > 1 else "…"


def build_table(results: "SearchResults", roots: list[Path], width: int | None) -> "Table":
    """The results table; `width` None: nothing cut (output that is not a terminal)."""
    # Over 60 lines on purpose: one table whose column widths are computed from each other and
    # from the cells it is then built from; in pieces, the widths and cells would travel between them.
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from soundsearch.present.document import sides

    rows = results.results
    names = display_paths([r.item.path for r in rows], roots)
    # The moment: where the query's own sound was found inside the recording, marked "⊃" (it
    # holds the query), else the item's range when the item is part of its file.
    times = [
        f"⊃ {_momentclock(r.located[0])}–{_momentclock(r.located[1])}" if r.located is not None
        else f"{_momentclock(r.item.start)}–{_momentclock(r.item.end)}"
        if r.item.end - r.item.start < r.item.file_duration - 1e-6 else ""
        for r in rows
    ]
    # Which moment of a long query matched, and how many moments of a grouped file matched.
    if any(r.query_moment for r in rows):
        times = [
            t + (f" ← {_momentclock(r.query_moment[0])}–{_momentclock(r.query_moment[1])}" if r.query_moment else "")
            for t, r in zip(times, rows)
        ]
    if results.group_by == "file":
        times = [t + (f" ({r.moments} moments)" if r.moments > 1 else "") for t, r in zip(times, rows)]
    c = len(results.taxonomy)
    codes = short_codes(list(results.taxonomy.categories))
    cells = {
        "#": [str(r.rank) for r in rows],
        "level": [f"{r.level}/{c}" for r in rows],
        "score": [f"{r.score:.2f}" for r in rows],
        "time": times,
        "length": [_length(r.item.file_duration) for r in rows],
    }
    fixed = {name: max([len(name)] + [len(v) for v in vals]) for name, vals in cells.items()}
    if not any(times):
        fixed.pop("time")
    # One column per category, headed by its short code (legend below the table).
    presence_w = sum(len(code) for code in codes) + len(codes) - 1
    n_cols = len(fixed) + 1 + len(codes)
    labels = [
        name + (" (query)" if r.is_query else " (copy)" if r.duplicate else "") for r, name in zip(rows, names)
    ]
    if width is None:
        file_w = max([len("file")] + [len(x) for x in labels])
    else:
        file_w = max(8, width - sum(fixed.values()) - presence_w - (n_cols - len(codes)))

    # No padding: SIMPLE_HEAD's column dividers are one space each, counted above.
    table = Table(box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for name, justify in (("#", "right"), ("level", "right"), ("score", "right")):
        table.add_column(name, justify=justify, no_wrap=True, min_width=fixed[name])
    table.add_column("file", no_wrap=True, overflow="ellipsis" if width is not None else "fold", max_width=file_w)
    if "time" in fixed:
        table.add_column("time", no_wrap=True, min_width=fixed["time"])
    table.add_column("length", justify="right", no_wrap=True, min_width=fixed["length"])
    for code in codes:
        table.add_column(code, justify="center", no_wrap=True, min_width=len(code))
    for r, label_text, t in zip(rows, labels, times):
        label = Text(_fit_left(label_text, file_w))
        if r.is_query:
            label.stylize("italic")
        cols = [cells["#"][r.rank - 1], cells["level"][r.rank - 1], cells["score"][r.rank - 1], label]
        if "time" in fixed:
            cols.append(t)
        cols.append(cells["length"][r.rank - 1])
        for side in sides(r.states, results.query_presence):
            glyph, style = GLYPHS[side]
            cols.append(Text(glyph, style=style))
        table.add_row(*cols)
    return table


def _fits_terminal() -> bool:
    """Cut to the terminal's width only for a terminal, or when COLUMNS asks for a width:
    piped output keeps every path whole for grep and xargs."""
    return out.is_terminal or bool(os.environ.get("COLUMNS"))


def render(results: "SearchResults", roots: list[Path], model_name: str, notes: list[str] | None = None) -> None:
    from rich.text import Text

    width = out.width if _fits_terminal() else None
    q = results.query
    n_seg = len(results.query_segments)
    head = Text(f"{_shown(q.name) if q else 'query'}", style="bold")
    head.append(f"  {n_seg} items" if n_seg > 1 else "")
    if results.region:
        head.append(f"  {_momentclock(results.region[0])}–{_momentclock(results.region[1])}")
    ranked = results.mode + (f" w={results.weight:.2f}" if results.weight is not None else "")
    head.append(f"  model {model_name}, ranked by {ranked}  {results.items_searched:,} items searched", style="dim")
    if results.candidates is not None:
        head.append(f" (the prefilter's {results.candidates:,} candidates scored)", style="dim")
    f = results.filters
    if f.get("require") or f.get("exclude") or f.get("min_level") is not None:
        head.append(f", {results.matches:,} pass the filters", style="dim")
    if results.self_hidden:
        n = results.self_hidden
        head.append(f", the query's own item{'s' if n != 1 else ''} hidden (--include-self shows {'them' if n != 1 else 'it'})", style="dim")
    out.print(head, soft_wrap=width is None)
    for note in notes or []:
        out.print(Text(note, style="yellow"), soft_wrap=True)
    if not results.results:
        out.print("no results: no stored item passes the filters", style="yellow", highlight=False)
        return
    if width is None:
        from rich.console import Console

        # A console as wide as the table: nothing wrapped or cut in a pipe or a file.
        Console(file=out.file, width=100_000, soft_wrap=True, color_system=None).print(
            build_table(results, roots, None), crop=False
        )
    else:
        out.print(build_table(results, roots, width))
    codes = short_codes(list(results.taxonomy.categories))
    legend = Text("columns: ", style="dim")
    legend.append(" ".join(f"{code}={name}" for code, name in zip(codes, results.taxonomy.categories)))
    out.print(legend, highlight=False, soft_wrap=width is None)
    out.print(Text(LEGEND, style="dim"), highlight=False, soft_wrap=width is None)
    if any(r.located is not None for r in results.results):
        out.print(Text(LOCATED_LEGEND, style="dim"), highlight=False, soft_wrap=width is None)


def json_document(doc: dict, model_name: str) -> str:
    """The --json text; a NaN or infinity is an error, never output (bare NaN is not JSON)."""
    from soundsearch.errors import SearchError

    try:
        return json.dumps(doc, allow_nan=False)
    except ValueError:
        raise SearchError(
            f"model '{model_name}' produced non-finite scores for this query: the model or the store is damaged"
        ) from None


def to_json(results: "SearchResults", store, model, roots: list[Path] | None = None) -> dict:
    from soundsearch.present.document import results_document

    return results_document(results, store, model, roots)
