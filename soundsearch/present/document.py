"""The results document: everything `query --json`, the HTML page, the exports and the web
app show, built once from SearchResults so they cannot disagree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soundsearch.search.engine import SearchResults

# Which recording holds a category, per result: the model's three states, with "differs"
# resolved to a side by the query's own presence (the query paired with itself).
SIDES = ("both", "neither", "query", "result")
SIDE_TEXT = {
    "both": "both have it",
    "neither": "neither has it",
    "query": "only the query has it",
    "result": "only the result has it",
}


def shown(path) -> str:
    """Printable form of a path whose name need not be valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss past an hour: how a time in a recording reads to a person."""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def moment_clock(seconds: float) -> str:
    """m:ss.s: event items and query regions start at any tenth of a second, whole seconds
    would hide it (m:ss when the time is whole)."""
    if abs(seconds - round(seconds)) < 0.05:
        return clock(seconds)
    m, s = divmod(seconds, 60.0)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:04.1f}" if h else f"{m}:{s:04.1f}"


def display_paths(paths: list[Path], roots: list[Path]) -> list[str]:
    """Each path relative to the indexed folder holding it, else to the results' common folder."""
    roots = sorted((Path(r) for r in roots), key=lambda r: len(r.parts), reverse=True)
    out: list[str | None] = []
    for p in paths:
        rel = None
        for r in roots:
            if r != p and p.is_relative_to(r):
                rel = p.relative_to(r)
                break
        out.append(shown(rel) if rel is not None else None)
    rest = [p for p, s in zip(paths, out) if s is None]
    if rest:
        try:
            common = Path(os.path.commonpath([str(p.parent) for p in rest]))
        except ValueError:
            common = None
        for i, (p, s) in enumerate(zip(paths, out)):
            if s is None:
                out[i] = shown(p.relative_to(common)) if common is not None and p != common else shown(p)
    return [s or "" for s in out]


def sides(states, query_presence) -> list[str]:
    """Per category: both / neither / query / result (who has the sound)."""
    from soundsearch.presence import STATES

    names = []
    for j, s in enumerate(states.tolist()):
        state = STATES[int(s)]
        if state == "differs":
            has = query_presence is not None and float(query_presence[j]) >= 0.5
            state = "query" if has else "result"
        names.append(state)
    return names


def is_windowed(start: float, end: float, file_duration: float) -> bool:
    return end - start < file_duration - 1e-6


def _query_part(results: "SearchResults", cats: list[str]) -> dict:
    """The document's "query": what was searched with, and what the model hears in it."""
    qp = results.query_presence
    return {
        "path": shown(results.query) if results.query else None,
        "name": shown(results.query.name) if results.query else None,
        "items": [{"start": round(s, 3), "end": round(e, 3)} for s, e in results.query_segments],
        # The region of the file searched with (--start/--end), else null.
        "region": {"start": round(results.region[0], 3), "end": round(results.region[1], 3)} if results.region else None,
        "in_store": results.query_in_store,
        "self_hidden": results.self_hidden,
        # The model's probability that the query holds each category.
        "presence": {c: round(float(qp[j]), 6) for j, c in enumerate(cats)} if qp is not None else None,
    }


def _result_entry(r, name: str, cats: list[str], query_presence) -> dict:
    """One entry of the document's "results": the item, its scores and its categories."""
    from soundsearch.presence import STATES

    return {
        "rank": r.rank,
        "path": shown(r.item.path),
        "display": name,
        "row": r.item.row,
        "start": round(r.item.start, 3),
        "end": round(r.item.end, 3),
        "file_duration": round(r.item.file_duration, 3),
        "windowed": is_windowed(r.item.start, r.item.end, r.item.file_duration),
        # The matched moment in its file: where the query's own sound was found inside the
        # recording (search.contains, to 16 ms) when it was, else the item's time range.
        "moment": {"start": round(r.moment[0], 3), "end": round(r.moment[1], 3)},
        # The score with which the query's sound was found at `moment` (search.contains), or
        # null when the result was not found that way.
        "contains": None if r.contains is None else round(r.contains, 6),
        # The query's item that matches this moment best (a query of several items).
        "query_moment": (
            {"start": round(r.query_moment[0], 3), "end": round(r.query_moment[1], 3)} if r.query_moment else None
        ),
        # group_by file: this file's moments ranked above the first file left out.
        "moments": r.moments,
        "level": r.level,
        "score": round(r.score, 6),
        "closeness": round(r.closeness, 6),
        "is_query": r.is_query,
        "acoustic": round(r.acoustic, 6),
        "rank_score": round(r.rank_score, 6),
        "duplicate": r.duplicate,
        # How much this item's sound follows the query's over time (search.fingerprint);
        # null where the two were not compared.
        "fingerprint": None if r.fingerprint is None else round(r.fingerprint, 6),
        "categories": {
            cat: {
                **{state: round(float(p), 6) for state, p in zip(STATES, r.probs[j])},
                "state": STATES[int(r.states[j])],
                "side": side,
            }
            for j, (cat, side) in enumerate(zip(cats, sides(r.states, query_presence)))
        },
    }


def results_document(results: "SearchResults", store, model, roots: list[Path] | None = None) -> dict:
    """The --json document. Keys older than the page (everything but `display`, `side`,
    `presence`, `self_hidden`, `filter_effects`, `row`, `windowed`, and the moment keys
    `region`, `group_by`, `moment`, `query_moment`, `moments`, `contains`) keep their meaning."""
    cats = list(results.taxonomy.categories)
    roots = list(roots) if roots is not None else store.roots()
    rows = results.results
    display = display_paths([r.item.path for r in rows], roots)
    return {
        "query": _query_part(results, cats),
        "model": {"name": model.name, "path": shown(model.path) if model.path else None, "variant": model.variant},
        "store": shown(store.path),
        "roots": [shown(r) for r in roots],
        "featurizer": {"identity": store.featurizer_identity, **store.featurizer_spec},
        "categories": cats,
        "filters": results.filters,
        "filter_effects": results.filter_effects,
        "mode": results.mode,
        "weight": results.weight,
        "group_by": results.group_by,
        "items_searched": results.items_searched,
        "matches": results.matches,
        "candidates": results.candidates,
        # Hours of long recordings the query's own sound was not looked for inside (over
        # constants.INSIDE_MAX_HOURS and not asked for); null when searched or none are stored.
        "inside_skipped_hours": None if results.inside_skipped_hours is None else round(results.inside_skipped_hours, 3),
        "results": [_result_entry(r, name, cats, results.query_presence) for r, name in zip(rows, display)],
    }
