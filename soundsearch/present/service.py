"""The serving side of `soundsearch serve`: the store, model and engine loaded once, and
everything that touches them run on one worker thread (the store's SQLite connection belongs to
the thread that opened it, and the engine parallelises each search itself)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from soundsearch.present.document import results_document
from soundsearch.present.requests import BadRequest, Params

KEEP_UPLOADS = 32  # uploads kept for "search again" / reloads; older ones are deleted


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
