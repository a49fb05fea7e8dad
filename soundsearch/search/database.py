"""The database side of a search: everything that depends on the stored items alone, computed
once per (store, model) and cached beside the store (cache.py).

The network's first pair layer is symmetric and splits into one half per item
(model.PresenceNet.project), so with every batch norm folded into the weights (the model's
inference form, soundsearch.model.inference) each stored item gets one row:

    per item, per step t:  PA = s * W_a h,  PB = s * W_b h + shift   (s, shift: the pair BN)
                           pooled = mean_t h / |mean_t h|             (for closeness)
    per item:              acoustic = unit((item_stats - mu) / sigma)  (ranking.py)
                           (mu, sigma: per-dimension mean and floored std of the whole-item
                           statistics over every item of the store)

A store folder that cannot be written to is searched all the same, with the database side
recomputed in memory.

The arithmetic runs on a backend (backends.py: numpy, or torch for a model loaded with its
network); every array kept here is numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundsearch.errors import SearchError, StoreError
from soundsearch.search.backends import f32_to_bf16, make_backend
from soundsearch.search.cache import (
    CACHE_DTYPES,
    COMPACT_DTYPES,
    cache_name,
    create_cache_file,
    default_cache_dtype,
    load_cache,
    model_key,
    norm_rows,
    pack_norm,
    publish_cache_file,
    row_width,
    storage_dtype,
    unpack_norm,
)
from soundsearch.store.mapped import prefetch_rows

if TYPE_CHECKING:
    from soundsearch.model.arrays import ModelBase
    from soundsearch.store import Store

# Items embedded per chunk while building the cache.
_BUILD_CHUNK = 2048


class DatabaseSide:
    """Rows [PB | PA | pooled | acoustic] of every stored item for one model, and the store's
    acoustic standardisation; computed on first use (or loaded from `cache_dir`, default
    `<store>/cache`), `prepare()` does it eagerly. The search engine is built on it."""

    def __init__(
        self,
        store: "Store",
        model: "ModelBase",
        cache_dir: Path | None,
        cache_dtype: str | None,
        persist: bool,
        workers: int | None,
        backend: str | None = None,
    ):
        model.check_featurizer(store.featurizer_identity)
        if cache_dtype is None:
            cache_dtype = default_cache_dtype(int(store.features().shape[0]))
        if cache_dtype not in CACHE_DTYPES:
            raise SearchError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}, not {cache_dtype!r}")
        self.store = store
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(store.path) / "cache"
        self.cache_dtype = cache_dtype
        # A compact cache (cache.COMPACT_DTYPES) holds the halves in 16 bits: its presence
        # scores are approximate until re-scored from float32 rows (exact_rows; rerank.py).
        self.compact = cache_dtype in COMPACT_DTYPES
        self.persist = persist
        self.form = model.inference_form()
        self.backend = make_backend(model, self.form, backend)
        self.workers = max(1, int(workers if workers is not None else self.backend.default_workers()))
        self.head = self.backend.head  # the folded head, as the backend's arrays
        self.embed_width = self.form.embed_width
        self._cache: np.ndarray | None = None
        self._acoustic_width: int | None = None
        self._ac_mean: np.ndarray | None = None  # the store's acoustic standardisation
        self._ac_std: np.ndarray | None = None
        self._model_key: str | None = None
        self._cache_path: Path | None = None
        self.built_cache = False  # whether the last prepare() had to compute the database side


    @property
    def n_items(self) -> int:
        return int(self.store.features().shape[0])

    @property
    def acoustic_width(self) -> int:
        """D': values of Featurizer.item_stats per item."""
        if self._acoustic_width is None:
            probe = np.zeros((1, self.model.config.steps, self.model.config.dim), np.float32)
            self._acoustic_width = int(self._item_stats(probe).shape[1])
        return self._acoustic_width

    @property
    def _halves_width(self) -> int:
        """Values of [PB | PA] per item: 2 T G*K1."""
        return 2 * self.head.steps * self.head.width

    @property
    def _tail_width(self) -> int:
        """Values of [pooled | acoustic] per item, float32 in every cache."""
        return self.embed_width + self.acoustic_width

    @property
    def _row_width(self) -> int:
        """Storage values per cache row (cache.row_width)."""
        return row_width(self.cache_dtype, self._halves_width, self._tail_width)

    def _norm_rows(self, storage: type) -> int:
        return norm_rows(self.acoustic_width, self._row_width, storage)

    def _item_stats(self, feats: np.ndarray) -> np.ndarray:
        # From the store's recorded featurizer spec, not a built featurizer: building aisfx's
        # loads its network and torch, which a query of known features does not need.
        from soundsearch.features import item_stats, spec_stats

        spec = getattr(self.store, "featurizer_spec", None)
        if not isinstance(spec, dict):
            return self.store.featurizer().item_stats(feats)
        return item_stats(feats, spec_stats(spec))

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
        return self.vector_part("acoustic", 0, self.n_items)

    def vector_part(self, vector: str, start: int, stop: int) -> np.ndarray:
        """(stop - start, width) float32 rows of the cache's "pooled" or "acoustic" part."""
        self.prepare()
        tail = self._split(self._cache[start:stop])[1]
        e = self.embed_width
        return np.ascontiguousarray(tail[:, e:] if vector == "acoustic" else tail[:, :e], dtype=np.float32)

    def self_presence_rows(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, C) float32: the model's probability that each stored item holds each
        category (each paired with itself, p_both / (p_both + p_neither)), from the cached
        halves, in numpy (the prefilter's presence predictor; SearchEngine.self_presence is
        the same for a query)."""
        from soundsearch.presence import STATES
        from soundsearch.search.backends import as_float32
        from soundsearch.search.kernel_numpy import NumpyBlock

        self.prepare()
        head = self.form.head
        sub = 256
        block = NumpyBlock(head, sub, sub)
        both_i, neither_i = STATES.index("both"), STATES.index("neither")
        out = np.empty((max(0, stop - start), head.n_categories), np.float32)
        for s in range(start, stop, sub):
            e = min(stop, s + sub)
            part = as_float32(self._split(self._cache[s:e])[0], self.cache_dtype)
            halves = np.ascontiguousarray(part).reshape(e - s, 2, head.steps, head.width)
            y = block.self_probs(halves).astype(np.float64)
            both, neither = y[:, both_i], y[:, neither_i]
            out[s - start : e - start] = both / np.maximum(both + neither, 1e-12)
        return out

    def cache_path(self) -> Path:
        """Where the database side for this store state and model lives."""
        if self._model_key is None:
            self._model_key = model_key(self.model)
        return self.cache_dir / cache_name(self.store.fingerprint(), self.model.path, self._model_key, self.cache_dtype)

    def prepare(self) -> "DatabaseSide":
        """Load the database side from the cache, or compute it (and cache it when possible)."""
        if self._cache is not None:
            return self
        path = self.cache_path()
        storage = storage_dtype(self.cache_dtype)
        arr = load_cache(path, (self.n_items + self._norm_rows(storage), self._row_width), storage)
        if arr is not None:
            self._ac_mean, self._ac_std = unpack_norm(arr, self.n_items, self.acoustic_width)
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
            out[n:] = pack_norm(self._ac_mean, self._ac_std, width, storage)

            def build_chunk(start: int) -> None:
                rows = self._database_rows(feats[start : start + _BUILD_CHUNK])
                self._pack(rows, out[start : start + rows.shape[0]])

            self.backend.run_chunks(build_chunk, range(0, n, _BUILD_CHUNK), self.workers)
            if tmp is None:
                return out
            arr = publish_cache_file(out, tmp, path)
            tmp = None
            return arr
        except OSError as exc:
            raise StoreError(f"cannot write the search cache in {self.cache_dir}: {exc}") from None
        finally:
            if tmp is not None:
                tmp.discard()

    def _database_rows(self, feats_raw: np.ndarray) -> np.ndarray:
        """(n, T, D) raw features -> (n, row width) float32: PA, PB (folded), pooled embedding,
        acoustic vector."""
        from soundsearch.search.ranking import acoustic_vectors

        pa, pb, pooled = self._sides(feats_raw)
        n = pa.shape[0]
        acoustic = acoustic_vectors(self._item_stats(feats_raw), self._ac_mean, self._ac_std)
        # PB before PA: a query's (PA_q, PB_q) then lines up with both orders in one add.
        return np.concatenate([pb.reshape(n, -1), pa.reshape(n, -1), pooled, acoustic], axis=1)

    def _sides(self, feats_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(PA, PB, pooled) of raw (n, T, D) features, numpy float32, from the backend."""
        return self.backend.sides(feats_raw)

    def _pack(self, rows: np.ndarray, dst: np.ndarray) -> None:
        """Float32 database rows (n, halves + tail) into cache rows `dst` of this dtype."""
        if not self.compact:
            dst[:] = rows
            return
        h = self._halves_width
        halves = rows[:, :h]
        dst[:, :h] = f32_to_bf16(halves) if self.cache_dtype == "bfloat16" else halves.astype(np.float16).view(np.uint16)
        dst[:, h:] = np.ascontiguousarray(rows[:, h:], dtype=np.float32).view(np.uint16)

    def _split(self, raw: np.ndarray, compact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cache rows (of a compact layout or not; default: this cache's) -> their halves
        (n, 2 T G*K1) as stored (float32, or 16-bit values as uint16: backend.halves reads
        them) and their [pooled | acoustic] (n, E + D') float32, both views of `raw`."""
        h = self._halves_width
        if raw.strides[1] != raw.itemsize:
            raw = np.ascontiguousarray(raw)
        if not (self.compact if compact is None else compact):
            return raw[:, :h], raw[:, h:]
        return raw[:, :h], raw[:, h:].view(np.float32)

    def exact_rows(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), halves + tail) float32 database rows of these store rows, recomputed
        from the stored features: what a compact cache's approximate scores are checked with."""
        self.prepare()
        rows = np.asarray(rows, dtype=np.int64)
        feats = self.store.features()
        prefetch_rows(feats, rows)
        # One thread: a few hundred rows are small work, where intra-op threads only add
        # barriers (torch.cat of 266 rows: 40 ms with two threads on a busy machine).
        with self.backend.single():
            out = [self._database_rows(np.asarray(feats[rows[s : s + _BUILD_CHUNK]]))
                   for s in range(0, rows.shape[0], _BUILD_CHUNK)]
        width = self._halves_width + self._tail_width
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)
