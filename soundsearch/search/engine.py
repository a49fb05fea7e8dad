"""The search engine: score a query against every stored item with the presence model, rank.

Speed by construction: everything that depends on a stored item alone is computed once per
(store, model) and cached beside the store (database.py, cache.py), so a query pays only for
the pair-specific part (kernel.py), per item and step, streamed over the items in chunks
(bounded memory, cache-friendly buffers reused). This is exact: the same arithmetic as the
model's forward pass up to float rounding, for every variant (siamese or not, single or
per-category, attention or mean pooling).

search() puts the pieces together: the query and the self-match (query.py), the scores,
the filters (filters.py), the ranking mode's order (ranking.py: presence, blend or acoustic;
near-duplicates of the query right after its own items), one result per moment or per file
(moments.py), and the results (results.py).

The arithmetic runs on a backend (backends.py): numpy, which needs no torch (the backend of a
model loaded as arrays, as `soundsearch query` loads it), or torch (a model loaded with its
network). Threads: chunks of items go to one Python thread per core, each running its
products single-threaded (torch; see soundsearch.search.kernel._run_chunks for why).
"""

from __future__ import annotations

import dataclasses

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from soundsearch.errors import SearchError, StoreError
from soundsearch.presence import BOTH, DIFFERS, NEITHER, STATES
from soundsearch.search.cache import CACHE_DTYPES, model_key
from soundsearch.search.database import DatabaseSide
from soundsearch.search.filters import apply_filters, check_filters
from soundsearch.search.moments import choose_rows
from soundsearch.search.query import query_features, scored_items
from soundsearch.search.results import Result, ScoreMatrix, SearchResults, StoredQuery, build_results, rank
from soundsearch.store.mapped import prefetch_rows

if TYPE_CHECKING:
    from soundsearch.model.arrays import ModelBase
    from soundsearch.search.prefilter import Prefilter
    from soundsearch.search.ranking import RankingMode
    from soundsearch.store import Store

# Item-steps scored per block: the block's products and elementwise passes run on this many
# rows at once. Measured in one process on a busy 2-core Xeon (engine vs the same run's matmul,
# 100k items, torch backend): 640 rows 0.29, 1280 0.31, 2560 0.34, 5120 0.34, 10240 0.30 of the
# matmul rate; past L2 (2 MiB) size hardly matters any more and per-call overhead does. The
# numpy backend: 640 and 2560 alike (0.27 at 20k items).
DEFAULT_BLOCK_ROWS = 2560
# The same for a bfloat16 scan (a compact cache's, a float32 cache's fast scan), whose products
# are 5x faster and so weigh per-call overhead (oneDNN's) more: 1280 rows 0.37, 5120 0.45,
# 10240 0.46 (before the fused first step; with it 2560 and 10240 alike).
COMPACT_BLOCK_ROWS = 10240
# Item-steps pooled at once: the pooling is many small operations, cheaper on long runs.
DEFAULT_CHUNK_ROWS = 10240


# --------------------------------------------------------------------------------------------
# Engine


class SearchEngine(DatabaseSide):
    """Scores queries against every item of a store with a presence model.

    The database side is computed on first use (or loaded from `cache_dir`, default
    `<store>/cache`); `prepare()` does it eagerly. `cache_dtype` (cache.CACHE_DTYPES) defaults
    to float32, or compact in stores of COMPACT_CACHE_MIN_ITEMS items or more
    (cache.default_cache_dtype). `backend` ("numpy" or "torch", backends.py)
    defaults to the model's own: torch for a model loaded with its network, numpy for one
    loaded as arrays.
    """

    def __init__(
        self,
        store: "Store",
        model: "ModelBase",
        cache_dir: Path | None = None,
        cache_dtype: str | None = None,
        block_rows: int | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        persist: bool = True,
        workers: int | None = None,
        backend: str | None = None,
    ):
        super().__init__(store, model, cache_dir, cache_dtype, persist, workers, backend)
        self.taxonomy = model.taxonomy
        # None: DEFAULT_BLOCK_ROWS, or COMPACT_BLOCK_ROWS for a bfloat16 scan.
        self.block_rows = None if block_rows is None else max(int(block_rows), model.config.steps)
        self.chunk_rows = max(int(chunk_rows), self.block_rows or model.config.steps)
        self._prefilter = None
        # How blend and acoustic searches pick their candidates (search.prefilter): "presence",
        # the predicted blend score over every item; "acoustic", the acoustic vector's HNSW
        # index (what bench/query.py compares it with).
        self.prefilter_predictor = "presence"
        self._prints = None  # search.prints.PrintCache, made on the first query that needs it
        self.last_rescored: int | None = None  # items the last search re-scored exactly (compact cache)
        # Whether search() may scan a float32 cache with bfloat16 products where the backend
        # does so faster (backends.TorchBackend.scan_dtype: native bfloat16 and numba's fused
        # first step), re-scoring its top from the float32 rows as a compact cache's scan is
        # (rerank.py); False: every score of every search from float32 products.
        self.fast_scan = True

    # ---- scoring

    def score_all(
        self,
        query_feats_raw: np.ndarray,
        probs: bool = False,
        aggregate: bool = False,
        rows: np.ndarray | None = None,
        recompute: bool = False,
        fast: bool = False,
    ) -> ScoreMatrix:
        """Score Q query items (Q, T, D) against every stored item (or the given `rows`).

        With `aggregate`, the Q items are one query (a long recording): probabilities are
        averaged over them and the result has one row.

        From a compact cache (cache.COMPACT_DTYPES) the presence scores (level, expected,
        probs) are approximate, closeness and acoustic exact; `recompute` scores from float32
        rows recomputed from the stored features instead (DatabaseSide.exact_rows): exact,
        and meant for a few rows (search() re-scores its candidates so, rerank.py); from a
        float32 cache it only insists on float32 products. `fast`: a float32 cache may be
        scanned with bfloat16 products where that is faster (scan_dtype), its presence scores
        then approximate as a compact cache's.
        """
        # Over 60 lines on purpose: score_chunk, the hot loop, shares the query side and the
        # output arrays set up here; split, it would take a dozen arguments per chunk.
        q = np.asarray(query_feats_raw, dtype=np.float32)
        if q.ndim == 2:
            q = q[None]
        steps, dim = self.model.config.steps, self.model.config.dim
        if q.ndim != 3 or q.shape[1:] != (steps, dim) or q.shape[0] == 0:
            raise SearchError(f"query features must be (Q, {steps}, {dim}), got {q.shape}")
        self.prepare()
        cache = self._cache
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
        n = self.n_items if rows is None else rows.shape[0]
        compact = self.compact and not recompute
        if self.compact and recompute:
            cache = self.exact_rows(np.arange(n) if rows is None else rows)
            rows = None  # cache now holds exactly the rows asked for, in order
        scan = self.scan_dtype(fast) if not recompute else "float32"
        qa, qb, qpooled = self._sides(q)
        qacoustic = self.acoustic_of(q, aggregate=aggregate)
        qpair = self.backend.pair(qa, qb)  # (Q, 2, T, G*K1)
        nq = q.shape[0]
        out_q = 1 if aggregate else nq
        c = self.head.n_categories
        level = np.zeros((out_q, n), dtype=np.int16)
        expected = np.zeros((out_q, n), dtype=np.float32)
        all_probs = np.zeros((out_q, n, c, len(STATES)), dtype=np.float32) if probs else None
        if aggregate:
            qpooled = _unit(qpooled.mean(0, keepdims=True))
        closeness = np.zeros((out_q, n), dtype=np.float32)
        acoustic = np.zeros((out_q, n), dtype=np.float32)
        # A long query's moments, one by one: a copy of one of its stretches is a near-duplicate
        # of that moment even though the query's average says little about it.
        best = aggregate and nq > 1
        acoustic_best = np.zeros((1, n), dtype=np.float32) if best else None
        qacoustic_each = self.acoustic_of(q) if best else None
        if n == 0:
            return ScoreMatrix(level, expected, closeness, all_probs, acoustic, acoustic_best)
        e = self.embed_width

        t = self.head.steps
        block_rows = self.block_rows
        if block_rows is None:
            block_rows = COMPACT_BLOCK_ROWS if scan == "bfloat16" else DEFAULT_BLOCK_ROWS
        sub = max(1, min(block_rows // t, n))
        # Enough chunks to keep every worker busy, each as large as the pooling likes.
        chunk = max(sub, min(self.chunk_rows // t, -(-n // (4 * self.workers))))
        chunk = -(-chunk // sub) * sub
        local = threading.local()
        backend = self.backend

        def score_chunk(start: int) -> None:
            block = getattr(local, "block", None)
            if block is None:
                block = local.block = backend.block(sub, chunk, scan)
            stop = min(n, start + chunk)
            if rows is None:
                raw = cache[start:stop]
            else:
                raw = cache[rows[start:stop]]
            m = raw.shape[0]
            part, db_rest = self._split(raw, compact)  # halves as stored; pooled, acoustic
            halves = backend.halves(part, self.cache_dtype if compact else "float32")
            closeness[:, start:stop] = qpooled @ db_rest[:, :e].T
            db_acoustic = db_rest[:, e:].T
            acoustic[:, start:stop] = qacoustic @ db_acoustic
            if best:
                acoustic_best[0, start:stop] = (qacoustic_each @ db_acoustic).max(0)
            acc = None
            for j in range(nq):
                y = backend.probs(block, halves, qpair[j], m)  # (m, 3, C)
                if aggregate:
                    acc = y if acc is None else np.add(acc, y, out=acc)
                else:
                    self._emit(y, j, start, stop, level, expected, all_probs)
            if aggregate:
                acc /= np.float32(nq)
                self._emit(acc, 0, start, stop, level, expected, all_probs)

        if rows is not None:
            prefetch_rows(cache, rows)  # scattered rows of a large cache: read them all at once
        backend.run_chunks(score_chunk, range(0, n, chunk), self.workers)
        return ScoreMatrix(level, expected, closeness, all_probs, acoustic, acoustic_best)

    def scan_dtype(self, fast: bool = False) -> str:
        """The dtype a scan of this cache multiplies in (backend.scan_dtype): "float32" (exact)
        or "bfloat16"; a float32 cache's only with `fast`."""
        if self.compact:
            return self.backend.scan_dtype(self.cache_dtype)
        return self.backend.scan_dtype(self.cache_dtype, fast=fast)

    @staticmethod
    def _emit(y: np.ndarray, j, start, stop, level, expected, all_probs) -> None:
        expected[j, start:stop] = y[:, BOTH : NEITHER + 1].sum((1, 2))
        # argmax is "differs" exactly when it beats both others strictly (ties go to the
        # first state, as argmax breaks them).
        differs = (y[:, DIFFERS] > np.maximum(y[:, BOTH], y[:, NEITHER])).sum(-1)
        level[j, start:stop] = y.shape[2] - differs
        if all_probs is not None:
            all_probs[j, start:stop] = y.transpose(0, 2, 1)

    def flops_per_query(self, items: int | None = None) -> int:
        """Pair-specific floating-point operations of one single-item query over the store."""
        n = self.n_items if items is None else items
        return self.head.flops_per_step() * self.head.steps * n

    # ---- search

    def search(
        self,
        query: Path | str | np.ndarray,
        k: int = 10,
        require: Iterable[str] = (),
        exclude: Iterable[str] = (),
        min_level: int | None = None,
        mode: "str | RankingMode | None" = None,
        include_self: bool = True,
        start: float | None = None,
        end: float | None = None,
        group_by: str | None = None,
        candidates: int | None = None,
        exact: bool = False,
        inside: bool | None = None,
    ) -> SearchResults:
        """The k best items for a query file (or raw (T, D) / (Q, T, D) features, or a
        StoredQuery).

        `mode` (ranking.MODES) defaults to the one the model file records (presence when it
        records none). With include_self=False the query's own stored items are left out and
        the k results are the best other items. `start`/`end` (seconds): only that region of
        the query file is the query.

        One result per moment: an item mostly inside a better-ranked item of the same file
        (overlapping windows, event items; see audio.Cutting) is the same moment and is left
        out. group_by="file": one result per file, its best moment, with the count of its
        moments that rank above the first file left out (Result.moments). A query of several
        items is ranked by its items' average (the file-level score) and each result names the
        query item that matches it best (Result.query_moment).

        Stores of PREFILTER_MIN_ITEMS items or more are searched in the blend and acoustic
        modes through the candidate prefilter (search.prefilter): only the `candidates`
        (default PREFILTER_CANDIDATES; the acoustic index's: PREFILTER_SHARE of the store when more) items with
        the best predicted score (the query's and each item's self-presence, and their
        acoustic cosine; presence mode: the items an approximate index puts nearest) are
        scored exactly, the query's own items always among them. `candidates` asks for it at
        any size and mode; `exact` scores every item. When the candidates leave fewer than k
        results (narrow filters), every item is scored after all.

        A query file of up to 30 s is also looked for inside the store's long recordings
        (search.contains): `inside` True always, False never, None (default) when they add up
        to at most INSIDE_MAX_HOURS (SearchResults.inside_skipped_hours says when not)."""
        from soundsearch.search.ranking import resolve_ranking

        ranking = resolve_ranking(self.model, mode)
        filters = check_filters(require, exclude, min_level, self.taxonomy, self.model.name)
        n = self._items_to_search(k, group_by)
        if exact and candidates is not None:
            raise SearchError("choose either exact (every item scored) or a number of candidates, not both")
        if candidates is not None and candidates < 1:
            raise SearchError(f"candidates must be at least 1, not {candidates}")
        qf = query_features(self.store, query, start, end)
        located, skipped = self._located(qf, inside)
        rows = None if exact else self._candidate_rows(ranking, qf.feats, qf.self_rows, candidates)
        if rows is not None and located is not None:
            rows = np.union1d(rows, located.rows)  # an item holding the query's sound is always scored
        region = start is not None or end is not None
        found = self._search_rows(qf, rows, ranking, filters, k, include_self, group_by, n, region, located)
        if rows is not None and len(found.results) < k:
            found = self._search_rows(qf, None, ranking, filters, k, include_self, group_by, n, region, located)
        if skipped is not None:
            found = dataclasses.replace(found, inside_skipped_hours=skipped)
        return found

    def _located(self, qf, inside: bool | None) -> tuple["Located | None", float | None]:
        """(where the query's sound is inside long recordings, or None; the hours of long
        recordings not searched because they exceed INSIDE_MAX_HOURS, or None)."""
        from soundsearch.constants import INSIDE_MAX_HOURS

        if inside is False or qf.path is None:
            return None, None
        if inside is None:
            hours = self._print_cache().hours(self.store)
            if hours > INSIDE_MAX_HOURS:
                return None, hours
        return self.locate(qf.path, qf.segments), None

    def _print_cache(self):
        from soundsearch.search.prints import PrintCache

        if self._prints is None:
            self._prints = PrintCache(self.store.path, writable=self.persist and not self.store.readonly)
        return self._prints

    def locate(self, query_path, segments) -> "Located | None":
        """Where the query file's own sound occurs inside the store's long recordings
        (search.contains), per store row; None when nowhere or not asked for."""
        from soundsearch.search.contains import locate

        return locate(self.store, query_path, segments, self._print_cache())

    def prefilter(self) -> "Prefilter":
        """The candidate prefilter of this engine's store and model (indexes built on first use)."""
        from soundsearch.search.prefilter import Prefilter

        if self._prefilter is None:
            self._prefilter = Prefilter(self)
        return self._prefilter

    def _candidate_rows(self, ranking, feats, self_rows, candidates: int | None) -> np.ndarray | None:
        """Sorted store rows to score for this query, or None to score every item."""
        from soundsearch.constants import PREFILTER_CANDIDATES, PREFILTER_MIN_ITEMS, PREFILTER_SHARE
        from soundsearch.search.ranking import RankingMode

        n = self.n_items
        presence = ranking.mode is RankingMode.PRESENCE
        if candidates is None and (n < PREFILTER_MIN_ITEMS or presence):
            return None  # small store, or a mode the prefilter predicts poorly (prefilter.py)
        predicted = not presence and self.prefilter_predictor == "presence"
        if candidates is not None:
            count = int(candidates)
        else:
            count = PREFILTER_CANDIDATES if predicted else max(PREFILTER_CANDIDATES, int(n * PREFILTER_SHARE))
        if count >= n:
            return None
        pre = self.prefilter()
        q = np.asarray(feats, dtype=np.float32)
        q = q[None] if q.ndim == 2 else q
        acoustic = self.acoustic_of(q, aggregate=True)[0]
        # A query of several items: a copy of one of its moments is a near-duplicate, ranked
        # first, however unlike the query's average it is (ScoreMatrix.acoustic_best), so the
        # near-duplicate candidates are looked for moment by moment.
        moments = self.acoustic_of(q) if q.shape[0] > 1 else None
        if presence:
            _, _, pooled = self._sides(q)
            pooled = _unit(pooled.mean(0, keepdims=True))[0]
            rows = np.union1d(pre.candidates("pooled", pooled, count), self._near_rows(pre, acoustic, moments))
        elif predicted:
            weight = 1.0 if ranking.mode is RankingMode.ACOUSTIC else float(ranking.weight)
            presence_q = self.self_presence(q) if weight < 1.0 else np.zeros(len(self.taxonomy), np.float32)
            rows = pre.predicted(presence_q, acoustic, weight, count, moments=moments)
        else:
            rows = np.union1d(pre.candidates("acoustic", acoustic, count), self._near_rows(pre, acoustic, moments))
        if self_rows is not None:
            rows = np.union1d(rows, self_rows)
        return rows

    def _search_rows(self, qf, rows, ranking, filters, k, include_self, group_by, n, region, located) -> SearchResults:
        """The search over store `rows` only (sorted; None: every item); `located`: where the
        query's sound was found inside long recordings (search.contains), per store row."""
        c = len(self.taxonomy)
        query_path, segments, feats, self_rows = qf
        fast = self.fast_scan and self.scan_dtype(fast=True) != "float32"
        scores = self.score_all(feats, probs=True, aggregate=True, rows=rows, fast=fast)
        query_presence = self.self_presence(feats)
        items = self.store.items()
        if rows is not None:
            # Everything below works on positions into `rows`: the query's own rows (always
            # among the candidates) and the items are mapped onto them.
            self_rows = None if self_rows is None else np.searchsorted(rows, self_rows)
            items = _Rows(items, rows)
        if located is not None and rows is not None:
            located = located.take(rows)
        contains = None if located is None else located.score
        refiner = None
        if self.compact or fast:  # approximate presence scores
            from soundsearch.search.rerank import Refiner

            refiner = Refiner(self, scores, feats, rows, ranking, filters, include_self, self_rows, contains, c)
        want = max(8 * k, 64)  # what choose_rows looks at first
        while True:
            if refiner is not None:
                refiner.settle(want)  # the top of an approximate scan re-scored exactly (rerank.py)
            scored = scored_items(scores, self_rows, c)
            keep, effects, n_self = apply_filters(filters, scored.states, scored.level, scored.is_self, include_self)
            cand = np.flatnonzero(keep)
            dup_cos, sounds = _duplicate_evidence(scores, scored, query_path, segments, items, keep)
            order, moments, ordered = choose_rows(ranking, scored, cand, c, k, items, group_by == "file", dup_cos, sounds, contains)
            if refiner is None or ordered.order.size <= want:
                break
            want = int(ordered.order.size)  # the moments walk looked further: settle that far
        self.last_rescored = None if refiner is None else refiner.rescored
        query_moment = self._query_moments(feats, segments, order if rows is None else rows[order], ranking, c)
        return SearchResults(
            query=query_path,
            query_segments=segments,
            results=build_results(scored, order, items, cand, ordered, moments, query_moment, sounds, located),
            taxonomy=self.taxonomy,
            items_searched=n,
            matches=int(cand.size),
            query_in_store=self_rows is not None,
            filters=filters.as_dict(),
            mode=ranking.mode.value,
            weight=ranking.weight,
            query_presence=query_presence,
            filter_effects=effects,
            self_hidden=0 if include_self else n_self,
            group_by=group_by,
            region=(segments[0][0], segments[-1][1]) if region and segments else None,
            candidates=None if rows is None else int(rows.size),
        )

    def _items_to_search(self, k: int, group_by: str | None) -> int:
        """The number of stored items; SearchError or StoreError for a search that cannot run."""
        if k < 1:
            raise SearchError(f"k must be at least 1, not {k}")
        n = self.n_items
        if n == 0:
            raise StoreError(f"the store at {self.store.path} holds no items: run `soundsearch index PATH` first")
        if group_by not in (None, "file"):
            raise SearchError(f"results can be grouped by file only, not by {group_by!r}")
        return n

    def _query_moments(self, feats, segments, rows: np.ndarray, ranking, c: int):
        """Per result row, the (start, end) of the query item matching it best by the mode's
        score; None for a query of one item. Scores the query's items one by one against the
        results only, so it costs Q x k pairs, not Q x N."""
        from soundsearch.search.ranking import rank_score

        q = np.asarray(feats)
        if q.ndim != 3 or q.shape[0] < 2 or rows.size == 0 or len(segments) != q.shape[0]:
            return None
        each = self.score_all(q, rows=rows, recompute=self.compact)
        best = rank_score(ranking, each.level, each.expected, each.acoustic, c).argmax(0)
        return [tuple(segments[int(j)]) for j in best]

    @staticmethod
    def _near_rows(pre, acoustic: np.ndarray, moments: np.ndarray | None) -> np.ndarray:
        """The acoustic index's DUPLICATE_CANDIDATES nearest items to the query, or to each of
        its moments (as many in all, at least 8 each)."""
        from soundsearch.search.prefilter import DUPLICATE_CANDIDATES

        if moments is None:
            return pre.candidates("acoustic", acoustic, DUPLICATE_CANDIDATES)
        each = max(8, DUPLICATE_CANDIDATES // moments.shape[0])
        return np.unique(np.concatenate([pre.candidates("acoustic", m, each) for m in moments]))

    def self_presence(self, feats_raw: np.ndarray) -> np.ndarray:
        """(C,) the model's probability that a recording (its (Q, T, D) items) holds each
        category: each item paired with itself, averaged, p_both / (p_both + p_neither)."""
        q = np.asarray(feats_raw, dtype=np.float32)
        if q.ndim == 2:
            q = q[None]
        self.prepare()
        rows = self._database_rows(q)
        qa, qb, _ = self._sides(q)
        backend = self.backend
        qpair = backend.pair(qa, qb)
        halves = backend.halves(rows[:, : self._halves_width])
        block = backend.block(1, 1)
        with backend.single():
            y = np.stack([backend.probs(block, halves[j : j + 1], qpair[j], 1)[0] for j in range(q.shape[0])])
        y = y.mean(0)  # (3, C)
        both, neither = y[BOTH].astype(np.float64), y[NEITHER].astype(np.float64)
        return (both / np.maximum(both + neither, 1e-12)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _Rows:
    """The store's items at some rows, by position: a prefiltered search's view of the store."""

    def __init__(self, items: Sequence, rows: np.ndarray):
        self._items, self._rows = items, rows

    def __len__(self) -> int:
        return int(self._rows.size)

    def __getitem__(self, pos: int):
        return self._items[int(self._rows[pos])]


def _duplicate_evidence(scores: ScoreMatrix, scored, query_path, segments, items, keep: np.ndarray):
    """(each kept item's best acoustic cosine with a query item, for a query of several items,
    else None; each store row's fingerprint similarity with the query, nan where not compared,
    or None): what decides which results are near-duplicates of the query."""
    from soundsearch.search.fingerprint import compare_candidates

    cand = np.flatnonzero(keep)
    dup_cos = None if scores.acoustic_best is None else scores.acoustic_best[0][cand]
    sounds = compare_candidates(query_path, segments, items, scored.acoustic if dup_cos is None else scores.acoustic_best[0],
                                keep & ~scored.is_self)
    return dup_cos, sounds


__all__ = [
    "CACHE_DTYPES",
    "Result",
    "ScoreMatrix",
    "SearchEngine",
    "SearchResults",
    "StoredQuery",
    "model_key",
    "rank",
]
