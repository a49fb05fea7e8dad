"""`soundsearch serve`: the results page as a local web app (Starlette; extra [serve]).

The store, the model and the search cache are loaded once; every search, file read and store
access runs on one worker thread (the store's SQLite connection belongs to the thread that
opened it, and the engine parallelises each search itself). Pages share present.html's
markup with `query --html`; every page has a JSON twin (`format=json`), results also export as
CSV, M3U and path lists.

Safety: binds to 127.0.0.1 by default; uploads are bounded (Content-Length checked before the
body is read, the stored file again after); audio is served only for files inside the
store's indexed roots, by resolved real path (anything else: 403).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import tempfile
from contextlib import asynccontextmanager
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from soundsearch.errors import SoundsearchError
from soundsearch.present.document import results_document
from soundsearch.present.explain import filter_notes
from soundsearch.present.export import query_export
from soundsearch.present.html import AppContext, render_page

# What browsers play natively; other formats are decoded to WAV on the way out.
BROWSER_AUDIO = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".webm"}
KEEP_UPLOADS = 32  # uploads kept for "search again" / reloads; older ones are deleted
MAX_K = 500
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "m3u": "audio/x-mpegurl; charset=utf-8", "paths": "text/plain; charset=utf-8"}


@dataclass
class Params:
    k: int = 10
    require: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_level: int | None = None
    mode: str | None = None
    include_self: bool = False
    # The query region (seconds) and the times as typed (m:ss or seconds), kept for the URL.
    start: float | None = None
    end: float | None = None
    start_text: str = ""
    end_text: str = ""

    @property
    def region(self) -> bool:
        return self.start is not None or self.end is not None

    def query_string(self, region: bool = True) -> list[tuple[str, str]]:
        """The filters as URL parameters; region=False leaves the query region out (a
        "more like this" link starts a new query)."""
        q = [("k", str(self.k))]
        if region and self.start_text:
            q.append(("start", self.start_text))
        if region and self.end_text:
            q.append(("end", self.end_text))
        q += [("require", c) for c in self.require] + [("exclude", c) for c in self.exclude]
        if self.min_level is not None:
            q.append(("min_level", str(self.min_level)))
        if self.mode:
            q.append(("mode", self.mode))
        if self.include_self:
            q.append(("include_self", "1"))
        return q


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _params(values) -> Params:
    def integer(name: str, default, lo: int, hi: int):
        raw = (values.get(name) or "").strip()
        if not raw:
            return default
        try:
            v = int(raw)
        except ValueError:
            raise BadRequest(f"{name} must be a whole number, not {raw!r}") from None
        if not lo <= v <= hi:
            raise BadRequest(f"{name} must be between {lo} and {hi}")
        return v

    def time(name: str, label: str) -> tuple[float | None, str]:
        from soundsearch.audio.items import parse_time

        raw = (values.get(name) or "").strip()
        if not raw:
            return None, ""
        try:
            return parse_time(raw, label), raw
        except SoundsearchError as exc:
            raise BadRequest(str(exc)) from None

    start, start_text = time("start", "from")
    end, end_text = time("end", "to")
    if start is not None and end is not None and not end > start:
        raise BadRequest(f"the query region must end after it starts: from {start_text} to {end_text}")
    mode = (values.get("mode") or "").strip() or None
    return Params(
        start=start, end=end, start_text=start_text, end_text=end_text,
        k=integer("k", 10, 1, MAX_K),
        require=tuple(v for v in values.getlist("require") if v),
        exclude=tuple(v for v in values.getlist("exclude") if v),
        min_level=integer("min_level", None, 0, 1000),
        mode=mode,
        include_self=(values.get("include_self") or "") in ("1", "on", "true"),
    )


class Service:
    """The loaded store, model and engine; everything runs on its single worker thread."""

    def __init__(self, store_dir: Path, model: str | None, max_upload_mb: int):
        self.store_dir = store_dir
        self.model_name = model
        self.max_upload = max_upload_mb * 2**20
        self.max_upload_mb = max_upload_mb
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soundsearch")
        self.uploads_dir = Path(tempfile.mkdtemp(prefix="soundsearch-uploads-"))
        self.uploads: OrderedDict[str, Path] = OrderedDict()
        self.thumbs: OrderedDict[tuple, str | None] = OrderedDict()
        self.store = self.engine = self.model = None
        self.roots: list[Path] = []

    def load(self) -> None:
        """Open the store, load the model, prepare the search cache (on the worker thread)."""
        from soundsearch.model.checkpoint import load_model
        from soundsearch.model.registry import resolve_model
        from soundsearch.search.engine import SearchEngine
        from soundsearch.store import Store

        self.store = Store.open(self.store_dir)
        self.model = load_model(resolve_model(self.model_name))
        self.engine = SearchEngine(self.store, self.model).prepare()
        self.roots = self.store.roots()
        self.real_roots = [Path(os.path.realpath(r)) for r in self.roots]

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        if self.store is not None:
            # On the worker thread: the SQLite connection belongs to the thread that opened it.
            self.pool.submit(self.store.close).result()
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.uploads_dir, ignore_errors=True)

    # ---- work done on the worker thread

    def search(self, source: dict, p: Params):
        from soundsearch.search.engine import StoredQuery

        if "row" in source:
            query = StoredQuery((source["row"],))
            if p.region:
                # A region of the row's recording: its times are the recording's, not the item's.
                items = self.store.items()
                if not 0 <= source["row"] < len(items):
                    raise BadRequest(f"row must lie in 0..{len(items) - 1}")
                query = items[source["row"]].path
        else:
            query = source["path"]
        results = self.engine.search(
            query, k=p.k, require=p.require, exclude=p.exclude, min_level=p.min_level, mode=p.mode,
            include_self=p.include_self, start=p.start, end=p.end,
        )
        doc = results_document(results, self.store, self.model, self.roots)
        if "upload" in source:
            doc["query"]["name"] = source.get("name") or doc["query"]["name"]
        return doc

    def thumb(self, path: str, start: float, end: float) -> str | None:
        from soundsearch.present.thumbs import thumbnail

        key = (path, start, end)
        if key not in self.thumbs:
            self.thumbs[key] = thumbnail(path, start, end)
            while len(self.thumbs) > 2000:
                self.thumbs.popitem(last=False)
        return self.thumbs[key]

    def wav(self, path: str, start: float | None, end: float | None) -> bytes:
        """A file (or its window) as 16-bit WAV, for formats browsers do not play."""
        import io

        import soundfile as sf

        from soundsearch.audio.decode import probe, read_seconds

        if start is None or end is None:
            start, end = 0.0, probe(path).duration
        end = min(end, start + 600.0)  # a player needs minutes, never a whole day-long session
        x, sr = read_seconds(path, start, end)
        buf = io.BytesIO()
        sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
        return buf.getvalue()

    # ---- checks

    def allowed(self, raw: str) -> Path:
        """The real path of a file inside an indexed root; BadRequest 403/404 otherwise."""
        if not raw or "\x00" in raw:
            raise BadRequest("no path given", 400)
        real = Path(os.path.realpath(raw))
        if not any(real == r or real.is_relative_to(r) for r in self.real_roots):
            raise BadRequest("that file is not in the store's indexed folders", 403)
        if not real.is_file():
            raise BadRequest("no such file", 404)
        return real

    def keep_upload(self, path: Path) -> str:
        token = secrets.token_urlsafe(12)
        self.uploads[token] = path
        while len(self.uploads) > KEEP_UPLOADS:
            _, old = self.uploads.popitem(last=False)
            old.unlink(missing_ok=True)
        return token


def create_app(store_dir: Path, model: str | None = None, max_upload_mb: int = 200, load: bool = True) -> Starlette:
    svc = Service(store_dir, model, max_upload_mb)

    def wants(request: Request) -> str:
        fmt = request.query_params.get("format", "html")
        if fmt not in ("html", "json", *EXPORT_TYPES):
            raise BadRequest(f"format must be html, json, csv, m3u or paths, not {fmt!r}")
        return fmt

    def error(request: Request, exc: Exception, status: int) -> Response:
        if request.query_params.get("format") == "json" or "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": str(exc)}, status_code=status)
        # The form keeps the query and the times as typed, so a bad time can be corrected.
        values = request.query_params
        ctx = _ctx(Params(), {}, None)
        ctx.hidden = {k: values[k] for k in ("row", "upload") if values.get(k)}
        ctx.form.update(start=values.get("start", ""), end=values.get("end", ""))
        page = render_page(None, audio_src=lambda r: None, errors=[str(exc)], app=ctx,
                           categories=list(svc.model.taxonomy.categories) if svc.model else [])
        return HTMLResponse(page, status_code=status)

    def _ctx(p: Params, source: dict, doc) -> AppContext:
        from soundsearch.search.ranking import MODES

        base = p.query_string()
        hidden = {k: v for k, v in source.items() if k in ("row", "upload")}
        links = {}
        if doc is not None:
            here = urlencode(list(hidden.items()) + base)
            links = {"JSON": f"search?{here}&format=json", "CSV": f"search?{here}&format=csv",
                     "M3U playlist": f"search?{here}&format=m3u", "paths": f"search?{here}&format=paths"}
        return AppContext(
            form={"k": p.k, "require": p.require, "exclude": p.exclude, "min_level": p.min_level, "mode": p.mode,
                  "include_self": p.include_self, "start": p.start_text, "end": p.end_text},
            hidden=hidden,
            modes=list(MODES),
            more_like=lambda r: "search?" + urlencode([("row", r["row"])] + p.query_string(region=False)),
            links=links,
            max_upload_mb=svc.max_upload_mb,
        )

    def audio_url(r: dict) -> str:
        q = [("path", r["path"])]
        if r.get("windowed"):
            q += [("start", f"{r['start']:g}"), ("end", f"{r['end']:g}")]
        return "audio?" + urlencode(q)

    def thumb_tag(r: dict) -> str:
        from html import escape

        q = urlencode([("path", r["path"]), ("start", f"{r['start']:g}"), ("end", f"{r['end']:g}")])
        return f'<img class="wave" alt="waveform" loading="lazy" src="{escape("thumb?" + q)}">'

    async def home(request: Request) -> Response:
        try:
            fmt = wants(request)
        except BadRequest as exc:
            return error(request, exc, exc.status)
        cats = list(svc.model.taxonomy.categories)
        if fmt == "json":
            from soundsearch.search.ranking import MODES

            return JSONResponse({"store": str(svc.store.path), "items": svc.engine.n_items, "model": svc.model.name,
                                 "categories": cats, "modes": list(MODES), "roots": [str(r) for r in svc.roots],
                                 "max_upload_mb": svc.max_upload_mb})
        page = render_page(None, audio_src=lambda r: None, app=_ctx(Params(), {}, None), categories=cats,
                           notes=[f"{svc.engine.n_items:,} items indexed from {len(svc.roots)} folder(s); "
                                  "drop a recording on this page to find what sounds like it."])
        return HTMLResponse(page)

    async def search(request: Request) -> Response:
        try:
            if request.method == "POST":
                return await _post_search(request)
            fmt = wants(request)
            values = request.query_params
            p = _params(values)
            source: dict = {}
            if values.get("row"):
                try:
                    source["row"] = int(values["row"])
                except ValueError:
                    raise BadRequest("row must be a whole number") from None
            elif values.get("upload"):
                token = values["upload"]
                if token not in svc.uploads:
                    raise BadRequest("that upload has expired: drop the file again", 404)
                source.update(upload=token, path=svc.uploads[token], name=values.get("name"))
            else:
                return RedirectResponse("./", status_code=303)
            doc = await svc.run(svc.search, source, p)
        except BadRequest as exc:
            return error(request, exc, exc.status)
        except SoundsearchError as exc:
            return error(request, exc, 400)
        if fmt == "json":
            return JSONResponse(doc)
        if fmt in EXPORT_TYPES:
            name = {"csv": "results.csv", "m3u": "results.m3u8", "paths": "results.txt"}[fmt]
            return PlainTextResponse(query_export(doc, fmt), media_type=EXPORT_TYPES[fmt],
                                     headers={"Content-Disposition": f'attachment; filename="{name}"'})
        query_src = None
        if "upload" in source:
            query_src = "upload/" + source["upload"]
            doc["query"]["windowed"] = bool(doc["query"].get("region"))  # the player starts at the region
        elif doc["query"]["path"]:
            q = doc["query"]
            windowed = bool(q["items"]) and svc.engine.store.items()[source["row"]].file_duration > q["items"][-1]["end"] - q["items"][0]["start"] + 1e-6
            q["windowed"] = windowed  # the query is one window of a long recording
            query_src = audio_url({"path": q["path"], "windowed": windowed,
                                   "start": q["items"][0]["start"], "end": q["items"][-1]["end"]})
        thumbs = {r["rank"]: thumb_tag(r) for r in doc["results"]}
        query_thumb = None
        if "row" in source and doc["query"]["items"]:
            q = doc["query"]
            query_thumb = thumb_tag({"path": q["path"], "start": q["items"][0]["start"], "end": q["items"][-1]["end"]})
        page = render_page(doc, audio_src=audio_url, thumbs=thumbs, query_src=query_src, query_thumb=query_thumb, notes=filter_notes(doc),
                           app=_ctx(p, source, doc), title=f"soundsearch: like {doc['query']['name']}")
        return HTMLResponse(page)

    async def _post_search(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None:
            raise BadRequest("uploads need a Content-Length", 411)
        if int(length) > svc.max_upload + 2**20:
            raise BadRequest(f"upload too large: at most {svc.max_upload_mb} MB", 413)
        form = await request.form(max_files=1, max_fields=100)
        try:
            p = _params(form)
            hidden: list[tuple[str, str]] = []
            upload = form.get("file")
            if upload is not None and not isinstance(upload, str) and upload.filename:
                if upload.size is not None and upload.size > svc.max_upload:
                    raise BadRequest(f"upload too large: at most {svc.max_upload_mb} MB", 413)
                ext = Path(upload.filename).suffix.lower()
                ext = ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ""
                fd, tmp = tempfile.mkstemp(suffix=ext, dir=svc.uploads_dir)
                with os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(upload.file, fh)
                token = svc.keep_upload(Path(tmp))
                hidden = [("upload", token), ("name", Path(upload.filename).name)]
            elif form.get("row"):
                hidden = [("row", str(form["row"]))]
            elif form.get("upload"):
                hidden = [("upload", str(form["upload"]))] + ([("name", str(form["name"]))] if form.get("name") else [])
            else:
                raise BadRequest("choose or drop a recording to search with")
        finally:
            await form.close()
        # Post/redirect/get: the results page can be reloaded, bookmarked and has a JSON twin.
        return RedirectResponse("search?" + urlencode(hidden + p.query_string()), status_code=303)

    async def audio(request: Request) -> Response:
        try:
            real = svc.allowed(request.query_params.get("path", ""))
            start, end = _floats(request, "start"), _floats(request, "end")
        except BadRequest as exc:
            return PlainTextResponse(str(exc), status_code=exc.status)
        return await playable(real, start, end)

    async def playable(path: Path, start, end) -> Response:
        """The file itself where browsers play its format (Range requests let the player seek
        to the window), else the span decoded to 16-bit WAV."""
        if path.suffix.lower() in BROWSER_AUDIO:
            return FileResponse(path)
        try:
            data = await svc.run(svc.wav, str(path), start, end)
        except SoundsearchError as exc:
            return PlainTextResponse(str(exc), status_code=415)
        return Response(data, media_type="audio/wav")

    async def upload_audio(request: Request) -> Response:
        path = svc.uploads.get(request.path_params["token"])
        if path is None or not path.is_file():
            return PlainTextResponse("upload expired", status_code=404)
        return await playable(path, None, None)

    async def thumb(request: Request) -> Response:
        try:
            real = svc.allowed(request.query_params.get("path", ""))
            start, end = _floats(request, "start"), _floats(request, "end")
        except BadRequest as exc:
            return PlainTextResponse(str(exc), status_code=exc.status)
        svg = await svc.run(svc.thumb, str(real), start or 0.0, end if end is not None else 30.0)
        if svg is None:
            return PlainTextResponse("cannot read that file", status_code=415)
        svg = svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" style="color:#8a94aa" ', 1)
        svg = svg.replace("<polygon ", '<polygon fill="#8a94aa" ', 1).replace("<line ", '<line stroke="#8a94aa" stroke-width=".5" ', 1)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "max-age=3600"})

    @asynccontextmanager
    async def lifespan(_app):
        if load:
            await svc.run(svc.load)
        try:
            yield
        finally:
            svc.close()

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/search", search, methods=["GET", "POST"]),
            Route("/audio", audio),
            Route("/thumb", thumb),
            Route("/upload/{token}", upload_audio),
        ],
        lifespan=lifespan,
    )
    app.state.service = svc
    return app


def _floats(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not 0 <= v < 1e7:
        raise BadRequest(f"{name} out of range")
    return v
