"""Candidate prefilter for large stores: a cheap predictor of the ranking mode's score over
every stored item, whose best items are the only ones the exact pair scoring then scores.

Blend and acoustic searches: the presence predictor. Each stored item's self-presence p_i (the
model's probability that it holds each category: the item paired with itself, as
SearchEngine.self_presence does for a query) is computed once, beside the cache, with its
acoustic vector, quantized to int8: a (N, C + D' + 4) matrix (quantize_rows). The pair's expected agreement
sum_c p_both + p_neither is predicted as sum_c p_q p_i + (1 - p_q)(1 - p_i), linear in p_i, so
the blend score (1 - w) expected / C + w acoustic (ranking.rank_score) of every item is one
scan of that matrix (the acoustic cosine to int8 precision); its best `count` items, the acoustically
closest (near-duplicates) among them, are the candidates. Recall of the exact top 10 on the
clustered synthetic store (bench/query.py --clustered --prefilter, random-weight model, blend
w=0.75, 50 queries, one run per size):

    items    predictor                 candidates      recall              ms (2 shared cores)
    20k      acoustic HNSW (before)    2000            0.948               28.7
    20k      presence predictor        250/500/1000    0.994/0.996/0.996   13.7/18.0/30.1
    100k     acoustic HNSW (before)    10000           0.942               110.6-120.4
    100k     presence predictor        500/1000/2000   0.992/0.998/1.000   36.7/41.0-42.0/54.1

(each line pair from one run; two 100k runs). On real features: the corpus's aisfx items (357,
an existing store) replicated to 20k as mixes of two (0.5-1) with noise (0.3-1 std), the
shipped default model (blend w=0.4), 30 queries of the same kind: the acoustic index with 2000
candidates 0.997, the presence predictor with 250 / 500 / 1000 0.990 / 1.000 / 1.000 (47 ms
against 23 / 30 / 35 ms). Tried and dropped: the acoustic part projected on its top 32-128
principal directions (to shrink the scan) recalls 0.13-0.60 at 1000 on the synthetic store,
whose acoustic vectors are far from low-rank.

The matrix costs one model pass per item once (2.5 s at 100k, 68 s at 1M on 2 cores) and,
in int8, ~400 bytes per item (378 MB at 1M; float32 was 1.5 GB, and its scan ~140 ms). At 1M
items the int8 scan takes ~56-60 ms of a ~100 ms prefiltered search (cProfile, page cache
warm), and 1,000 candidates recall 0.983-0.986 of the exact top 10 (constants.py).

The acoustic HNSW index (usearch) remains for presence searches and for comparison
(SearchEngine.prefilter_predictor = "acoustic"). Which vector, by brute force over it (10k
items, 60 queries, recall of the exact top 10 among the N best):

    mode (model)                    acoustic vector     pooled embedding    N
    blend w=0.75 (a stop-16 model)  1.00                0.85 (w=0.5)        1000
    acoustic                        1.00                0.76                1000
    presence (logmel-scenes-v1)     0.29                0.61                1000
    presence (logmel-scenes-v1)     0.37                0.91                2000

The presence order is predicted poorly by either vector (and the presence predictor is not
tried on it yet: its level term is not linear in p_i): such searches scan every item unless
`--candidates` asks for the prefilter, which then takes candidates from the pooled embedding
(closeness, the presence order's own tie-break) plus the acoustic vector's best
DUPLICATE_CANDIDATES (the near-duplicates).

One index file per (cache file, vector), `prefilter-<cache stem>-<vector>-v<N>.usearch` beside
the cache (the predictor's: `prefilter-<cache stem>-predictor-v<N>.npy`), so it goes stale
exactly when the cache does (the store's state, the model file and
content, the dtype). It is rebuilt rather than extended when the store grows: every acoustic
vector moves with the store's standardisation anyway, and building it costs a fraction of the
cache build it follows (bench/query.py --prefilter prints both). Written to a temporary file
and renamed into place; a file usearch cannot open, or of another size or width, is rebuilt.
Opened as a memory-mapped view: a cold query reads only the pages its search visits.
"""

from __future__ import annotations

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
PREDICTOR_VERSION = 2
# The predictor's self-presence in steps of 1/127, and each row's acoustic scale as the bytes
# of one float32 at the end of the row (quantize_rows).
PRESENCE_STEPS = 127.0
_SCALE_BYTES = 4
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
# Predictor rows per scan task: 25 MB of int8, big enough that numkong's per-call cost and
# the thread hand-off vanish, small enough for two workers to share the rows evenly.
_SCAN_CHUNK = 65536

__all__ = [
    "DUPLICATE_CANDIDATES",
    "PREFILTER_CANDIDATES",
    "PREFILTER_MIN_ITEMS",
    "VECTORS",
    "Prefilter",
    "index_path",
    "predictor_path",
]


def index_path(cache_path: Path, vector: str) -> Path:
    """The index file of a cache file's `vector` part."""
    stem = cache_path.name[len("search-") : -len(".npy")]
    return cache_path.with_name(f"{INDEX_PREFIX}{stem}-{vector}-v{INDEX_VERSION}.usearch")


def predictor_path(cache_path: Path) -> Path:
    """The presence predictor's file of a cache file: (N, C + D' + 4) int8 (Prefilter.predictor)."""
    stem = cache_path.name[len("search-") : -len(".npy")]
    return cache_path.with_name(f"{INDEX_PREFIX}{stem}-predictor-v{PREDICTOR_VERSION}.npy")


class Prefilter:
    """The candidate indexes of one engine's database side, loaded or built on first use."""

    def __init__(self, side: "DatabaseSide"):
        self.side = side
        self._indexes: dict[str, object] = {}
        self._predictor: np.ndarray | None = None
        self._scales: np.ndarray | None = None
        self.built: list[str] = []  # vectors whose index the last use had to build ("predictor" too)

    def index(self, vector: str):
        """The usearch index of `vector` for the current cache: loaded, or built (and saved)."""
        if vector not in VECTORS:
            raise SearchError(f"no prefilter over {vector!r}: choose one of {', '.join(VECTORS)}")
        side = self.side
        side.prepare()
        if vector in self._indexes:
            return self._indexes[vector]
        n = side.n_items
        width = self.side.vector_part(vector, 0, 1).shape[1]
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
            index.add(np.arange(start, stop, dtype=np.uint64), self.side.vector_part(vector, start, stop), threads=self.side.workers)
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

    def predictor(self) -> np.ndarray:
        """(N, C + D' + 4) int8 [self-presence | acoustic vector | acoustic scale] of every
        stored item (see `quantize_rows`): loaded (memory-mapped), or computed (and saved
        beside the cache)."""
        side = self.side
        side.prepare()
        if self._predictor is not None:
            return self._predictor
        n = side.n_items
        c = side.form.head.n_categories
        width = c + side.acoustic_width + _SCALE_BYTES
        path = predictor_path(side.cache_path()) if side._cache_path is not None else None
        arr = _load_matrix(path, n, width) if path is not None else None
        if arr is None:
            arr = self._build_predictor(n, c, width, path)
            self.built.append("predictor")
        self._predictor = arr
        self._scales = None
        return arr

    def _build_predictor(self, n: int, c: int, width: int, path: Path | None) -> np.ndarray:
        side = self.side
        out = np.empty((n, width), np.int8)

        def chunk(start: int) -> None:
            stop = min(n, start + _BUILD_CHUNK)
            out[start:stop] = quantize_rows(side.self_presence_rows(start, stop), side.vector_part("acoustic", start, stop))

        side.backend.run_chunks(chunk, range(0, n, _BUILD_CHUNK), side.workers)
        if path is not None and side.persist:
            _save_matrix(out, path)
        return out

    def acoustic_scales(self) -> np.ndarray:
        """(N,) float32 per-item scale of the predictor's int8 acoustic part (kept after the
        first use: reading it touches every row)."""
        m = self.predictor()
        if self._scales is None:
            self._scales = np.ascontiguousarray(m[:, -_SCALE_BYTES:]).view(np.float32).reshape(-1)
        return self._scales

    def predicted(self, presence: np.ndarray, acoustic: np.ndarray, weight: float, count: int,
                  duplicates: int = DUPLICATE_CANDIDATES, moments: np.ndarray | None = None) -> np.ndarray:
        """Store rows, ascending, of the `count` best items by the predicted blend score

            (1 - w) / C * sum_c [p_q p_i + (1 - p_q)(1 - p_i)] + w * cos(acoustic_q, acoustic_i)

        (p: self-presence; the pair model's expected agreement predicted from each side's own
        presence, linear in p_i), the `duplicates` acoustically closest among them (the
        near-duplicates the ranking puts first; at most a quarter of the count): for a query of
        several items, its `moments` (Q, D') acoustic vectors, those closest to any one of them
        (what ranks a result as a near-duplicate: ScoreMatrix.acoustic_best). One scan of the
        int8 predictor matrix, in chunks on the engine's threads: numkong's packed integer
        products (dots_packed: the query's vectors, quantized to int8 too, packed once, each
        item row read once for all of them; its cdist read the rows once per query vector, 2.2x
        slower with two vectors and linear in them: 180 ms for a long query at 1M items)."""
        import numkong

        from soundsearch.search.backends import map_threads

        m = self.predictor()
        n, c = m.shape[0], int(presence.shape[0])
        count = max(1, min(int(count), n))
        wp = (1.0 - weight) / c * (2.0 * np.asarray(presence, np.float64) - 1.0)
        wa = np.asarray(acoustic, np.float64).reshape(-1)
        d = wa.shape[0]
        each = np.zeros((0, d)) if moments is None else np.asarray(moments, np.float64).reshape(-1, d)
        vec = np.zeros((2 + each.shape[0], m.shape[1]), np.int8)
        sp = np.float32(_quantize_into(vec[0, :c], wp) / PRESENCE_STEPS)
        sa = np.float32(_quantize_into(vec[1, c : c + d], wa))
        sm = np.array([_quantize_into(vec[2 + j, c : c + d], v) for j, v in enumerate(each)], np.float32)
        packed = numkong.dots_pack(vec)
        scales = self.acoustic_scales()
        dup = min(int(duplicates), count // 4) if weight < 1.0 else 0
        per_moment = dup > 0 and each.shape[0] > 0
        cos = np.empty(n, np.float32)
        score = np.empty(n, np.float32)
        near = np.empty(n, np.float32) if per_moment else cos

        def part(start: int) -> None:
            stop = min(n, start + _SCAN_CHUNK)
            # (rows, 2 + Q) int32 sums; float32 holds them exactly up to 2^24 (rows of up to
            # 1,040 values: the default featurizers' 396), to 7 digits beyond
            dots = np.asarray(numkong.dots_packed(m[start:stop], packed)).astype(np.float32)
            np.multiply(dots[:, 1], scales[start:stop] * sa, out=cos[start:stop])
            np.multiply(dots[:, 0], sp, out=score[start:stop])
            score[start:stop] += np.float32(weight) * cos[start:stop]
            if per_moment:
                best = near[start:stop]
                np.multiply(dots[:, 2], sm[0], out=best)
                for j in range(1, sm.shape[0]):  # column by column: a reduction over the short axis is 5x slower
                    np.maximum(best, dots[:, 2 + j] * sm[j], out=best)
                best *= scales[start:stop]

        map_threads(part, range(0, n, _SCAN_CHUNK), self.side.workers)
        if dup > 0:
            score[_top(near, dup)] = np.inf  # the near-duplicates first, within the count
        return np.sort(_top(score, count))


def quantize_rows(presence: np.ndarray, acoustic: np.ndarray) -> np.ndarray:
    """Predictor rows of (M, C) self-presence and (M, D') unit acoustic vectors: int8
    [round(127 p) | round(a / s) | s as float32 bytes], s = max|a| / 127 per row.

    int8 quarters the matrix the scan reads (the scan is bound by memory bandwidth: 1M items of
    the float32 form are 1.5 GB, ~140 ms at this machine's ~11 GB/s) and integer dot products
    are the cheapest SIMD work there is. A per-row scale needs no statistics of the whole
    store, so rows quantize one chunk at a time; the presence part has a fixed range."""
    m, c = presence.shape
    out = np.empty((m, c + acoustic.shape[1] + _SCALE_BYTES), np.int8)
    out[:, :c] = np.rint(np.clip(presence, 0.0, 1.0) * PRESENCE_STEPS)
    scale = np.abs(acoustic).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    out[:, c:-_SCALE_BYTES] = np.clip(np.rint(acoustic / scale[:, None]), -127, 127)
    out[:, -_SCALE_BYTES:] = scale.view(np.int8).reshape(m, _SCALE_BYTES)
    return out


def _quantize_into(dest: np.ndarray, values: np.ndarray) -> float:
    """Write round(values / s) into the int8 `dest`, s = max|values| / 127; return s (0 for zeros)."""
    top = float(np.abs(values).max()) if values.size else 0.0
    if top == 0.0:
        dest[:] = 0
        return 0.0
    dest[:] = np.rint(values * (127.0 / top))
    return top / 127.0


# _top's sample: every _SAMPLE_STEP-th score, cut where about 2 * count scores of the whole
# array should lie above.
_SAMPLE_STEP = 64


def _top(score: np.ndarray, count: int) -> np.ndarray:
    """Rows of the `count` highest scores (unordered; NaN never among them while enough others
    are). argpartition of a million scores takes ~10 ms, twice per query; instead a cut is read
    off a 1/64 sample, the scores at or above it (about 2 * count) kept in one vectorized pass,
    and those partitioned: ~2 ms, the same rows (up to the order of equal scores). Where fewer
    than `count` pass the cut (a skewed sample), the whole array is partitioned."""
    n = score.shape[0]
    if count >= n:
        return np.arange(n, dtype=np.int64)
    sample = score[::_SAMPLE_STEP]
    above = max(8, -(-2 * count // _SAMPLE_STEP))  # sample values above the cut
    if n >= 4 * _SAMPLE_STEP * above:
        cut = np.partition(sample, sample.size - above)[sample.size - above]
        kept = np.flatnonzero(score >= cut)
        if kept.size >= count:
            sub = score[kept]
            return kept[np.argpartition(sub, sub.size - count)[sub.size - count :]].astype(np.int64)
    return np.argpartition(score, n - count)[n - count :].astype(np.int64)


def _load_matrix(path: Path, n: int, width: int) -> np.ndarray | None:
    """The predictor at `path` memory-mapped, or None when missing, unreadable or of another shape."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None  # damaged: rebuilt over it
    if arr.dtype != np.int8 or arr.shape != (n, width):
        return None
    return arr


def _save_matrix(arr: np.ndarray, path: Path) -> None:
    """Write the predictor atomically beside the cache (kept in memory where it cannot be)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array(fh, arr, allow_pickle=False)

    _publish(path, "prefilter predictor", write)


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
    _publish(path, "prefilter index", index.save)


def _publish(path: Path, what: str, write) -> None:
    """`write(tmp)` a file beside `path` and rename it onto `path` (paths.TempFile, as the
    search cache), then drop the files of caches that are gone. A folder that cannot be
    written to keeps it in memory only; a full disk is a StoreError naming `what`."""
    tmp = None
    try:
        tmp = paths.TempFile(path)
        write(tmp.name)
        paths.chmod_as_created(tmp.name)
        tmp.publish(path)
        tmp = None
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"no room for the {what} in {path.parent}: free some disk space") from None
        return
    finally:
        if tmp is not None:
            tmp.discard()
    remove_stale_indexes(path.parent)


def remove_stale_indexes(cache_dir: Path) -> None:
    """Drop index files whose cache file is gone (an older store state or model) or of
    another index version."""
    paths.remove_abandoned(cache_dir, f".{INDEX_PREFIX}*.tmp")  # writers killed before their rename
    current = (f"v{INDEX_VERSION}.usearch", f"v{PREDICTOR_VERSION}.npy")
    for other in [*cache_dir.glob(f"{INDEX_PREFIX}*.usearch"), *cache_dir.glob(f"{INDEX_PREFIX}*.npy")]:
        stem, _, rest = other.name[len(INDEX_PREFIX) :].rpartition("-")
        stem = stem.rpartition("-")[0]  # drop the vector name
        if rest not in current or not (cache_dir / f"search-{stem}.npy").is_file():
            try:
                other.unlink()
            except OSError:
                pass  # another process may hold or have removed it; harmless
