"""Candidate prefilter for large stores: an approximate nearest-neighbour index (usearch HNSW)
over one per-item vector of the search cache, whose best matches are the only items the exact
pair scoring then scores.

Which vector: the one that predicts the ranking mode's exact top 10 (measured on a clustered
synthetic store, 10k items, 60 queries; recall of the exact top 10 among the N best by brute
force over the vector):

    mode (model)                    acoustic vector     pooled embedding    N
    blend w=0.75 (shipped default)  1.00                0.85 (w=0.5)        1000
    acoustic                        1.00                0.76                1000
    presence (logmel-scenes-v1)     0.29                0.61                1000
    presence (logmel-scenes-v1)     0.37                0.91                2000

So blend and acoustic searches take their candidates from the acoustic vector (the blend's
acoustic term carries most of its weight, and near-duplicates of the query are by definition
its closest acoustic vectors). The presence order is predicted poorly by either vector: such
searches scan every item unless `--candidates` asks for the prefilter, which then takes
candidates from the pooled embedding (closeness, the presence order's own tie-break) plus the
acoustic vector's best DUPLICATE_CANDIDATES (the near-duplicates).

One index file per (cache file, vector), `prefilter-<cache stem>-<vector>-v<N>.usearch` beside
the cache, so it goes stale exactly when the cache does (the store's state, the model file and
content, the dtype). It is rebuilt rather than extended when the store grows: every acoustic
vector moves with the store's standardisation anyway, and building it costs a fraction of the
cache build it follows (bench/query.py --prefilter prints both). Written to a temporary file
and renamed into place; a file usearch cannot open, or of another size or width, is rebuilt.
Opened as a memory-mapped view: a cold query reads only the pages its search visits.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundsearch import paths
from soundsearch.constants import PREFILTER_CANDIDATES, PREFILTER_MIN_ITEMS
from soundsearch.errors import SearchError, StoreError

if TYPE_CHECKING:
    from soundsearch.search.database import DatabaseSide

INDEX_VERSION = 1
INDEX_PREFIX = "prefilter-"
VECTORS = ("acoustic", "pooled")
# HNSW parameters. expansion_add 32 instead of usearch's 128 built a 100k-item clustered index
# 12x faster (8.6 s vs 105 s on 2 cores) for 0.98 recall of the top 10 within the best 1000;
# f16 halves the file with no measurable loss on unit vectors.
CONNECTIVITY = 16
EXPANSION_ADD = 32
# Acoustic candidates added to a presence search's pooled ones: the near-duplicates of the
# query (ranking.order_items) and the fingerprint's candidates (search.fingerprint.CANDIDATES).
DUPLICATE_CANDIDATES = 64
_BUILD_CHUNK = 8192

__all__ = [
    "DUPLICATE_CANDIDATES",
    "PREFILTER_CANDIDATES",
    "PREFILTER_MIN_ITEMS",
    "VECTORS",
    "Prefilter",
    "index_path",
]


def index_path(cache_path: Path, vector: str) -> Path:
    """The index file of a cache file's `vector` part."""
    stem = cache_path.name[len("search-") : -len(".npy")]
    return cache_path.with_name(f"{INDEX_PREFIX}{stem}-{vector}-v{INDEX_VERSION}.usearch")


class Prefilter:
    """The candidate indexes of one engine's database side, loaded or built on first use."""

    def __init__(self, side: "DatabaseSide"):
        self.side = side
        self._indexes: dict[str, object] = {}
        self.built: list[str] = []  # vectors whose index the last use had to build

    def vectors(self, vector: str, start: int, stop: int) -> np.ndarray:
        """(stop - start, width) float32 rows of the cache's `vector` part."""
        return self.side.vector_part(vector, start, stop)

    def index(self, vector: str):
        """The usearch index of `vector` for the current cache: loaded, or built (and saved)."""
        if vector not in VECTORS:
            raise SearchError(f"no prefilter over {vector!r}: choose one of {', '.join(VECTORS)}")
        side = self.side
        side.prepare()
        if vector in self._indexes:
            return self._indexes[vector]
        n = side.n_items
        width = self.vectors(vector, 0, 1).shape[1]
        path = index_path(side.cache_path(), vector) if side._cache_path is not None else None
        index = _load(path, n, width) if path is not None else None
        if index is None:
            index = self._build(vector, n, width, path)
            self.built.append(vector)
        self._indexes[vector] = index
        return index

    def _build(self, vector: str, n: int, width: int, path: Path | None):
        from usearch.index import Index

        index = Index(ndim=width, metric="ip", dtype="f16", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)
        for start in range(0, n, _BUILD_CHUNK):
            stop = min(n, start + _BUILD_CHUNK)
            index.add(np.arange(start, stop, dtype=np.uint64), self.vectors(vector, start, stop), threads=self.side.workers)
        if path is not None and self.side.persist:
            _save(index, path)
        return index

    def candidates(self, vector: str, query: np.ndarray, count: int) -> np.ndarray:
        """Store rows of the `count` best matches of a (width,) query vector, ascending."""
        index = self.index(vector)
        count = max(1, min(int(count), len(index)))
        # The beam must hold every candidate asked for, or HNSW returns fewer, worse ones.
        index.expansion_search = max(count, 64)
        found = index.search(np.asarray(query, dtype=np.float32).reshape(-1), count)
        return np.unique(np.asarray(found.keys, dtype=np.int64))


def _load(path: Path, n: int, width: int):
    """The index at `path` memory-mapped, or None when missing, unreadable or of another shape."""
    if not path.is_file():
        return None
    from usearch.index import Index

    try:
        index = Index.restore(str(path), view=True)
    except (OSError, ValueError, RuntimeError):
        return None  # damaged: rebuilt over it
    if index is None or len(index) != n or index.ndim != width:
        return None
    return index


def _save(index, path: Path) -> None:
    """Write the index atomically beside the cache; drop indexes of caches that are gone. A
    folder that cannot be written to keeps the index in memory (the cache does the same)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        index.save(tmp)
        paths.chmod_as_created(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"no room for the prefilter index in {path.parent}: free some disk space") from None
        return
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    remove_stale_indexes(path.parent)


def remove_stale_indexes(cache_dir: Path) -> None:
    """Drop index files whose cache file is gone (an older store state or model) or of
    another index version."""
    for other in cache_dir.glob(f"{INDEX_PREFIX}*.usearch"):
        stem, _, rest = other.name[len(INDEX_PREFIX) :].rpartition("-")
        stem = stem.rpartition("-")[0]  # drop the vector name
        if rest != f"v{INDEX_VERSION}.usearch" or not (cache_dir / f"search-{stem}.npy").is_file():
            try:
                other.unlink()
            except OSError:
                pass  # another process may hold or have removed it; harmless
