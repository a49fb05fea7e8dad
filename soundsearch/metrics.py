"""Retrieval metrics of the paper: r(i, q), AP_s@K, mAP_s@K, and the exact random baseline.

Everything works on many queries at once: a ranking is a (Q, M) array of database row indices,
best first, and the per-query figures come back as (Q, len(ks)) arrays so that callers can
average over any group of queries (single-label, multi-label, ...).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 30, 50, 100)


def agreement(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """r(i, q): on how many categories each query and database item agree, as (Q, N) ints.

    Agreement counts both "both present" and "both absent", as the paper's similarity level.
    """
    q = np.asarray(query_labels, dtype=bool)
    d = np.asarray(db_labels, dtype=bool)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"label arrays must be (Q, C) and (N, C) with the same C, got {q.shape} and {d.shape}")
    c = q.shape[1]
    # disagreements = |q xor d| = |q| + |d| - 2 |q and d|; a matrix product keeps it O(QNC) in BLAS.
    qf = q.astype(np.float32)
    df = d.astype(np.float32)
    both = qf @ df.T
    differ = qf.sum(1, keepdims=True) + df.sum(1)[None, :] - 2.0 * both
    return (c - np.rint(differ)).astype(np.int16)


def _check_ks(ks: Sequence[int]) -> np.ndarray:
    arr = np.asarray(list(ks), dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0 or (arr < 1).any():
        raise ValueError(f"K values must be positive integers, got {list(ks)}")
    return arr


def average_precision(hits: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> np.ndarray:
    """AP@K for ranked hit indicators (Q, M), best first, for every K: returns (Q, len(ks)).

    AP@K = (1 / hits@K) * sum_{n<=K} hit_n * precision@n, and 0 when the top K holds no hit.
    A K beyond the ranking's length M uses the whole ranking (there are no further items).
    """
    karr = _check_ks(ks)
    h = np.asarray(hits, dtype=bool)
    if h.ndim != 2:
        raise ValueError(f"hits must be (Q, M), got shape {h.shape}")
    q, m = h.shape
    if m == 0:
        return np.zeros((q, karr.size))
    cum = np.cumsum(h, axis=1, dtype=np.float64)
    precision_terms = np.where(h, cum / np.arange(1, m + 1), 0.0)
    cum_terms = np.cumsum(precision_terms, axis=1)
    idx = np.minimum(karr, m) - 1
    num = cum_terms[:, idx]
    den = cum[:, idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1.0), 0.0)


def ranked_hits(agree: np.ndarray, order: np.ndarray, threshold: int) -> np.ndarray:
    """Hit indicators (Q, M) of a ranking `order` (database rows, best first) at threshold s."""
    ranked = np.take_along_axis(np.asarray(agree), np.asarray(order), axis=1)
    return ranked >= threshold


def ap_at_k(
    agree: np.ndarray, order: np.ndarray, threshold: int, ks: Sequence[int] = DEFAULT_KS
) -> np.ndarray:
    """Per-query AP_s@K (Q, len(ks)) of ranking `order` given the true agreement matrix."""
    karr = _check_ks(ks)
    # Only the first max(K) positions can matter, so rankings may be truncated there.
    order = np.asarray(order)[:, : int(karr.max())]
    return average_precision(ranked_hits(agree, order, threshold), karr)


def mean_ap(per_query: np.ndarray) -> np.ndarray:
    """mAP over queries (rows); NaN for an empty group rather than a made-up number."""
    per_query = np.asarray(per_query, dtype=np.float64)
    if per_query.shape[0] == 0:
        return np.full(per_query.shape[1:], np.nan)
    return per_query.mean(axis=0)


def expected_random_ap(n_items: int, n_hits: int, k: int) -> float:
    """Exact E[AP@K] when the N database items are ranked in uniformly random order.

    With h hits in the top K (hypergeometric: H hits among N, K drawn), the hit positions
    within the top K are a uniform h-subset of 1..K, so P(hit at n) = h/K and
    P(hit at i | hit at n) = (h-1)/(K-1) for i != n. Then
        E[sum_n hit_n * cum_n / n | h] = (h/K) * sum_n [1 + (n-1)(h-1)/(K-1)] / n
    and dividing by h gives E[AP | h] = (1/K) * [H_K + (h-1)/(K-1) * (K - H_K)],
    H_K the K-th harmonic number. AP = 0 when h = 0. Summing over h with the hypergeometric
    weights gives the exact expectation.
    """
    if n_items < 0 or not 0 <= n_hits <= n_items:
        raise ValueError(f"need 0 <= hits <= items, got hits={n_hits}, items={n_items}")
    if k < 1:
        raise ValueError(f"K must be positive, got {k}")
    return _expected_random_ap(int(n_items), int(n_hits), int(min(k, n_items)))


@lru_cache(maxsize=65536)
def _expected_random_ap(n: int, hits: int, k: int) -> float:
    if hits == 0 or k == 0:
        return 0.0
    if hits == n:
        return 1.0
    harmonic = math.fsum(1.0 / i for i in range(1, k + 1))
    total = math.comb(n, k)
    acc = []
    for h in range(max(1, k - (n - hits)), min(hits, k) + 1):
        # Exact integer weights; int / int gives a correctly rounded float even for huge values.
        weight = math.comb(hits, h) * math.comb(n - hits, k - h) / total
        if k == 1:
            cond = 1.0
        else:
            cond = (harmonic + (h - 1) / (k - 1) * (k - harmonic)) / k
        acc.append(weight * cond)
    return math.fsum(acc)


def random_ap(agree: np.ndarray, threshold: int, ks: Sequence[int] = DEFAULT_KS) -> np.ndarray:
    """Exact expected AP_s@K per query (Q, len(ks)) of a uniformly random ranking."""
    karr = _check_ks(ks)
    agree = np.asarray(agree)
    n = agree.shape[1]
    n_hits = (agree >= threshold).sum(axis=1)
    out = np.empty((agree.shape[0], karr.size))
    for qi, h in enumerate(n_hits):
        for ki, k in enumerate(karr):
            out[qi, ki] = expected_random_ap(n, int(h), int(k))
    return out
