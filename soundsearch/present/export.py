"""Exports of a result list: CSV, M3U playlist, plain paths. Each returns text; the CLI writes it.

Rows are result-document entries (present.document): dicts with at least `path`, `start`,
`end`, `file_duration` and `windowed`; other keys become CSV columns.
"""

from __future__ import annotations

import csv
import io
import math

FORMATS = ("csv", "m3u", "paths")


def _clock(seconds: float) -> str:
    s = int(math.floor(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def to_paths(rows: list[dict]) -> str:
    """One full path per line, each file once (a long file's several windows are one file), in
    result order: what `xargs` and other tools want."""
    seen: set[str] = set()
    lines = []
    for r in rows:
        if r["path"] not in seen:
            seen.add(r["path"])
            lines.append(r["path"])
    return "".join(p + "\n" for p in lines)


def to_m3u(rows: list[dict], title: str | None = None) -> str:
    """An extended M3U playlist (UTF-8, .m3u8 style) that players and DAW browsers open.

    #EXTINF carries the file's duration in whole seconds and a title. M3U has no standard way to
    start a file at an offset: for a windowed item the offset is given as VLC's #EXTVLCOPT
    start-time/stop-time (other players ignore it) and as a comment naming the time range.
    """
    out = ["#EXTM3U"]
    if title:
        out.append(f"#PLAYLIST:{title}")
    for r in rows:
        if r.get("contains") is not None and r.get("moment"):
            # The query's own sound was found inside the recording: start the player there.
            r = {**r, "start": r["moment"]["start"], "end": r["moment"]["end"], "windowed": True}
        name = r.get("display") or r["path"].rsplit("/", 1)[-1]
        label = name
        if r.get("windowed"):
            label = f"{name} [{_clock(r['start'])}-{_clock(r['end'])}]"
        extra = r.get("label")
        if extra:
            label = f"{label} ({extra})"
        out.append(f"#EXTINF:{int(round(r['file_duration']))},{label}")
        if r.get("windowed"):
            out.append(f"# matched {_clock(r['start'])}-{_clock(r['end'])} of {_clock(r['file_duration'])}; "
                       "players other than VLC start at the beginning")
            out.append(f"#EXTVLCOPT:start-time={r['start']:.3f}")
            out.append(f"#EXTVLCOPT:stop-time={r['end']:.3f}")
        out.append(r["path"])
    return "\n".join(out) + "\n"


def to_csv(rows: list[dict], columns: list[str], categories: list[str] | None = None) -> str:
    """CSV with a header; `columns` from each row, then one column per category (its side:
    both / neither / query / result) when `categories` is given."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cats = list(categories or [])
    w.writerow(columns + cats)
    for r in rows:
        values = []
        for c in columns:
            v = r.get(c, "")
            values.append("" if v is None else (str(v).lower() if isinstance(v, bool) else v))
        values += [r["categories"][c]["side"] for c in cats]
        w.writerow(values)
    return buf.getvalue()


QUERY_COLUMNS = ["rank", "path", "start", "end", "file_duration", "level", "score", "acoustic", "duplicate", "is_query"]


def query_export(doc: dict, fmt: str) -> str:
    rows = doc["results"]
    if fmt == "csv":
        return to_csv(rows, QUERY_COLUMNS, doc["categories"])
    if fmt == "m3u":
        q = doc["query"].get("name")
        return to_m3u(rows, title=f"soundsearch: like {q}" if q else "soundsearch results")
    if fmt == "paths":
        return to_paths(rows)
    raise ValueError(fmt)
