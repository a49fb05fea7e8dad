"""Exact results from an approximate scan: which items a search re-scores from float32 rows.

A compact cache (cache.COMPACT_DTYPES) scans every item with 16-bit halves, and a float32
cache's fast scan (SearchEngine.fast_scan) multiplies in bfloat16, so their presence scores
(level, expected, probabilities) carry an error; closeness and the acoustic cosine are exact.
A search then re-scores in float32 (SearchEngine.score_all(recompute=True): rows recomputed
from the stored features for a compact cache, the cache's own rows for a float32 one) every
item whose exact score could place it among what the search shows, and no other; the results
are then the float32 engine's.

"Could": the error of an approximate score is bounded by SAFETY times the largest error seen
on the items re-scored so far (at least FIRST of them, the best by the approximate score), per
item as

    expected     + SAFETY * max |expected error|
    level        + the categories whose "differs" leads the other states by less than
                   2 * SAFETY * max |probability error| (the category could turn to agree)
    filters      a category within that margin of another state could change state

and the ranking mode's score (ranking.rank_score) of that bound. Items are re-scored, best
bound first, until the W-th best exact score among the re-scored items of the mode's plain
order (W: what moments.choose_rows looks at) beats every bound left; the query's own items,
the items holding its sound, and the near-duplicate tiers' items (by acoustic cosine, exact)
are re-scored as such. Counts over the whole store (matches, filter effects) take the
approximate states of the items not re-scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from soundsearch.constants import DUPLICATE_COSINE
from soundsearch.presence import DIFFERS
from soundsearch.search.filters import apply_filters
from soundsearch.search.ranking import rank_score

if TYPE_CHECKING:
    from soundsearch.search.engine import SearchEngine
    from soundsearch.search.results import ScoreMatrix

# Error bounds: this many times the largest error seen on the items re-scored.
SAFETY = 2.0
# Items re-scored first (the best by approximate score), whatever the search shows: the
# first measure of the error.
FIRST = 128


def _states_and_lead(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, 3) probabilities -> each category's state (argmax, ties to the first) and the
    lead of its probability over the second's, by state columns (numpy's reductions over an
    axis of 3 cost 5x more)."""
    a, b, c = p[..., 0], p[..., 1], p[..., 2]
    ab = np.maximum(a, b)
    hi = np.maximum(ab, c)
    second = np.maximum(np.minimum(a, b), np.minimum(ab, c))
    states = (b > a).astype(np.int64)
    states[c > ab] = 2
    return states, hi - second


def _best(pos: np.ndarray, score: np.ndarray, count: int) -> np.ndarray:
    """The `count` positions of `pos` with the highest score (any order)."""
    if pos.size <= count:
        return pos
    return pos[np.argpartition(-score[pos], count - 1)[:count]]


class Refiner:
    """Re-scores items of a compact scan's aggregated ScoreMatrix in place (positions into the
    search's rows) until the search's top is exact."""

    def __init__(self, engine: "SearchEngine", scores: "ScoreMatrix", feats, rows, ranking, filters,
                 include_self: bool, self_pos, contains, n_categories: int):
        self.engine, self.scores, self.feats, self.rows = engine, scores, feats, rows
        self.ranking, self.filters, self.include_self, self.c = ranking, filters, include_self, n_categories
        n = scores.level.shape[1]
        p = scores.probs[0]
        self.approx_expected = scores.expected[0].copy()
        self.approx_probs = p.copy()
        # Per item and category, from the approximate probabilities: the state and its lead
        # over the second (inf once exact: an exact state does not change).
        self.states, self.lead = _states_and_lead(p)
        self.exact = np.zeros(n, dtype=bool)
        self.is_self = np.zeros(n, dtype=bool)
        if self_pos is not None:
            self.is_self[self_pos] = True
        self.held = np.zeros(n, dtype=bool) if contains is None else ~np.isnan(contains)
        best = scores.acoustic_best
        self.cosine = (scores.acoustic if best is None else best)[0]
        self.err_expected = 0.0
        self.err_prob = 0.0
        self.rescored = 0  # items re-scored, for the record

    def rescore(self, pos: np.ndarray) -> None:
        """Re-score these positions from float32 rows (those not yet exact)."""
        pos = np.unique(np.asarray(pos, dtype=np.int64))
        pos = pos[~self.exact[pos]]
        if pos.size == 0:
            return
        store_rows = pos if self.rows is None else self.rows[pos]
        ex = self.engine.score_all(self.feats, probs=True, aggregate=True, rows=store_rows, recompute=True)
        s = self.scores
        s.level[0, pos] = ex.level[0]
        s.expected[0, pos] = ex.expected[0]
        s.probs[0, pos] = ex.probs[0]
        self.states[pos] = _states_and_lead(ex.probs[0])[0]
        self.lead[pos] = np.inf
        self.err_expected = max(self.err_expected, float(np.abs(ex.expected[0] - self.approx_expected[pos]).max()))
        self.err_prob = max(self.err_prob, float(np.abs(ex.probs[0] - self.approx_probs[pos]).max()))
        self.exact[pos] = True
        self.rescored += int(pos.size)

    def _keep(self, level) -> np.ndarray:
        return apply_filters(self.filters, self.states, level, self.is_self, self.include_self)[0]

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(each item's rank score, or its upper bound where not exact; whether it could pass
        the filters)."""
        s = self.scores
        near = self.lead < 2 * SAFETY * self.err_prob  # never for exact items (inf)
        could_agree = np.count_nonzero(near & (self.states == DIFFERS), axis=-1)
        level = np.minimum(s.level[0] + could_agree, self.c)
        expected = s.expected[0] + np.where(self.exact, 0.0, SAFETY * self.err_expected)
        score = rank_score(self.ranking, level, expected, s.acoustic[0], self.c)
        return score, self._keep(level) | near.any(-1)

    def _walk(self, order: np.ndarray, count: int) -> None:
        """Re-score `order`'s positions from the first on until `count` of them pass the filters
        exactly (or none is left)."""
        step = max(2 * count, 32)
        for start in range(0, order.size, step):
            self.rescore(order[start : start + step])
            seen = order[: start + step]
            if np.count_nonzero(self._keep(self.scores.level[0])[seen] & ~self.is_self[seen]) >= count:
                return

    def settle(self, want: int) -> None:
        """Make exact every item that could be among the `want` best of the mode's plain order,
        and what the tiers before it show."""
        from soundsearch.search.fingerprint import CANDIDATE_COSINE, CANDIDATES

        n = self.exact.size
        self.rescore(np.flatnonzero(self.is_self | self.held))
        if not self.exact.any() or self.rescored < min(FIRST, n):
            score, could = self._bounds()
            first = np.flatnonzero(could & ~self.exact)
            self.rescore(_best(first, score, FIRST))
        # The tiers before the plain order: near-duplicates by acoustic cosine, and the
        # fingerprint's candidates (search.fingerprint.compare_candidates).
        by_cos = np.flatnonzero(self.cosine >= CANDIDATE_COSINE)
        by_cos = by_cos[np.argsort(-self.cosine[by_cos], kind="stable")]
        self._walk(by_cos, CANDIDATES)
        dups = by_cos[self.cosine[by_cos] >= DUPLICATE_COSINE]
        self._walk(dups, want)
        special = self.is_self | self.held | (self.cosine >= CANDIDATE_COSINE)
        while True:
            score, could = self._bounds()
            plain = np.flatnonzero(self.exact & could & ~special)
            if plain.size >= want:
                theta = np.partition(score[plain], plain.size - want)[plain.size - want]
            else:
                theta = -np.inf
            left = np.flatnonzero(~self.exact & could & (score >= theta))
            if left.size == 0:
                return
            take = max(int(np.count_nonzero(self.exact)), FIRST)
            self.rescore(_best(left, score, take))
            if self.exact.all():
                return
