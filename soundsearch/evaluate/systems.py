"""The systems an evaluation ranks the database with, and how a ranking is scored: the model
through the search engine, the exact random baseline, cosine baselines."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from soundsearch import metrics


def query_groups(query_labels: np.ndarray) -> dict[str, np.ndarray]:
    n = np.asarray(query_labels).sum(axis=1)
    return {
        "single": np.flatnonzero(n == 1),
        "multi": np.flatnonzero(n >= 2),
        "none": np.flatnonzero(n == 0),
    }


def top_order(scores: np.ndarray, top: int) -> np.ndarray:
    """Rows of the `top` highest scores per query, best first; ties keep database order."""
    scores = np.asarray(scores)
    n = scores.shape[1]
    top = min(top, n)
    if top >= n or top * 4 > n:
        return np.argsort(-scores, axis=1, kind="stable")[:, :top]
    out = np.empty((scores.shape[0], top), dtype=np.int64)
    # Everything tied with the top-th score is a candidate, so ties at the cut-off are broken
    # by row exactly as a full stable sort would.
    kth = -np.partition(-scores, top - 1, axis=1)[:, top - 1]
    for q in range(scores.shape[0]):
        cand = np.flatnonzero(scores[q] >= kth[q])
        out[q] = cand[np.argsort(-scores[q, cand], kind="stable")[:top]]
    return out


def pooled(feats: np.ndarray, mean: np.ndarray, std: np.ndarray, stats: Sequence[str] = ("mean",)) -> np.ndarray:
    """Standardise (N, T, D) features per dimension, then summarise over T into one vector."""
    z = (np.asarray(feats, dtype=np.float32) - mean) / std
    parts = []
    for s in stats:
        if s == "mean":
            parts.append(z.mean(axis=1))
        elif s == "std":
            parts.append(z.std(axis=1))
        elif s == "max":
            parts.append(z.max(axis=1))
        else:
            raise ValueError(f"unknown statistic {s!r}")
    return np.concatenate(parts, axis=1)


def cosine_scores(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return unit(queries) @ unit(database).T


def feature_norm(db_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension statistics over every frame of the database (the training side)."""
    flat = np.asarray(db_feats, dtype=np.float64).reshape(-1, db_feats.shape[-1])
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def score_per_query(agree: np.ndarray, order: np.ndarray, thresholds, ks) -> dict[int, np.ndarray]:
    return {int(s): metrics.ap_at_k(agree, order, int(s), ks) for s in thresholds}


def random_per_query(agree: np.ndarray, thresholds, ks) -> dict[int, np.ndarray]:
    return {int(s): metrics.random_ap(agree, int(s), ks) for s in thresholds}


def model_order(model, store, db_rows: np.ndarray, query_feats: np.ndarray, top: int, mode=None) -> np.ndarray:
    """The model's ranking of the database rows `db_rows` (store rows) for each query.

    Goes through the search engine's `score_all` and ranking.order_items with the model's
    recorded ranking mode (or `mode`), the code path `query` uses, so eval measures what users
    get. Returns positions into `db_rows`, best first.

    The acoustic standardisation is the whole store's, as `query` uses it; with a store that
    holds the queries too, that includes them.
    """
    from soundsearch.search.ranking import order_items, resolve_ranking
    from soundsearch.search.engine import SearchEngine

    ranking = resolve_ranking(model, mode)
    # A throwaway model (a --variants one) gains nothing from an on-disk database cache.
    engine = SearchEngine(store, model, persist=model.path is not None)
    scores = engine.score_all(np.asarray(query_feats, dtype=np.float32), rows=np.asarray(db_rows))
    top = min(top, len(db_rows))
    c = len(model.taxonomy)
    return np.stack(
        [
            order_items(ranking, scores.level[q], scores.expected[q], scores.closeness[q], scores.acoustic[q], c, k=top).order
            for q in range(scores.level.shape[0])
        ]
    )


def item_stats_scores(featurizer, query_feats: np.ndarray, db_feats: np.ndarray) -> np.ndarray:
    """Cosine of whole-item statistics (Featurizer.item_stats), standardised on the database
    side: the acoustic similarity the ranking modes use, as a baseline of its own."""
    from soundsearch.search.ranking import acoustic_norm, acoustic_vectors

    d = featurizer.item_stats(db_feats)
    mean, std = acoustic_norm(d)
    return acoustic_vectors(featurizer.item_stats(query_feats), mean, std) @ acoustic_vectors(d, mean, std).T
