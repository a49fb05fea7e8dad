"""What a search's query is, and which stored items are the query itself (the self-match).

A query is a file (cut as the store cuts, or only a region of it), stored items of one
recording (StoredQuery, "more like this"), or raw (T, D) / (Q, T, D) features. A query file cut
into several items (a long recording) is scored item by item against every database item; the
per-category probabilities are averaged over the query's items and the level and expected
agreement are read from that average. Its closeness is the cosine between the mean of its
items' pooled embeddings and the database item's; its acoustic vector is the mean of its items'
standardised statistics, normalised.

A query file that is in the store, unchanged (Store.unchanged_items: the size and modification
time `index` recorded), is not decoded or featurized again: its stored items are the query. It
ranks its own items first whatever the model predicts: a recording's presence matrix with itself has no "differs" by definition, so those
rows show level C and the model's both/neither probabilities renormalised (what the model
thinks the query contains).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from soundsearch.errors import SearchError
from soundsearch.presence import DIFFERS
from soundsearch.search.results import ScoreMatrix, StoredQuery

if TYPE_CHECKING:
    from soundsearch.store import Store


class QueryFeatures(NamedTuple):
    path: Path | None
    segments: list[tuple[float, float]]
    feats: np.ndarray  # (Q, T, D) raw features
    self_rows: np.ndarray | None  # store rows of the query itself


def query_features(store: Store, query, start: float | None = None, end: float | None = None) -> QueryFeatures:
    """The query's features, and its own store rows when it is an unchanged stored file.

    A file is cut as the store cuts (so an unchanged stored file is recognised as the
    query itself); `start`/`end` take only that region of it (never "itself")."""
    if isinstance(query, np.ndarray):
        feats = query[None] if query.ndim == 2 else query
        return QueryFeatures(None, [], feats, None)
    if isinstance(query, StoredQuery):
        rows = np.array(sorted(set(query.rows)), dtype=np.int64)
        n = int(store.features().shape[0])
        if rows.size == 0 or rows.min() < 0 or rows.max() >= n:
            raise SearchError(f"stored query rows must lie in 0..{n - 1}")
        items = store.items()
        chosen = [items[r] for r in rows.tolist()]
        if len({str(i.path) for i in chosen}) != 1:
            raise SearchError("a stored query is items of one recording")
        segments = [(i.start, i.end) for i in chosen]
        return QueryFeatures(chosen[0].path, segments, np.asarray(store.features()[rows]), rows)
    path = Path(query).expanduser().absolute()
    region = start is not None or end is not None
    if region and start is not None and end is not None and not end > start:
        raise SearchError(f"the query region must end after it starts, not {start:g}-{end:g} s")
    if not region:
        # "More like this" of a stored file: its stored features are what featurizing it again
        # gives (features are deterministic; tests/test_query_reuse.py), so they are taken as
        # they are: no decoding, no featurizer (for aisfx no torch, ~1.5 s of a cold query).
        unchanged = getattr(store, "unchanged_items", None)
        stored = unchanged(path) if unchanged is not None else None
        if stored:
            rows = np.array([r.row for r in stored], dtype=np.int64)
            return QueryFeatures(path, [(r.start, r.end) for r in stored], np.asarray(store.features()[rows]), rows)
    from soundsearch.features import featurize_file

    ff = featurize_file(path, store.featurizer(), cutting=store.cutting, start=start, end=end)
    feats = ff.features
    self_rows = None
    if region:
        return QueryFeatures(path, list(ff.segments), feats, None)
    stored = store.items_for_path(path)
    if len(stored) == feats.shape[0]:
        rows = np.array([r.row for r in stored], dtype=np.int64)
        # Equal to float rounding, not bit for bit: a short query's aisfx front-end and network
        # run in numpy, the store's in scipy and torch (up to ~1e-4 apart, tests/test_aisfx_numpy.py);
        # another file's features are ~0.1-1 off.
        if np.allclose(store.features()[rows], feats, rtol=1e-3, atol=1e-3):
            self_rows = rows
    return QueryFeatures(path, list(ff.segments), feats, self_rows)


@dataclass(frozen=True)
class Scored:
    """One query's scores against every stored item (rows in store order), its own rows as itself."""

    level: np.ndarray  # (N,)
    expected: np.ndarray  # (N,)
    closeness: np.ndarray  # (N,)
    acoustic: np.ndarray  # (N,)
    probs: np.ndarray  # (N, C, 3)
    states: np.ndarray  # (N, C)
    is_self: np.ndarray  # (N,) bool: the query's own items


def scored_items(scores: ScoreMatrix, self_rows: np.ndarray | None, c: int) -> Scored:
    """The first (aggregated) query row of `scores`, with the query's own rows as itself."""
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
    is_self = np.zeros(level.shape[0], dtype=bool)
    if self_rows is not None:
        is_self[self_rows] = True
    return Scored(level, expected, closeness, acoustic, probs, states, is_self)
