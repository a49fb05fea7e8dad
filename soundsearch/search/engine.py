"""The search engine: score a query against every stored item with the presence model, rank.

Speed by construction. The network's first pair layer is symmetric and splits into one half
per item (model.PresenceNet.project), so everything that depends on a database item alone is
computed once per (store, model) and cached beside the store, with every batch norm folded
into the weights (the model's inference form, soundsearch.model.inference):

    per item, per step t:  PA = s * W_a h,  PB = s * W_b h + shift   (s, shift: the pair BN)
                           pooled = mean_t h / |mean_t h|             (for closeness)
    per item:              acoustic = unit((item_stats - mu) / sigma)  (ranking.py)
                           (mu, sigma: per-dimension mean and floored std of the whole-item
                           statistics over every item of the store)

A query then pays only for the pair-specific part, per item and step:

    z1 = ReLU(PA_q + PB_i) + ReLU(PA_i + PB_q)    the model's pair layer, both orders
    z  = ReLU(W' z + b') ...                      the rest of the head, batch norm folded
    per category a 3-way softmax f_t and an attention weight v_t (softmax over T)
    y  = sum_t v_t f_t                            (mean over t without attention)

streamed over the items in chunks (bounded memory, cache-friendly buffers reused). This is
exact: the same arithmetic as the model's forward pass up to float rounding, for every
variant (siamese or not, single or per-category, attention or mean pooling).

Ranking (soundsearch.search.ranking): the model's recorded mode, or the one asked for. `presence`:
predicted similarity level (categories whose most likely state is both or neither)
descending, then the expected agreement sum_c p_both + p_neither descending, then the
closeness (cosine of the mean-pooled tower embeddings) descending, then row order; `blend`:
(1 - w) expected / C + w acoustic; `acoustic`: the acoustic cosine alone. Whatever the mode,
near-duplicates of the query (acoustic cosine >= ranking.DUPLICATE_COSINE) come right after
the query's own items.

A query file cut into several items (a long recording) is scored item by item against every
database item; the per-category probabilities are averaged over the query's items and the
level and expected agreement are read from that average. Its closeness is the cosine between
the mean of its items' pooled embeddings and the database item's; its acoustic vector is the
mean of its items' standardised statistics, normalised. A query file that is in the
store, unchanged, ranks its own items first whatever the model predicts: a recording's
presence matrix with itself has no "differs" by definition, so those rows show level C and the
model's both/neither probabilities renormalised (what the model thinks the query contains).

Cache (soundsearch.search.cache): `<store>/cache/search-<store state>-<model path>-<model content>-<dtype>-v<N>.npy`,
one row per item [PB | PA | pooled | acoustic], then as few rows as hold the acoustic
standardisation (mu, sigma) as raw float32 bytes (exact in either dtype). The acoustic part
costs D' values per item (logmel's default mean,std,max: 384, 1.5 KiB in float32, +7% on the
5.1k-value row of the default model). float32 by default; bfloat16 on request halves size and
memory traffic but is not exact, so it is never the default. Written to a temporary file and
renamed into place; writing one removes caches of older store states and of older versions of
the same model file. A store folder that cannot be written to is searched all the same, with
the database side recomputed in memory.

Threads: chunks of items go to one Python thread per core (torch's thread count), each running
torch single-threaded; see soundsearch.search.kernel._run_chunks for why.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch

from soundsearch.errors import SearchError, StoreError
from soundsearch.presence import BOTH, DIFFERS, NEITHER, STATES
from soundsearch.search.cache import CACHE_DTYPES, cache_name, create_cache_file, load_cache, model_key, publish_cache_file
from soundsearch.search.kernel import _Block, _run_chunks, _torch_threads

if TYPE_CHECKING:
    from soundsearch.model.network import LoadedModel
    from soundsearch.search.ranking import RankingMode
    from soundsearch.store import ItemRecord, Store
    from soundsearch.taxonomy import Taxonomy

# Item-steps scored per block: the block's activations (rows x 256 floats, a few of them) then
# stay within the CPU's L2 cache between the elementwise ops and the matrix products.
DEFAULT_BLOCK_ROWS = 640
# Item-steps pooled at once: the pooling is many small operations, cheaper on long runs.
DEFAULT_CHUNK_ROWS = 10240
# Items embedded per chunk while building the cache.
_BUILD_CHUNK = 2048


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ScoreMatrix:
    """Scores of Q queries against the N stored items (rows in store order)."""

    level: np.ndarray  # (Q, N) int16: predicted similarity level 0..C
    expected: np.ndarray  # (Q, N) float32: sum_c p_both + p_neither
    closeness: np.ndarray  # (Q, N) float32: cosine of pooled tower embeddings
    probs: np.ndarray | None = None  # (Q, N, C, 3) float32 in STATES order, when asked for
    acoustic: np.ndarray | None = None  # (Q, N) float32: cosine of standardised item statistics
    # (1, N) float32, aggregated scores of a query of several items only: the best acoustic
    # cosine of any one query item (moment) with each stored item.
    acoustic_best: np.ndarray | None = None

    @property
    def states(self) -> np.ndarray:
        if self.probs is None:
            raise SearchError("these scores were computed without probabilities")
        return self.probs.argmax(-1)


@dataclass(frozen=True)
class Result:
    rank: int  # 1-based
    item: "ItemRecord"
    level: int
    score: float  # expected agreement, 0..C
    closeness: float
    probs: np.ndarray  # (C, 3) in STATES order
    states: np.ndarray  # (C,) index into STATES
    is_query: bool = False  # the query recording itself (it is in the store, unchanged)
    acoustic: float = 0.0  # cosine of the standardised whole-item statistics
    rank_score: float = 0.0  # the ranking mode's score (ranking.rank_score)
    # A near-duplicate of the query: fingerprint >= DUPLICATE_FINGERPRINT where the sounds were
    # compared, else acoustic >= DUPLICATE_COSINE (ranking.order_items).
    duplicate: bool = False
    # search.fingerprint.similarity of this item's sound with the query's; None where not compared.
    fingerprint: float | None = None
    # The query's item (its start, end in seconds) that matches this result best, by the
    # ranking mode's score; None for a query of one item.
    query_moment: tuple[float, float] | None = None
    # With group_by="file": this file's distinct moments (non-overlapping items) that rank
    # above the best item of the first file left out; 1 otherwise.
    moments: int = 1


@dataclass(frozen=True)
class SearchResults:
    query: Path | None
    query_segments: list[tuple[float, float]]
    results: list[Result]
    taxonomy: "Taxonomy"
    items_searched: int
    matches: int  # items left after --require / --exclude / --min-level
    query_in_store: bool = False
    filters: dict = field(default_factory=dict)
    mode: str = "presence"  # the ranking mode used (ranking.MODES)
    weight: float | None = None  # the blend weight, in blend mode
    # (C,) the model's probability that the query holds each category (the query paired with
    # itself: p_both / (p_both + p_neither)); tells which side a "differs" state points to.
    query_presence: np.ndarray | None = None
    # Items each filter removes on its own: {"require": {cat: n}, "exclude": {cat: n},
    # "min_level": n or None, "others": items that are not the query's own}, so a filter that removes nothing or everything can say why.
    filter_effects: dict = field(default_factory=dict)
    self_hidden: int = 0  # the query's own items left out of `results` (include_self=False)
    group_by: str | None = None  # "file": one result per file, at its best moment
    # The query region asked for (start, end seconds), when the query is part of its file.
    region: tuple[float, float] | None = None


@dataclass(frozen=True)
class StoredQuery:
    """A query made of stored items (store rows), e.g. "more like this" on a result: their
    stored features are the query, and they count as the query's own items."""

    rows: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Ranking


def rank(level: np.ndarray, expected: np.ndarray, closeness: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices ordering items best first: level desc, expected desc, closeness desc, index asc.

    With `k`, only the best k (in order); linear time in the number of items.
    """
    level = np.asarray(level)
    expected = np.asarray(expected, dtype=np.float64)
    closeness = np.asarray(closeness, dtype=np.float64)
    n = level.shape[0]
    if k is None or k >= n:
        return np.lexsort((-closeness, -expected, -level.astype(np.int64)))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    # expected <= C < C + 1, so this key orders by level first, then expected, exactly enough:
    # both are small numbers and float64 keeps the expected part's float32 precision.
    span = float(np.max(expected)) + 1.0 if n else 1.0
    key = level.astype(np.float64) * span + expected
    kth = np.partition(key, n - k)[n - k]
    cand = np.flatnonzero(key >= kth)  # every item that can reach the top k, ties included
    order = np.lexsort((cand, -closeness[cand], -key[cand]))
    return cand[order[:k]]


# --------------------------------------------------------------------------------------------
# Engine


class SearchEngine:
    """Scores queries against every item of a store with a presence model.

    The database side is computed on first use (or loaded from `cache_dir`, default
    `<store>/cache`); `prepare()` does it eagerly.
    """

    def __init__(
        self,
        store: "Store",
        model: "LoadedModel",
        cache_dir: Path | None = None,
        cache_dtype: str = "float32",
        block_rows: int = DEFAULT_BLOCK_ROWS,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        persist: bool = True,
        workers: int | None = None,
    ):
        if cache_dtype not in CACHE_DTYPES:
            raise SearchError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}, not {cache_dtype!r}")
        model.check_featurizer(store.featurizer_identity)
        self.store = store
        self.model = model
        self.taxonomy = model.taxonomy
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(store.path) / "cache"
        self.cache_dtype = cache_dtype
        self.block_rows = max(int(block_rows), model.config.steps)
        self.chunk_rows = max(int(chunk_rows), self.block_rows)
        self.persist = persist
        self.workers = max(1, int(workers if workers is not None else torch.get_num_threads()))
        self.form = model.inference_form()
        self.head = self.form.head
        self.embed_width = self.form.embed_width
        self._cache: np.ndarray | None = None
        self._acoustic_width: int | None = None
        self._ac_mean: np.ndarray | None = None  # the store's acoustic standardisation
        self._ac_std: np.ndarray | None = None
        self._model_key: str | None = None
        self._cache_path: Path | None = None
        self.built_cache = False  # whether the last prepare() had to compute the database side

    # ---- database side

    @property
    def n_items(self) -> int:
        return int(self.store.features().shape[0])

    @property
    def acoustic_width(self) -> int:
        """D': values of Featurizer.item_stats per item."""
        if self._acoustic_width is None:
            probe = np.zeros((1, self.model.config.steps, self.model.config.dim), np.float32)
            self._acoustic_width = int(self.store.featurizer().item_stats(probe).shape[1])
        return self._acoustic_width

    @property
    def _row_width(self) -> int:
        return 2 * self.head.steps * self.head.width + self.embed_width + self.acoustic_width

    def _norm_rows(self, storage: type) -> int:
        """Rows after the items holding (mu, sigma) as float32 bytes."""
        values = 2 * self.acoustic_width * 4 // np.dtype(storage).itemsize
        return -(-values // self._row_width)

    def _pack_norm(self, storage: type) -> np.ndarray:
        raw = np.concatenate([self._ac_mean, self._ac_std]).astype(np.float32).view(storage)
        rows = np.zeros(self._norm_rows(storage) * self._row_width, dtype=storage)
        rows[: raw.size] = raw
        return rows.reshape(-1, self._row_width)

    def _unpack_norm(self, arr: np.ndarray) -> None:
        d = self.acoustic_width
        raw = np.ascontiguousarray(arr[self.n_items :]).reshape(-1)
        values = raw.view(np.uint8)[: 2 * d * 4].view(np.float32)
        self._ac_mean, self._ac_std = values[:d].copy(), values[d:].copy()

    def _item_stats(self, feats: np.ndarray) -> np.ndarray:
        return self.store.featurizer().item_stats(feats)

    def _store_norm(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The acoustic standardisation over every stored item, accumulated chunk by chunk."""
        from soundsearch.search.ranking import acoustic_norm_from_sums

        d = self.acoustic_width
        total, squares = np.zeros(d), np.zeros(d)
        for start in range(0, feats.shape[0], _BUILD_CHUNK):
            st = self._item_stats(feats[start : start + _BUILD_CHUNK]).astype(np.float64)
            total += st.sum(0)
            squares += (st * st).sum(0)
        return acoustic_norm_from_sums(feats.shape[0], total, squares)

    def acoustic_of(self, feats_raw: np.ndarray, aggregate: bool = False) -> np.ndarray:
        """(Q, D') unit acoustic vectors of raw (Q, T, D) items, standardised like the store's."""
        from soundsearch.search.ranking import acoustic_vectors

        self.prepare()
        return acoustic_vectors(self._item_stats(feats_raw), self._ac_mean, self._ac_std, aggregate)

    def acoustic_matrix(self) -> np.ndarray:
        """(N, D') float32 unit acoustic vectors of every stored item, from the cache."""
        self.prepare()
        off = 2 * self.head.steps * self.head.width + self.embed_width
        part = self._cache[: self.n_items, off:]
        if part.dtype == np.uint16:
            return self._as_tensor(part).float().numpy()
        return np.asarray(part, dtype=np.float32)

    def cache_path(self) -> Path:
        """Where the database side for this store state and model lives."""
        if self._model_key is None:
            self._model_key = model_key(self.model)
        return self.cache_dir / cache_name(self.store.fingerprint(), self.model.path, self._model_key, self.cache_dtype)

    def prepare(self) -> "SearchEngine":
        """Load the database side from the cache, or compute it (and cache it when possible)."""
        if self._cache is not None:
            return self
        path = self.cache_path()
        storage = np.uint16 if self.cache_dtype == "bfloat16" else np.float32
        arr = load_cache(path, (self.n_items + self._norm_rows(storage), self._row_width), storage)
        if arr is not None:
            self._unpack_norm(arr)
            self._cache, self._cache_path, self.built_cache = arr, path, False
            return self
        self._cache = self._build(path, storage)
        self._cache_path = path
        self.built_cache = True
        return self

    def _build(self, path: Path, storage: type) -> np.ndarray:
        n, width = self.n_items, self._row_width
        feats = self.store.features()
        self._ac_mean, self._ac_std = self._store_norm(feats)
        shape = (n + self._norm_rows(storage), width)
        out, tmp = create_cache_file(self.cache_dir, path, shape, storage) if self.persist and n else (None, None)
        if out is None:
            out = np.empty(shape, dtype=storage)
        try:
            out[n:] = self._pack_norm(storage)

            def build_chunk(start: int) -> None:
                rows = self._database_rows(feats[start : start + _BUILD_CHUNK])
                if storage is np.uint16:
                    out[start : start + rows.shape[0]] = rows.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
                else:
                    out[start : start + rows.shape[0]] = rows.numpy()

            _run_chunks(build_chunk, range(0, n, _BUILD_CHUNK), self.workers)
            if tmp is None:
                return out
            arr = publish_cache_file(out, tmp, path)
            tmp = None
            return arr
        except OSError as exc:
            raise StoreError(f"cannot write the search cache in {self.cache_dir}: {exc}") from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    @torch.no_grad()
    def _database_rows(self, feats_raw: np.ndarray) -> torch.Tensor:
        """(n, T, D) raw features -> (n, row width) float32: PA, PB (folded), pooled embedding,
        acoustic vector."""
        from soundsearch.search.ranking import acoustic_vectors

        pa, pb, pooled = self._sides(feats_raw)
        n = pa.shape[0]
        acoustic = torch.from_numpy(acoustic_vectors(self._item_stats(feats_raw), self._ac_mean, self._ac_std))
        # PB before PA: a query's (PA_q, PB_q) then lines up with both orders in one add.
        return torch.cat([pb.reshape(n, -1), pa.reshape(n, -1), pooled, acoustic], dim=1)

    def _sides(self, feats_raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Callers split big inputs into chunks across threads; a query's few rows are tiny
        # work, where intra-op threads only add barriers (milliseconds each on a busy machine).
        with _torch_threads(1):
            return self.form.sides(feats_raw)

    # ---- scoring

    @torch.no_grad()
    def score_all(
        self,
        query_feats_raw: np.ndarray,
        probs: bool = False,
        aggregate: bool = False,
        rows: np.ndarray | None = None,
    ) -> ScoreMatrix:
        """Score Q query items (Q, T, D) against every stored item (or the given `rows`).

        With `aggregate`, the Q items are one query (a long recording): probabilities are
        averaged over them and the result has one row.
        """
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
        qa, qb, qpooled = self._sides(q)
        qacoustic = torch.from_numpy(self.acoustic_of(q, aggregate=aggregate))
        qpair = torch.stack([qa, qb], dim=1)  # (Q, 2, T, G*K1)
        nq = q.shape[0]
        out_q = 1 if aggregate else nq
        c = self.head.n_categories
        level = np.zeros((out_q, n), dtype=np.int16)
        expected = np.zeros((out_q, n), dtype=np.float32)
        all_probs = np.zeros((out_q, n, c, len(STATES)), dtype=np.float32) if probs else None
        if aggregate:
            qpooled = qpooled.mean(0, keepdim=True)
            qpooled = qpooled / qpooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
        closeness = np.zeros((out_q, n), dtype=np.float32)
        acoustic = np.zeros((out_q, n), dtype=np.float32)
        # A long query's moments, one by one: a copy of one of its stretches is a near-duplicate
        # of that moment even though the query's average says little about it.
        best = aggregate and nq > 1
        acoustic_best = np.zeros((1, n), dtype=np.float32) if best else None
        qacoustic_each = torch.from_numpy(self.acoustic_of(q)) if best else None
        if n == 0:
            return ScoreMatrix(level, expected, closeness, all_probs, acoustic, acoustic_best)
        e = self.embed_width

        t, k = self.head.steps, self.head.width
        sub = max(1, self.block_rows // t)
        # Enough chunks to keep every worker busy, each as large as the pooling likes.
        chunk = max(sub, min(self.chunk_rows // t, -(-n // (4 * self.workers))))
        chunk = -(-chunk // sub) * sub
        local = threading.local()

        def score_chunk(start: int) -> None:
            block = getattr(local, "block", None)
            if block is None:
                block = local.block = _Block(self.head, sub, chunk)
            stop = min(n, start + chunk)
            if rows is None:
                raw = cache[start:stop]
            else:
                raw = cache[rows[start:stop]]
            db = self._as_tensor(raw)
            m = db.shape[0]
            halves = db[:, : 2 * t * k].view(m, 2, t, k)
            db_pooled = db[:, 2 * t * k : 2 * t * k + e].float()
            closeness[:, start:stop] = (qpooled @ db_pooled.T).numpy()
            db_acoustic = db[:, 2 * t * k + e :].float().T
            acoustic[:, start:stop] = (qacoustic @ db_acoustic).numpy()
            if best:
                acoustic_best[0, start:stop] = (qacoustic_each @ db_acoustic).amax(0).numpy()
            acc = None
            for j in range(nq):
                y = block.pool(block.logits(halves, qpair[j]), m)  # (m, 3, C)
                if aggregate:
                    acc = y if acc is None else acc.add_(y)
                else:
                    self._emit(y, j, start, stop, level, expected, all_probs)
            if aggregate:
                self._emit(acc.div_(nq), 0, start, stop, level, expected, all_probs)

        _run_chunks(score_chunk, range(0, n, chunk), self.workers)
        return ScoreMatrix(level, expected, closeness, all_probs, acoustic, acoustic_best)

    @staticmethod
    def _emit(y, j, start, stop, level, expected, all_probs) -> None:
        expected[j, start:stop] = y[:, BOTH : NEITHER + 1].sum((1, 2)).numpy()
        # argmax is "differs" exactly when it beats both others strictly (ties go to the
        # first state, as argmax breaks them).
        differs = torch.gt(y[:, DIFFERS], torch.maximum(y[:, BOTH], y[:, NEITHER])).sum(-1)
        level[j, start:stop] = (y.shape[2] - differs).numpy()
        if all_probs is not None:
            all_probs[j, start:stop] = y.transpose(1, 2).numpy()

    def _as_tensor(self, raw: np.ndarray) -> torch.Tensor:
        if raw.dtype == np.uint16:
            return torch.from_numpy(np.ascontiguousarray(raw).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(raw if raw.flags.c_contiguous else np.ascontiguousarray(raw))

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
        query item that matches it best (Result.query_moment)."""
        from soundsearch.search.fingerprint import compare_candidates
        from soundsearch.search.ranking import order_items, resolve_ranking

        ranking = resolve_ranking(self.model, mode)
        require, exclude = list(require), list(exclude)
        req_idx = self._category_indices(require)
        exc_idx = self._category_indices(exclude)
        both = sorted(set(require) & set(exclude))
        if both:
            raise SearchError(f"a category cannot be both required and excluded: {', '.join(both)}")
        c = len(self.taxonomy)
        if min_level is not None and not 0 <= min_level <= c:
            raise SearchError(f"--min-level must be between 0 and {c}, not {min_level}")
        if k < 1:
            raise SearchError(f"k must be at least 1, not {k}")

        n = self.n_items
        if n == 0:
            raise StoreError(f"the store at {self.store.path} holds no items: run `soundsearch index PATH` first")
        if group_by not in (None, "file"):
            raise SearchError(f"results can be grouped by file only, not by {group_by!r}")
        query_path, segments, feats, self_rows = self._query_features(query, start, end)
        scores = self.score_all(feats, probs=True, aggregate=True)
        query_presence = self.self_presence(feats)
        level, expected, closeness = scores.level[0], scores.expected[0], scores.closeness[0]
        acoustic = scores.acoustic[0]
        probs = scores.probs[0]
        if self_rows is not None:
            # A recording paired with itself cannot hold a category "exactly once": its row is
            # the model's both/neither split renormalised, i.e. what the model thinks the query
            # contains, at level C by definition.
            level, expected, probs = level.copy(), expected.copy(), probs.copy()
            agree = probs[self_rows, :, :DIFFERS]
            probs[self_rows, :, :DIFFERS] = agree / np.maximum(agree.sum(-1, keepdims=True), 1e-12)
            probs[self_rows, :, DIFFERS] = 0.0
            level[self_rows] = c
            expected[self_rows] = float(c)
        states = probs.argmax(-1)  # (N, C)

        is_self = np.zeros(n, dtype=bool)
        if self_rows is not None:
            is_self[self_rows] = True
        keep = np.ones(n, dtype=bool)
        effects: dict = {"require": {}, "exclude": {}, "min_level": None, "others": int(n - is_self.sum())}
        for name, j in zip(require, req_idx):
            mask = states[:, j] == BOTH
            effects["require"][name] = int(np.count_nonzero(~mask & ~is_self))
            keep &= mask
        for name, j in zip(exclude, exc_idx):
            mask = states[:, j] != BOTH
            effects["exclude"][name] = int(np.count_nonzero(~mask & ~is_self))
            keep &= mask
        if min_level is not None:
            mask = level >= min_level
            effects["min_level"] = int(np.count_nonzero(~mask & ~is_self))
            keep &= mask
        n_self = int(np.count_nonzero(keep & is_self))
        if not include_self:
            keep &= ~is_self
        cand = np.flatnonzero(keep)
        items = self.store.items()
        dup_cos = None if scores.acoustic_best is None else scores.acoustic_best[0][cand]
        sounds = compare_candidates(query_path, segments, items, acoustic if dup_cos is None else scores.acoustic_best[0],
                                    keep & ~is_self)
        # The query recording itself comes first whatever the model says (its presence matrix
        # with itself has no "differs" by construction), then its near-duplicates. Overlapping
        # items of one file are one moment, so the walk may need more than k of the order:
        # it asks for a few times k first and for all of it only when those do not suffice.
        want = min(cand.size, max(8 * k, 64))
        while True:
            ordered = order_items(
                ranking, level[cand], expected[cand], closeness[cand], acoustic[cand], c, k=want,
                is_query=is_self[cand], duplicate_acoustic=dup_cos,
                fingerprint=None if sounds is None else sounds[cand],
            )
            order = cand[ordered.order]
            chosen, moments, done = _walk_moments(order, items, is_self, k, group_by == "file")
            if done or want >= cand.size:
                break
            want = min(cand.size, want * 8)
        order = np.asarray(chosen, dtype=np.int64)
        duplicate = np.zeros(n, dtype=bool)
        duplicate[cand] = ordered.duplicate
        rank_score = np.zeros(n, dtype=np.float64)
        rank_score[cand] = ordered.score
        query_moment = self._query_moments(feats, segments, order, ranking, c)

        results = [
            Result(
                rank=i + 1,
                item=items[row],
                level=int(level[row]),
                score=float(expected[row]),
                closeness=float(closeness[row]),
                probs=probs[row].copy(),
                states=states[row].copy(),
                is_query=bool(is_self[row]),
                acoustic=float(acoustic[row]),
                rank_score=float(rank_score[row]),
                duplicate=bool(duplicate[row]),
                fingerprint=None if sounds is None or np.isnan(sounds[row]) else float(sounds[row]),
                query_moment=query_moment[i] if query_moment is not None else None,
                moments=moments.get(row, 1),
            )
            for i, row in enumerate(order.tolist())
        ]
        return SearchResults(
            query=query_path,
            query_segments=segments,
            results=results,
            taxonomy=self.taxonomy,
            items_searched=n,
            matches=int(cand.size),
            query_in_store=self_rows is not None,
            filters={"require": require, "exclude": exclude, "min_level": min_level},
            mode=ranking.mode.value,
            weight=ranking.weight,
            query_presence=query_presence,
            filter_effects=effects,
            self_hidden=0 if include_self else n_self,
            group_by=group_by,
            region=(segments[0][0], segments[-1][1]) if (start is not None or end is not None) and segments else None,
        )

    def _query_moments(self, feats, segments, rows: np.ndarray, ranking, c: int):
        """Per result row, the (start, end) of the query item matching it best by the mode's
        score; None for a query of one item. Scores the query's items one by one against the
        results only, so it costs Q x k pairs, not Q x N."""
        from soundsearch.search.ranking import rank_score

        q = np.asarray(feats)
        if q.ndim != 3 or q.shape[0] < 2 or rows.size == 0 or len(segments) != q.shape[0]:
            return None
        each = self.score_all(q, rows=rows)
        best = rank_score(ranking, each.level, each.expected, each.acoustic, c).argmax(0)
        return [tuple(segments[int(j)]) for j in best]

    @torch.no_grad()
    def self_presence(self, feats_raw: np.ndarray) -> np.ndarray:
        """(C,) the model's probability that a recording (its (Q, T, D) items) holds each
        category: each item paired with itself, averaged, p_both / (p_both + p_neither)."""
        q = np.asarray(feats_raw, dtype=np.float32)
        if q.ndim == 2:
            q = q[None]
        self.prepare()
        t, k = self.head.steps, self.head.width
        rows = self._database_rows(q)
        halves = rows[:, : 2 * t * k].reshape(q.shape[0], 2, t, k)
        qa, qb, _ = self._sides(q)
        qpair = torch.stack([qa, qb], dim=1)
        block = _Block(self.head, 1, 1)
        with _torch_threads(1):
            y = torch.stack([block.pool(block.logits(halves[j : j + 1], qpair[j]), 1)[0] for j in range(q.shape[0])])
        y = y.mean(0)  # (3, C)
        both, neither = y[BOTH].double(), y[NEITHER].double()
        return (both / (both + neither).clamp_min(1e-12)).float().numpy()

    def _category_indices(self, names: Sequence[str]) -> list[int]:
        unknown = [name for name in names if name not in self.taxonomy]
        if unknown:
            raise SearchError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                f"the model '{self.model.name}' knows: {', '.join(self.taxonomy.categories)}"
            )
        return [self.taxonomy.index(name) for name in names]

    def _query_features(self, query, start: float | None = None, end: float | None = None):
        """(path or None, segments, (Q, T, D) raw features, store rows of the query itself or None).

        A file is cut as the store cuts (so an unchanged stored file is recognised as the
        query itself); `start`/`end` take only that region of it (never "itself")."""
        if isinstance(query, np.ndarray):
            feats = query[None] if query.ndim == 2 else query
            return None, [], feats, None
        if isinstance(query, StoredQuery):
            rows = np.array(sorted(set(query.rows)), dtype=np.int64)
            n = self.n_items
            if rows.size == 0 or rows.min() < 0 or rows.max() >= n:
                raise SearchError(f"stored query rows must lie in 0..{n - 1}")
            items = self.store.items()
            chosen = [items[r] for r in rows.tolist()]
            if len({str(i.path) for i in chosen}) != 1:
                raise SearchError("a stored query is items of one recording")
            segments = [(i.start, i.end) for i in chosen]
            return chosen[0].path, segments, np.asarray(self.store.features()[rows]), rows
        from soundsearch.features import featurize_file

        path = Path(query).expanduser().absolute()
        region = start is not None or end is not None
        if region and start is not None and end is not None and not end > start:
            raise SearchError(f"the query region must end after it starts, not {start:g}-{end:g} s")
        ff = featurize_file(path, self.store.featurizer(), cutting=self.store.cutting, start=start, end=end)
        feats = ff.features
        self_rows = None
        if region:
            return path, list(ff.segments), feats, None
        stored = self.store.items_for_path(path)
        if len(stored) == feats.shape[0]:
            rows = np.array([r.row for r in stored], dtype=np.int64)
            if np.allclose(self.store.features()[rows], feats, rtol=1e-5, atol=1e-5):
                self_rows = rows
        return path, list(ff.segments), feats, self_rows


def _overlap(a: "ItemRecord", b: "ItemRecord") -> bool:
    """Whether two items of one file are the same moment: they share at least half of the
    shorter one (consecutive windows, which only touch, are two moments)."""
    shared = min(a.end, b.end) - max(a.start, b.start)
    return shared > 0 and shared >= 0.5 * min(a.end - a.start, b.end - b.start)


def _walk_moments(order: np.ndarray, items, is_self: np.ndarray, k: int, by_file: bool):
    """(rows to show, {row: moments}, whether the order sufficed) from rows best first.

    An item that is the same moment as a better one of its file is passed over (the query's
    own items are listed as they are). By file: the first item of each file, until k files;
    each file's moments are counted until the best item of the first file left out."""
    chosen: list[int] = []
    moments: dict[int, int] = {}
    spans: dict[str, list] = {}
    first_of: dict[str, int] = {}
    for row in order.tolist():
        if is_self[row]:
            if not by_file and len(chosen) < k:
                chosen.append(row)
            if not by_file and len(chosen) >= k:
                return chosen, moments, True
            if not by_file:
                continue
        it = items[row]
        key = str(it.path)
        seen = spans.setdefault(key, [])
        if not is_self[row] and any(_overlap(it, other) for other in seen):
            continue
        seen.append(it)
        if not by_file:
            chosen.append(row)
            if len(chosen) >= k:
                return chosen, moments, True
        elif key in first_of:
            moments[first_of[key]] += 1
        elif len(first_of) >= k:
            return chosen, moments, True  # the first file left out: counting stops here
        else:
            first_of[key] = row
            moments[row] = 1
            chosen.append(row)
    return chosen, moments, False


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
