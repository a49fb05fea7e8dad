"""Balanced training pairs, as in the paper.

For every category and every recording taken as target: up to `per_side` partners in the same
situation for that category (both hold it, or both lack it) and up to `per_side` in the opposite
situation (exactly one holds it); fewer when the pool is smaller. Unordered duplicates (and self
pairs) are removed over all categories.

Two ways to draw the partners, both uniform for any one target and category:
- "shared" (default): each target gets ONE random order of the other recordings, and for every
  category takes the first `per_side` of each situation in that order. The categories then reuse
  partners, which is what makes the paper's count come out: 2,351 SONYC-UST recordings gave
  218,173 pairs, about 93 partners per target, where independent draws give ~900k.
- "independent": a fresh uniform draw per target and category (Floyd's algorithm, vectorised
  over targets), many more distinct pairs for the same coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soundsearch.presence import BOTH, DIFFERS, NEITHER, presence_targets
from soundsearch.training.config import SCHEMES  # with the recipe's other choices, numpy-free

PER_SIDE = 30


def _sample_subsets(rng: np.random.Generator, n_rows: int, pool: int, k: int) -> np.ndarray:
    """(n_rows, k) indices into range(pool), each row a uniform k-subset (Floyd's algorithm)."""
    k = min(k, pool)
    out = np.empty((n_rows, k), dtype=np.int64)
    for step, j in enumerate(range(pool - k, pool)):
        t = rng.integers(0, j + 1, size=n_rows)
        # Floyd: if t was already picked in this row, pick j instead (j is new for certain).
        seen = (out[:, :step] == t[:, None]).any(axis=1)
        out[:, step] = np.where(seen, j, t)
    return out


def _partners(rng: np.random.Generator, targets: np.ndarray, pool: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """(len(targets), <=k) partner recording indices for each target, drawn from `pool`.

    With exclude_self the targets are members of the (sorted) pool and must not pick themselves:
    sample from the pool minus one slot, then step over the target's own position.
    """
    if len(targets) == 0:
        return np.empty((0, 0), dtype=np.int64)
    size = len(pool) - 1 if exclude_self else len(pool)
    if size <= 0:
        return np.empty((len(targets), 0), dtype=np.int64)
    picks = _sample_subsets(rng, len(targets), size, k)
    if exclude_self:
        own = np.searchsorted(pool, targets)[:, None]
        picks = picks + (picks >= own)
    return pool[picks]


def make_pairs(labels: np.ndarray, per_side: int = PER_SIDE, seed: int = 0, scheme: str = "shared") -> np.ndarray:
    """(P, 2) int64 unordered pairs of row indices into `labels` (N, C), a < b, sorted.

    Reproducible: the same labels, per_side, seed and scheme give the same pairs.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (recordings, categories), got shape {labels.shape}")
    n, c = labels.shape
    if per_side < 1:
        raise ValueError("per_side must be at least 1")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    rng = np.random.default_rng(seed)
    if scheme == "shared":
        a, b = _shared_order(labels.astype(bool), per_side, rng)
    else:
        a, b = _independent(labels.astype(bool), per_side, rng)
    if a.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    return _dedupe(a, b, n)


def _independent(labels: np.ndarray, per_side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, c = labels.shape
    everyone = np.arange(n)
    firsts, seconds = [], []
    for cat in range(c):
        has = labels[:, cat]
        pos, neg = everyone[has], everyone[~has]
        for group, other in ((pos, neg), (neg, pos)):
            same = _partners(rng, group, group, per_side, exclude_self=True)
            opposite = _partners(rng, group, other, per_side, exclude_self=False)
            for partners in (same, opposite):
                if partners.size:
                    firsts.append(np.repeat(group, partners.shape[1]))
                    seconds.append(partners.reshape(-1))
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def _shared_order(labels: np.ndarray, per_side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per target one random order; per category the first `per_side` of each situation in it.

    Only a prefix of each order is scanned, in column chunks, until every category has found
    its partners; a situation whose whole pool is wanted (pool <= per_side) is added directly.
    """
    n = labels.shape[0]
    pos = labels.sum(0)
    firsts, seconds = _whole_pools(labels, per_side)
    block = max(1, min(n, (1 << 22) // max(n, 1)))
    for r0 in range(0, n, block):
        rows = np.arange(r0, min(n, r0 + block))
        order = _orders_target_last(rows, n, rng)
        _scan_orders(labels, pos, rows, order, per_side, firsts, seconds)
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def _whole_pools(labels: np.ndarray, per_side: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Situations small enough to be taken whole: pairs of everyone with that pool."""
    firsts, seconds = [], []
    for cat in range(labels.shape[1]):
        has = labels[:, cat]
        for group_has in (True, False):
            group = np.flatnonzero(has == group_has)
            other = np.flatnonzero(has != group_has)
            if 0 < len(group) - 1 <= per_side:  # same situation, minus the target itself
                firsts.append(np.repeat(group, len(group)))
                seconds.append(np.tile(group, len(group)))
            if 0 < len(other) <= per_side:
                firsts.append(np.repeat(group, len(other)))
                seconds.append(np.tile(other, len(group)))
    return firsts, seconds


def _orders_target_last(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(R, n): a random order of all n recordings per target row, the target itself last."""
    small = np.int16 if n < (1 << 15) else np.int32  # half the bytes to shuffle
    order = rng.permuted(np.tile(np.arange(n, dtype=small), (len(rows), 1)), axis=1)
    # Move each target to the end of its own order: the others stay in uniform random
    # order in the first n - 1 places, and no self test is needed while scanning.
    at = np.argmax(order == rows[:, None], axis=1)
    ri = np.arange(len(rows))
    order[ri, at] = order[:, -1]
    order[:, -1] = rows
    return order


def _scan_orders(labels: np.ndarray, pos: np.ndarray, rows: np.ndarray, order: np.ndarray, per_side: int,
                 firsts: list[np.ndarray], seconds: list[np.ndarray]) -> None:
    """Append to firsts/seconds each target's partners: per category the first `per_side` of
    each situation in its order, scanning ever wider column chunks until all are found."""
    n = labels.shape[0]
    lt = labels[rows]  # (R, C)
    same_pool = np.where(lt, pos, n - pos) - 1
    opp_pool = np.where(lt, n - pos, pos)
    # Pools taken whole above are not searched for.
    need_same = np.where(same_pool > per_side, per_side, 0).astype(np.int32)
    need_opp = np.where(opp_pool > per_side, per_side, 0).astype(np.int32)
    active = np.flatnonzero((need_same > 0).any(1) | (need_opp > 0).any(1))
    c0, width = 0, 128
    while active.size and c0 < n - 1:
        # Only the categories some row still searches for; common ones finish early.
        cats = np.flatnonzero((need_same[active] > 0).any(0) | (need_opp[active] > 0).any(0))
        cols = order[active, c0 : min(c0 + width, n - 1)]  # (A, W)
        lp = labels[:, cats][cols]  # (A, W, K)
        same = lp == lt[active][:, None, cats]
        rank_same = np.cumsum(same, axis=1, dtype=np.int16 if width < 32768 else np.int32)
        # opposite-situation rank = position + 1 - same-situation rank
        pos1 = np.arange(1, cols.shape[1] + 1, dtype=rank_same.dtype)[None, :, None]
        rank_opp = pos1 - rank_same
        ns, no = need_same[active][:, None, cats], need_opp[active][:, None, cats]
        take = np.where(same, rank_same <= ns, rank_opp <= no).any(axis=2)
        ai, wi = np.nonzero(take)
        firsts.append(rows[active][ai])
        seconds.append(cols[ai, wi].astype(np.int64))
        sub = need_same[active]
        sub[:, cats] -= np.minimum(rank_same[:, -1, :], sub[:, cats])
        need_same[active] = sub
        sub = need_opp[active]
        sub[:, cats] -= np.minimum(rank_opp[:, -1, :], sub[:, cats])
        need_opp[active] = sub
        still = (need_same[active] > 0).any(1) | (need_opp[active] > 0).any(1)
        active = active[still]
        c0 += cols.shape[1]
        width *= 2


def _dedupe(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    keep = a != b
    a, b = a[keep], b[keep]
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    keys = lo * n + hi
    if n * n <= 1 << 26:
        # A bitmap over all n^2 keys dedupes and sorts in linear time (np.unique's hashing
        # took ~0.8 s on paper-sized data).
        seen = np.zeros(n * n, dtype=bool)
        seen[keys] = True
        keys = np.flatnonzero(seen)
    else:
        keys.sort()
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    return np.stack([keys // n, keys % n], axis=1)


@dataclass
class PairSummary:
    pairs: int
    recordings: int
    # per category: pairs in state both / neither / differs
    both: list[int]
    neither: list[int]
    differs: list[int]

    def to_json(self) -> dict:
        return {"pairs": self.pairs, "recordings": self.recordings, "both": self.both,
                "neither": self.neither, "differs": self.differs}


def summarise_pairs(pairs: np.ndarray, labels: np.ndarray) -> PairSummary:
    """Counts of each presence state per category over a pair set (to report balance)."""
    labels = np.asarray(labels)
    targets = presence_targets(labels[pairs[:, 0]], labels[pairs[:, 1]]) if len(pairs) else np.zeros((0, labels.shape[1]), np.int64)
    count = lambda s: (targets == s).sum(axis=0).astype(int).tolist()  # noqa: E731
    used = np.unique(pairs).size if len(pairs) else 0
    return PairSummary(pairs=int(len(pairs)), recordings=int(used), both=count(BOTH),
                       neither=count(NEITHER), differs=count(DIFFERS))
