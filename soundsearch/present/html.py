"""The results page: one self-contained HTML document (inline CSS, SVG and a little JS; no
network), shared by `query --html` (static, file:// audio) and `soundsearch serve` (the same
markup plus a search form and "more like this" links)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import Callable

from soundsearch.present.document import SIDE_TEXT, clock, moment_clock

CSS = """
:root { --fg:#1d2330; --muted:#6b7385; --line:#e3e6ec; --bg:#f6f7f9; --card:#fff;
  --both:#1f8a4c; --both-bg:#e3f4ea; --q:#b25f00; --q-bg:#fdf0dc; --r:#2762c4; --r-bg:#e4edfb;
  --accent:#3b5bdb; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
  color:var(--fg); background:var(--bg); }
main { max-width: 1100px; margin: 0 auto; padding: 20px 20px 48px; }
h1 { font-size: 20px; margin: 0 0 2px; font-weight: 650; letter-spacing: -.01em; }
h1 small { font-weight: 400; color: var(--muted); font-size: 14px; }
h1 .region { font-weight: 500; font-size: 15px; color: var(--q); background: var(--q-bg); border-radius: 6px; padding: 1px 7px; vertical-align: 2px; }
.meta { color: var(--muted); font-size: 13px; margin: 0 0 14px; }
.meta b { color: var(--fg); font-weight: 600; }
.note { background: #fff8e1; border: 1px solid #f3df9b; border-radius: 6px; padding: 6px 10px;
  font-size: 13.5px; margin: 6px 0; }
.error { background: #fdecec; border-color: #f2b8b8; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px;
  display: grid; grid-template-columns: 34px minmax(0,1fr) 150px; gap: 4px 14px; margin: 10px 0; }
.card.query { border-color: #c9d3f5; background: #fbfcff; grid-template-columns: minmax(0,1fr) 150px; }
.rank { font-size: 20px; font-weight: 650; color: var(--muted); text-align: right; padding-top: 1px; }
.title { font-weight: 600; overflow-wrap: anywhere; }
.title .dir { color: var(--muted); font-weight: 400; }
.sub { color: var(--muted); font-size: 12.5px; overflow-wrap: anywhere; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; padding: 1px 7px; border-radius: 9px;
  background: #eceefe; color: var(--accent); margin-left: 6px; vertical-align: 1px; }
.player { display: flex; align-items: center; gap: 10px; margin: 6px 0 4px; flex-wrap: wrap; }
.player audio { height: 34px; width: 300px; max-width: 100%; }
.wave { flex: 1 1 200px; min-width: 120px; width: 200px; height: 40px; color: #8a94aa; }
svg.wave polygon { fill: currentColor; } svg.wave line { stroke: currentColor; stroke-width: .5; opacity: .5; }
.nowave { flex: 1 1 200px; height: 40px; border: 1px dashed var(--line); border-radius: 4px; }
.chips { display: flex; flex-wrap: wrap; gap: 5px; margin-top: 4px; }
.chip { font-size: 12px; padding: 2px 8px; border-radius: 11px; border: 1px solid transparent; white-space: nowrap; }
.chip.both { background: var(--both-bg); color: var(--both); border-color: #bfe3cd; font-weight: 600; }
.chip.neither { color: #9aa1b1; border-color: var(--line); }
.chip.query { background: var(--q-bg); color: var(--q); border-color: #f1d3a6; }
.chip.result { background: var(--r-bg); color: var(--r); border-color: #c4d5f4; }
.chip .g { margin-right: 3px; }
.scores { text-align: right; font-size: 12.5px; color: var(--muted); }
.level { font-size: 22px; font-weight: 650; color: var(--fg); line-height: 1.1; }
.level small { font-size: 12px; font-weight: 400; color: var(--muted); }
.more { display: inline-block; margin-top: 8px; padding: 5px 10px; border-radius: 6px; background: var(--accent);
  color: #fff; text-decoration: none; font-weight: 600; font-size: 12.5px; }
.more:hover { background: #2f4ac0; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 12px; font-size: 12.5px; color: var(--muted); margin: 8px 0 4px; align-items: center; }
form.search { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; margin: 0 0 14px; }
.drop { border: 2px dashed #c5cbd8; border-radius: 8px; padding: 12px; text-align: center; color: var(--muted); margin-bottom: 10px; }
.drop.over { border-color: var(--accent); background: #f0f3ff; }
.filters { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: end; font-size: 13px; }
.filters label { display: flex; flex-direction: column; gap: 3px; color: var(--muted); }
.filters select, .filters input[type=number], .filters input[type=text] { font: inherit; padding: 4px 6px; border: 1px solid #c9cfdb; border-radius: 6px; background: #fff; color: var(--fg); }
.cats { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; margin: 0 0 8px; font-size: 13px; color: var(--muted); }
.cats .what { width: 5.5em; }
.pick { font-size: 12px; padding: 2px 9px; border-radius: 11px; border: 1px solid #c9cfdb; color: var(--fg); cursor: pointer; user-select: none; background: #fff; }
.pick input { display: none; }
.pick:has(input:checked) { background: var(--accent); border-color: var(--accent); color: #fff; }
.cats.exc .pick:has(input:checked) { background: #c92a2a; border-color: #c92a2a; }
button { font: inherit; font-weight: 600; padding: 6px 14px; border-radius: 6px; border: 0; background: var(--accent); color: #fff; cursor: pointer; }
.links { font-size: 13px; margin: 2px 0 10px; } .links a { color: var(--accent); margin-right: 12px; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
@media (max-width: 640px) {
  main { padding: 12px 10px 32px; }
  .card { grid-template-columns: 26px minmax(0,1fr); }
  .card.query { grid-template-columns: minmax(0,1fr); }
  .scores { grid-column: 2; text-align: left; display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; }
  .card.query .scores { grid-column: 1; }
  .more { margin-top: 0; }
  .player audio { width: 100%; }
}
"""

# Start a windowed item's player at its window: the #t= media fragment does it where the
# browser honours fragments; this covers the rest and stops at the window's end.
JS = """
document.querySelectorAll('audio[data-start]').forEach(function (a) {
  var s = parseFloat(a.dataset.start), e = parseFloat(a.dataset.end);
  a.addEventListener('loadedmetadata', function () { if (a.currentTime < s) a.currentTime = s; });
  a.addEventListener('timeupdate', function () { if (e && a.currentTime > e + 0.25) { a.pause(); a.currentTime = s; } });
});
document.addEventListener('play', function (ev) {
  document.querySelectorAll('audio').forEach(function (a) { if (a !== ev.target) a.pause(); });
}, true);
var drop = document.querySelector('.drop');
if (drop) {
  var input = drop.querySelector('input[type=file]');
  ['dragenter', 'dragover'].forEach(function (n) { document.addEventListener(n, function (ev) { ev.preventDefault(); drop.classList.add('over'); }); });
  ['dragleave', 'drop'].forEach(function (n) { document.addEventListener(n, function () { drop.classList.remove('over'); }); });
  document.addEventListener('drop', function (ev) {
    ev.preventDefault();
    if (ev.dataTransfer.files.length) { input.files = ev.dataTransfer.files; input.form.submit(); }
  });
  input.addEventListener('change', function () { if (input.files.length) input.form.submit(); });
}
"""

GLYPH = {"both": "●", "neither": "·", "query": "◐", "result": "◑"}


@dataclass
class AppContext:
    """What the served page adds to the static one."""

    form: dict = field(default_factory=dict)  # current k, require, exclude, min_level, mode, include_self, start, end
    hidden: dict = field(default_factory=dict)  # row / upload of the current query, kept by the form
    modes: list[str] = field(default_factory=list)
    more_like: Callable[[dict], str] | None = None  # result -> URL of its "more like this"
    links: dict = field(default_factory=dict)  # label -> URL (JSON twin, CSV, M3U, paths)
    max_upload_mb: int = 0


def _length(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


def _title(display: str) -> str:
    head, sep, name = display.rpartition("/")
    if not sep:
        return f"{escape(name)}"
    return f'<span class="dir">{escape(head)}/</span>{escape(name)}'


def _chips(sides: dict[str, str]) -> str:
    out = []
    for cat, side in sides.items():
        out.append(
            f'<span class="chip {side}" title="{escape(cat)}: {SIDE_TEXT[side]}">'
            f'<span class="g">{GLYPH[side]}</span>{escape(cat)}</span>'
        )
    return f'<div class="chips">{"".join(out)}</div>'


def _player(src: str | None, start: float, end: float, windowed: bool, thumb: str | None) -> str:
    wave = thumb or '<div class="nowave" title="no waveform: the file could not be read"></div>'
    if src is None:
        return f'<div class="player">{wave}</div>'
    if windowed:
        frag = f"#t={start:g},{end:g}"
        attrs = f' data-start="{start:g}" data-end="{end:g}"'
    else:
        frag, attrs = "", ""
    return (
        f'<div class="player"><audio controls preload="metadata" src="{escape(src + frag)}"{attrs}></audio>'
        f"{wave}</div>"
    )


def _legend() -> str:
    parts = "".join(
        f'<span><span class="chip {side}"><span class="g">{GLYPH[side]}</span>{text}</span></span>'
        for side, text in SIDE_TEXT.items()
    )
    return f'<div class="legend">Categories, as the model hears them: {parts}</div>'


def _form(doc: dict | None, categories: list[str], ctx: AppContext) -> str:
    f = ctx.form
    req, exc = set(f.get("require") or []), set(f.get("exclude") or [])

    def picks(name: str, chosen: set[str]) -> str:
        return "".join(
            f'<label class="pick"><input type="checkbox" name="{name}" value="{escape(c)}"'
            f'{" checked" if c in chosen else ""}>{escape(c)}</label>'
            for c in categories
        )

    modes = '<option value="">model default</option>' + "".join(
        f'<option{" selected" if f.get("mode") == m else ""}>{m}</option>' for m in ctx.modes
    )
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(str(v))}">' for k, v in ctx.hidden.items())
    level = "" if f.get("min_level") is None else str(f["min_level"])
    return f"""
<form class="search" method="post" action="search" enctype="multipart/form-data">
  <div class="drop"><label>Drop a recording here, or <input type="file" name="file" accept="audio/*,.m4a,.aif,.aiff,.flac,.ogg,.opus,.wav,.mp3"></label>
  <div class="sub">searches by example; up to {ctx.max_upload_mb} MB</div></div>
  {hidden}
  <div class="cats req"><span class="what">require</span>{picks("require", req)}</div>
  <div class="cats exc"><span class="what">exclude</span>{picks("exclude", exc)}</div>
  <div class="filters">
    <label>results <input type="number" name="k" min="1" max="500" value="{int(f.get('k', 10))}" style="width:5em"></label>
    <label>min level <input type="number" name="min_level" min="0" max="{len(categories)}" value="{level}" style="width:5em"></label>
    <label>rank by <select name="mode">{modes}</select></label>
    <label title="search with the query from this time on (m:ss or seconds)">from <input type="text" name="start" value="{escape(str(f.get('start') or ''))}" placeholder="0:00" inputmode="decimal" style="width:5.5em"></label>
    <label title="search with the query up to this time (m:ss or seconds)">to <input type="text" name="end" value="{escape(str(f.get('end') or ''))}" placeholder="end" inputmode="decimal" style="width:5.5em"></label>
    <label style="flex-direction:row;align-items:center;gap:6px"><input type="checkbox" name="include_self" value="1"{" checked" if f.get("include_self") else ""}> show the query's own items</label>
    <button type="submit">{"Search again" if doc else "Search"}</button>
  </div>
</form>"""


def _heading(doc: dict | None) -> list[str]:
    """The page's title line and, for a results document, the line of what was searched how."""
    if not doc:
        return ['<h1>soundsearch <small>search your sounds by example</small></h1>']
    q = doc["query"]
    region = q.get("region")
    where = (f' <span class="region">{moment_clock(region["start"])}–{moment_clock(region["end"])}</span>'
             if region else "")
    heading = (
        f'<h1>Like <span title="{escape(q["path"] or "")}">{escape(q["name"] or "the query")}</span>{where}'
        f' <small>{len(doc["results"])} result{"s" if len(doc["results"]) != 1 else ""}</small></h1>'
    )
    f = doc["filters"]
    bits = [f'model <b>{escape(doc["model"]["name"])}</b>', f'ranked by <b>{escape(doc["mode"])}</b>'
            + (f' (w={doc["weight"]:.2f})' if doc.get("weight") is not None else ""),
            f'{doc["items_searched"]:,} items searched']
    if f.get("require"):
        bits.append("require " + ", ".join(escape(c) for c in f["require"]))
    if f.get("exclude"):
        bits.append("exclude " + ", ".join(escape(c) for c in f["exclude"]))
    if f.get("min_level") is not None:
        bits.append(f"level ≥ {f['min_level']}")
    if q.get("self_hidden"):
        bits.append(f"{q['self_hidden']} of the query's own item{'s' if q['self_hidden'] != 1 else ''} hidden")
    return [heading, f'<p class="meta">{" · ".join(bits)}</p>']


def _query_card(doc: dict, query_src: str | None, query_thumb: str | None) -> str:
    """The query's card: its path, length or region, player and what the model hears in it."""
    q = doc["query"]
    region = q.get("region")
    presence = q.get("presence") or {}
    heard = {c: ("both" if p >= 0.5 else "neither") for c, p in presence.items()}
    span = ""
    if q["items"]:
        total = max(i["end"] for i in q["items"])
        span = f'{_length(total)}' + (f' · {len(q["items"])} items' if len(q["items"]) > 1 else "")
        if region:
            span = (f'{moment_clock(region["start"])}–{moment_clock(region["end"])}'
                    + (f' · {len(q["items"])} items' if len(q["items"]) > 1 else ""))
    return (
        f'<section class="card query" aria-label="query"><div><div class="title">{escape(q["path"] or "")}'
        f'<span class="badge">query</span></div><div class="sub">{span}</div>'
        + _player(query_src, q["items"][0]["start"] if q["items"] else 0, q["items"][-1]["end"] if q["items"] else 0,
                  bool(q.get("windowed") or region), query_thumb)
        + (_chips(heard) if heard else "")
        + '</div><div class="scores">the model hears<br>in the query:<br><b>'
        + (escape(", ".join(c for c, s in heard.items() if s == "both")) or "none of its categories")
        + "</b></div></section>"
    )


def _result_item(
    r: dict,
    cats: list[str],
    audio_src: Callable[[dict], str | None],
    thumbs: dict[int, str | None],
    app: AppContext | None,
) -> str:
    """One result's list item: rank, title and badges, player, category chips and scores."""
    sides = {cat: r["categories"][cat]["side"] for cat in cats}
    when = f'{clock(r["start"])}–{clock(r["end"])} of {_length(r["file_duration"])}' if r["windowed"] else _length(r["file_duration"])
    start, end, windowed = r["start"], r["end"], r["windowed"]
    badges = ""
    if r.get("contains") is not None:
        # The query's own sound was found inside this recording: show and play that place.
        start, end, windowed = r["moment"]["start"], r["moment"]["end"], True
        when = f'{moment_clock(start)}–{moment_clock(end)} of {_length(r["file_duration"])}'
        badges += '<span class="badge" title="the query\'s own sound was found here, among other sound">holds the query</span>'
    if r.get("is_query"):
        badges += '<span class="badge">the query</span>'
    elif r.get("duplicate"):
        badges += '<span class="badge" title="acoustically near-identical to the query">copy</span>'
    more = ""
    if app is not None and app.more_like is not None:
        more = f'<a class="more" href="{escape(app.more_like(r))}">More like this</a>'
    return (
        f'<li class="card result" data-rank="{r["rank"]}" data-path="{escape(r["path"])}">'
        f'<div class="rank">{r["rank"]}</div><div>'
        f'<div class="title" title="{escape(r["path"])}">{_title(r["display"])}{badges}</div>'
        f'<div class="sub">{when} · {escape(r["path"])}</div>'
        f'{_player(audio_src(r), start, end, windowed, thumbs.get(r["rank"]))}'
        f'{_chips(sides)}</div>'
        f'<div class="scores"><div class="level">{r["level"]}<small>/{len(cats)} agree</small></div>'
        f'<div>score {r["score"]:.2f} · sound {r["acoustic"]:.2f}</div>{more}</div></li>'
    )


def _data_script(doc: dict | None) -> str:
    """The page's data, as --json prints it; "<" escaped so no path can close the script."""
    if doc is None:
        return ""
    return ('<script type="application/json" id="results-data">'
            + json.dumps(doc, allow_nan=False).replace("<", "\\u003c") + "</script>")


def _html_document(title: str, body: list[str], data: str) -> str:
    """The whole page around `body`: head with styles, then the data and the script."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty inline icon: browsers otherwise ask every page's server for /favicon.ico.
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head><body><main>'
        + "\n".join(body)
        + f"</main>{data}<script>{JS}</script></body></html>"
    )


def render_page(
    doc: dict | None,
    *,
    audio_src: Callable[[dict], str | None],
    thumbs: dict[int, str | None] | None = None,
    query_thumb: str | None = None,
    query_src: str | None = None,
    notes: list[str] | None = None,
    errors: list[str] | None = None,
    app: AppContext | None = None,
    categories: list[str] | None = None,
    title: str = "soundsearch",
) -> str:
    """The page for a results document (present.document), or the empty search page (doc None)."""
    thumbs = thumbs or {}
    cats = list(doc["categories"]) if doc else list(categories or [])
    body = _heading(doc)
    for e in errors or []:
        body.append(f'<div class="note error">{escape(e)}</div>')
    if app is not None:
        body.append(_form(doc, cats, app))
        if app.links:
            body.append('<div class="links">' + "".join(
                f'<a href="{escape(u)}">{escape(label)}</a>' for label, u in app.links.items()) + "</div>")
    for n in notes or []:
        body.append(f'<div class="note">{escape(n)}</div>')
    if doc:
        body.append(_query_card(doc, query_src, query_thumb))
        body.append(_legend())
        if not doc["results"]:
            body.append('<div class="note">No results: no stored item passes the filters.</div>')
        body.append('<ol class="results" style="list-style:none;padding:0;margin:0">')
        body.extend(_result_item(r, cats, audio_src, thumbs, app) for r in doc["results"])
        body.append("</ol>")
    body.append(
        '<footer>Level: categories on which the query and the result agree (both have the sound, or '
        'neither). Score: the expected number of agreeing categories. Sound: acoustic similarity (cosine). '
        "Made by soundsearch.</footer>"
    )
    return _html_document(title, body, _data_script(doc))


def file_url(path: str) -> str:
    from pathlib import Path

    return Path(path).as_uri()


def static_page(doc: dict, notes: list[str] | None = None) -> str:
    """`query --html`: the page with file:// players (the files stay where they are) and the
    waveforms inline, so it opens offline and can be mailed with nothing else."""
    from soundsearch.present.thumbs import thumbnail

    thumbs = {r["rank"]: thumbnail(r["path"], r["start"], r["end"]) for r in doc["results"]}
    q = doc["query"]
    query_src = query_thumb = None
    if q.get("path"):
        query_src = file_url(q["path"])
        end = max((i["end"] for i in q["items"]), default=30.0)
        start = q["region"]["start"] if q.get("region") else 0.0  # a region: its waveform, its player
        query_thumb = thumbnail(q["path"], start, end)
    return render_page(
        doc,
        audio_src=lambda r: file_url(r["path"]),
        thumbs=thumbs,
        query_src=query_src,
        query_thumb=query_thumb,
        notes=notes,
        title=f"soundsearch: like {q.get('name') or 'the query'}",
    )
