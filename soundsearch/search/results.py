"""What a search returns (ScoreMatrix, Result, SearchResults), what a stored query is
(StoredQuery), and `rank`, the presence model's own order of scored items."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundsearch.errors import SearchError

if TYPE_CHECKING:
    from soundsearch.search.query import Scored
    from soundsearch.store import ItemRecord
    from soundsearch.taxonomy import Taxonomy


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
    # Where the query's own sound was found inside this item's recording (search.contains): the
    # place's (start, end) seconds in the file, finer than the item, and its score; None elsewhere.
    located: tuple[float, float] | None = None
    contains: float | None = None
    # With group_by="file": this file's distinct moments (non-overlapping items) that rank
    # above the best item of the first file left out; 1 otherwise.
    moments: int = 1

    @property
    def moment(self) -> tuple[float, float]:
        """(start, end) seconds of the matched moment in its file: where the query's sound was
        located inside it when it was (`located`), else the item's own range."""
        return self.located if self.located is not None else (self.item.start, self.item.end)


def _place(located, row: int) -> dict:
    if located is None or np.isnan(located.score[row]):
        return {}
    return {"located": (float(located.start[row]), float(located.end[row])), "contains": float(located.score[row])}


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
    # Items the candidate prefilter passed to the exact scoring (search.prefilter); None when
    # every item was scored. `matches` and `filter_effects` then count among the candidates.
    candidates: int | None = None
    # Hours of long recordings the query's own sound was not looked for inside (more than
    # constants.INSIDE_MAX_HOURS, and not asked for); None when they were searched or none exist.
    inside_skipped_hours: float | None = None


@dataclass(frozen=True)
class StoredQuery:
    """A query made of stored items (store rows), e.g. "more like this" on a result: their
    stored features are the query, and they count as the query's own items."""

    rows: tuple[int, ...]


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


def build_results(
    scored: Scored, order: np.ndarray, items, cand: np.ndarray, ordered, moments: dict, query_moment, sounds, located=None
) -> list[Result]:
    """The Results of store rows `order` (best first); `ordered` is the ranking's order of the
    candidate rows `cand` (ranking.order_items), `query_moment` the best query item per result,
    `sounds` the fingerprint similarity per store row (nan: not compared; None: none were),
    `located` where the query's sound is inside items (search.contains.Located, or None)."""
    s = scored
    n = s.level.shape[0]
    duplicate = np.zeros(n, dtype=bool)
    duplicate[cand] = ordered.duplicate
    rank_score = np.zeros(n, dtype=np.float64)
    rank_score[cand] = ordered.score
    return [
        Result(
            rank=i + 1,
            item=items[row],
            level=int(s.level[row]),
            score=float(s.expected[row]),
            closeness=float(s.closeness[row]),
            probs=s.probs[row].copy(),
            states=s.states[row].copy(),
            is_query=bool(s.is_self[row]),
            acoustic=float(s.acoustic[row]),
            rank_score=float(rank_score[row]),
            duplicate=bool(duplicate[row]),
            fingerprint=None if sounds is None or np.isnan(sounds[row]) else float(sounds[row]),
            query_moment=query_moment[i] if query_moment is not None else None,
            moments=moments.get(row, 1),
            **_place(located, row),
        )
        for i, row in enumerate(order.tolist())
    ]
