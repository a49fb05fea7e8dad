"""`soundsearch duplicates`: groups of exact and near-identical recordings in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from soundsearch.cli._common import JsonOption, StoreOption, err, out
from soundsearch.constants import DUPLICATE_COSINE


def duplicates(
    store: StoreOption = None,
    threshold: Annotated[
        Optional[float],
        typer.Option("--threshold", "-t", metavar="T", min=-1.0, max=1.0,
                     help=f"Acoustic cosine at which two items are compared as possible copies. Default: the one search uses ({DUPLICATE_COSINE:.2f}).",
                     show_default=False),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", metavar="NAME|PATH", help="Model whose search cache holds the acoustic vectors. Default: the shipped default model.", show_default=False),
    ] = None,
    json_out: JsonOption = False,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", metavar="PATH", help="Write the groups as CSV ('-': stdout).", show_default=False)] = None,
    m3u: Annotated[Optional[Path], typer.Option("--m3u", metavar="PATH", help="Write every member as an M3U playlist ('-': stdout).", show_default=False)] = None,
    paths_out: Annotated[bool, typer.Option("--paths", help="Print each member's full path, one per line, groups separated by a blank line.")] = False,
) -> None:
    """Find recordings stored more than once: exact copies (identical features) and near copies
    (the same audio re-encoded, trimmed, gain-changed, a little faster or slower: acoustic cosine
    at or above --threshold, and sounds that follow each other over time, as search checks copies).

    Exact groups come first. Windows of one long recording are never paired with each other.

    Example:  soundsearch duplicates --store ~/sound-store --paths
    """
    from soundsearch.search.duplicates import find_duplicates, groups_document
    from soundsearch.model.checkpoint import load_model
    from soundsearch.model.registry import resolve_model
    from soundsearch.paths import resolve_store_dir
    from soundsearch.search.engine import SearchEngine
    from soundsearch.store import Store

    with Store.open(resolve_store_dir(store)) as st:
        engine = SearchEngine(st, load_model(resolve_model(model)))
        if not engine.cache_path().is_file():
            err.print("preparing the search cache for this store (once)...", highlight=False, soft_wrap=True)
        groups = find_duplicates(engine, threshold)
        roots = st.roots()
        doc = groups_document(groups, DUPLICATE_COSINE if threshold is None else threshold, engine.n_items)
    rows = _member_rows(doc, roots)
    written = _write_exports(rows, csv_out, m3u)
    if json_out:
        import json

        typer.echo(json.dumps(doc))
    elif paths_out:
        blocks = ["".join(m["path"] + "\n" for m in dict((m["path"], m) for m in g["members"]).values()) for g in doc["groups"]]
        typer.echo("\n".join(blocks), nl=False)
    elif not any(w is not None and str(w) == "-" for w in (csv_out, m3u)):
        _render(doc, rows)
    for what, where in written:
        err.print(f"wrote {what} to {where}", highlight=False, soft_wrap=True)


def _member_rows(doc: dict, roots: list[Path]) -> list[dict]:
    """One row per group member, numbered by group, with its display path and playlist label."""
    from soundsearch.present.document import display_paths

    rows = []
    for n, g in enumerate(doc["groups"], 1):
        names = display_paths([Path(m["path"]) for m in g["members"]], roots)
        for m, name in zip(g["members"], names):
            rows.append({"group": n, "kind": g["kind"], **m, "display": name, "label": f"group {n}, {g['kind']}"})
    return rows


def _write_exports(rows: list[dict], csv_out: Path | None, m3u: Path | None) -> list[tuple[str, Path]]:
    """--csv and --m3u: each to its file, or to stdout for '-'; the files written."""
    from soundsearch.present.export import to_csv, to_m3u

    written = []
    for what, where, make in (
        ("CSV", csv_out, lambda: to_csv(rows, ["group", "kind", "path", "start", "end", "file_duration", "cosine"])),
        ("playlist", m3u, lambda: to_m3u(rows, title="soundsearch duplicates")),
    ):
        if where is None:
            continue
        if str(where) == "-":
            typer.echo(make(), nl=False)
        else:
            where.expanduser().write_text(make(), encoding="utf-8")
            written.append((what, where))
    return written


def _render(doc: dict, rows: list[dict]) -> None:
    from rich.text import Text

    groups = doc["groups"]
    n_exact = sum(g["kind"] == "exact" for g in groups)
    out.print(
        Text(f"{len(groups)} group{'s' if len(groups) != 1 else ''} of copies among {doc['items_compared']:,} items "
             f"({n_exact} exact, {len(groups) - n_exact} near; cosine ≥ {doc['threshold']:.2f})", style="bold"),
        soft_wrap=True,
    )
    current = None
    for r in rows:
        if r["group"] != current:
            current = r["group"]
            out.print(Text(f"\ngroup {current}  {r['kind']}", style="bold cyan"), soft_wrap=True)
        when = ""
        if r["windowed"]:
            from soundsearch.present.document import clock

            when = f"  {clock(r['start'])}–{clock(r['end'])}"
        line = Text(f"  {r['cosine']:.3f}  ", style="dim")
        line.append(r["display"] + when)
        out.print(line, soft_wrap=True, highlight=False)
