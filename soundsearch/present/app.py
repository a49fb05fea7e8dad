"""`soundsearch serve`: the results page as a local web app (Starlette; extra [serve]).

The store, the model and the search cache are loaded once; every search, file read and store
access runs on one worker thread (service.py). Pages share present.html's markup with
`query --html`; every page has a JSON twin (`format=json`), results also export as CSV, M3U and
path lists. Requests are read by requests.py.

Safety: binds to 127.0.0.1 by default; uploads are bounded (Content-Length checked before the
body is read, the stored file again after); audio is served only for files inside the
store's indexed roots, by resolved real path (anything else: 403).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from soundsearch.errors import SoundsearchError
from soundsearch.present.explain import filter_notes
from soundsearch.present.export import query_export
from soundsearch.present.html import AppContext, render_page
from soundsearch.present.requests import BadRequest, Params, float_param, parse_params
from soundsearch.present.service import Service

# What browsers play natively; other formats are decoded to WAV on the way out.
BROWSER_AUDIO = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".webm"}
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "m3u": "audio/x-mpegurl; charset=utf-8", "paths": "text/plain; charset=utf-8"}


def create_app(store_dir: Path, model: str | None = None, max_upload_mb: int = 200, load: bool = True) -> Starlette:
    svc = Service(store_dir, model, max_upload_mb)
    pages = _Pages(svc)

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
            Route("/", pages.home),
            Route("/search", pages.search, methods=["GET", "POST"]),
            Route("/audio", pages.audio),
            Route("/thumb", pages.thumb),
            Route("/upload/{token}", pages.upload_audio),
        ],
        lifespan=lifespan,
    )
    app.state.service = svc
    return app


def audio_url(r: dict) -> str:
    q = [("path", r["path"])]
    if r.get("windowed"):
        q += [("start", f"{r['start']:g}"), ("end", f"{r['end']:g}")]
    return "audio?" + urlencode(q)


def thumb_tag(r: dict) -> str:
    from html import escape

    q = urlencode([("path", r["path"]), ("start", f"{r['start']:g}"), ("end", f"{r['end']:g}")])
    return f'<img class="wave" alt="waveform" loading="lazy" src="{escape("thumb?" + q)}">'


class _Pages:
    """The routes of the app, over one Service."""

    def __init__(self, svc: Service):
        self.svc = svc

    def wants(self, request: Request) -> str:
        fmt = request.query_params.get("format", "html")
        if fmt not in ("html", "json", *EXPORT_TYPES):
            raise BadRequest(f"format must be html, json, csv, m3u or paths, not {fmt!r}")
        return fmt

    def error(self, request: Request, exc: Exception, status: int) -> Response:
        if request.query_params.get("format") == "json" or "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": str(exc)}, status_code=status)
        # The form keeps the query and the times as typed, so a bad time can be corrected.
        values = request.query_params
        ctx = self.context(Params(), {}, None)
        ctx.hidden = {k: values[k] for k in ("row", "upload") if values.get(k)}
        ctx.form.update(start=values.get("start", ""), end=values.get("end", ""))
        page = render_page(None, audio_src=lambda r: None, errors=[str(exc)], app=ctx,
                           categories=list(self.svc.model.taxonomy.categories) if self.svc.model else [])
        return HTMLResponse(page, status_code=status)

    def context(self, p: Params, source: dict, doc) -> AppContext:
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
            max_upload_mb=self.svc.max_upload_mb,
        )

    async def home(self, request: Request) -> Response:
        svc = self.svc
        try:
            fmt = self.wants(request)
        except BadRequest as exc:
            return self.error(request, exc, exc.status)
        cats = list(svc.model.taxonomy.categories)
        if fmt == "json":
            from soundsearch.search.ranking import MODES

            return JSONResponse({"store": str(svc.store.path), "items": svc.engine.n_items, "model": svc.model.name,
                                 "categories": cats, "modes": list(MODES), "roots": [str(r) for r in svc.roots],
                                 "max_upload_mb": svc.max_upload_mb})
        page = render_page(None, audio_src=lambda r: None, app=self.context(Params(), {}, None), categories=cats,
                           notes=[f"{svc.engine.n_items:,} items indexed from {len(svc.roots)} folder(s); "
                                  "drop a recording on this page to find what sounds like it."])
        return HTMLResponse(page)

    async def search(self, request: Request) -> Response:
        svc = self.svc
        try:
            if request.method == "POST":
                return await self.post_search(request)
            fmt = self.wants(request)
            values = request.query_params
            p = parse_params(values)
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
            return self.error(request, exc, exc.status)
        except SoundsearchError as exc:
            return self.error(request, exc, 400)
        if fmt == "json":
            return JSONResponse(doc)
        if fmt in EXPORT_TYPES:
            name = {"csv": "results.csv", "m3u": "results.m3u8", "paths": "results.txt"}[fmt]
            return PlainTextResponse(query_export(doc, fmt), media_type=EXPORT_TYPES[fmt],
                                     headers={"Content-Disposition": f'attachment; filename="{name}"'})
        return self.results_page(doc, source, p)

    def results_page(self, doc: dict, source: dict, p: Params) -> Response:
        query_src = None
        if "upload" in source:
            query_src = "upload/" + source["upload"]
            doc["query"]["windowed"] = bool(doc["query"].get("region"))  # the player starts at the region
        elif doc["query"]["path"]:
            q = doc["query"]
            windowed = bool(q["items"]) and self.svc.engine.store.items()[source["row"]].file_duration > q["items"][-1]["end"] - q["items"][0]["start"] + 1e-6
            q["windowed"] = windowed  # the query is one window of a long recording
            query_src = audio_url({"path": q["path"], "windowed": windowed,
                                   "start": q["items"][0]["start"], "end": q["items"][-1]["end"]})
        thumbs = {r["rank"]: thumb_tag(r) for r in doc["results"]}
        query_thumb = None
        if "row" in source and doc["query"]["items"]:
            q = doc["query"]
            query_thumb = thumb_tag({"path": q["path"], "start": q["items"][0]["start"], "end": q["items"][-1]["end"]})
        page = render_page(doc, audio_src=audio_url, thumbs=thumbs, query_src=query_src, query_thumb=query_thumb, notes=filter_notes(doc),
                           app=self.context(p, source, doc), title=f"soundsearch: like {doc['query']['name']}")
        return HTMLResponse(page)

    async def post_search(self, request: Request) -> Response:
        svc = self.svc
        length = request.headers.get("content-length")
        if length is None:
            raise BadRequest("uploads need a Content-Length", 411)
        if int(length) > svc.max_upload + 2**20:
            raise BadRequest(f"upload too large: at most {svc.max_upload_mb} MB", 413)
        form = await request.form(max_files=1, max_fields=100)
        try:
            p = parse_params(form)
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

    async def audio(self, request: Request) -> Response:
        try:
            real = self.svc.allowed(request.query_params.get("path", ""))
            start, end = float_param(request, "start"), float_param(request, "end")
        except BadRequest as exc:
            return PlainTextResponse(str(exc), status_code=exc.status)
        return await self.playable(real, start, end)

    async def playable(self, path: Path, start, end) -> Response:
        """The file itself where browsers play its format (Range requests let the player seek
        to the window), else the span decoded to 16-bit WAV."""
        if path.suffix.lower() in BROWSER_AUDIO:
            return FileResponse(path)
        try:
            data = await self.svc.run(self.svc.wav, str(path), start, end)
        except SoundsearchError as exc:
            return PlainTextResponse(str(exc), status_code=415)
        return Response(data, media_type="audio/wav")

    async def upload_audio(self, request: Request) -> Response:
        path = self.svc.uploads.get(request.path_params["token"])
        if path is None or not path.is_file():
            return PlainTextResponse("upload expired", status_code=404)
        return await self.playable(path, None, None)

    async def thumb(self, request: Request) -> Response:
        try:
            real = self.svc.allowed(request.query_params.get("path", ""))
            start, end = float_param(request, "start"), float_param(request, "end")
        except BadRequest as exc:
            return PlainTextResponse(str(exc), status_code=exc.status)
        svg = await self.svc.run(self.svc.thumb, str(real), start or 0.0, end if end is not None else 30.0)
        if svg is None:
            return PlainTextResponse("cannot read that file", status_code=415)
        svg = svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" style="color:#8a94aa" ', 1)
        svg = svg.replace("<polygon ", '<polygon fill="#8a94aa" ', 1).replace("<line ", '<line stroke="#8a94aa" stroke-width=".5" ', 1)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "max-age=3600"})
