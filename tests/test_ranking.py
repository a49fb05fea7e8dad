"""Ranking modes, the acoustic cosine, the recorded blend weight and its fitting."""

from __future__ import annotations

import numpy as np
import pytest

from test_search import FZ, make_model, queries
from soundsearch.errors import SearchError
from soundsearch.model.checkpoint import load_model
from soundsearch.model.registry import read_header
from soundsearch.search.blend_weight import fit_ranking_weight
from soundsearch.search.ranking import Ranking, RankingMode, order_items, set_ranking
from soundsearch.search.engine import SearchEngine
from test_search import store  # noqa: F401  (fixture)


def test_blend_orders_by_weighted_expected_and_acoustic():
    level = np.array([8, 2, 5, 5], dtype=np.int16)
    expected = np.array([8.0, 2.0, 4.0, 4.0], dtype=np.float32)
    closeness = np.zeros(4, np.float32)
    acoustic = np.array([0.0, 0.88, 0.5, 0.6], dtype=np.float32)  # all below DUPLICATE_COSINE
    # w = 0.5: scores 0.5, 0.565, 0.5, 0.55 -> rows 1, 3, then the tie 0/2 by row.
    got = order_items(Ranking(RankingMode.BLEND, 0.5), level, expected, closeness, acoustic, 8)
    assert got.order.tolist() == [1, 3, 0, 2]
    np.testing.assert_allclose(got.score, [0.5, 0.565, 0.5, 0.55], rtol=1e-6)
    assert order_items(Ranking(RankingMode.BLEND, 0.0), level, expected, closeness, acoustic, 8).order.tolist() == [0, 2, 3, 1]
    assert order_items(Ranking(RankingMode.PRESENCE), level, expected, closeness, acoustic, 8, k=2).order.tolist() == [0, 2]
    # A near-duplicate jumps ahead of everything but the query's own items.
    acoustic[2] = 0.99
    own = np.array([False, False, False, True])
    got = order_items(Ranking(RankingMode.PRESENCE), level, expected, closeness, acoustic, 8, is_query=own)
    assert got.order.tolist() == [3, 2, 0, 1] and got.duplicate.tolist() == [False, False, True, False]


def test_acoustic_mode_is_cosine_of_standardised_item_stats(store, model_file):
    engine = SearchEngine(store, model_file)
    q = queries(1, seed=9)[0]
    res = engine.search(q, k=37, mode="acoustic")
    # Independently: the store's whole-item stats standardised over the store, floored std.
    stats = FZ.item_stats(np.asarray(store.features())).astype(np.float64)
    mean, std = stats.mean(0), stats.std(0)
    std = np.maximum(std, 0.05 * np.median(std[std > 0]))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    cos = unit((stats - mean) / std) @ unit((FZ.item_stats(q[None])[0] - mean) / std)
    assert [r.item.row for r in res.results] == np.lexsort((np.arange(37), -cos)).tolist()
    np.testing.assert_allclose([r.acoustic for r in res.results], np.sort(cos)[::-1], atol=1e-5)
    assert res.mode == "acoustic" and res.weight is None


def test_presence_is_the_default_without_a_recorded_ranking(store, model_file):
    engine = SearchEngine(store, model_file)
    q = queries(1, seed=3)[0]
    assert engine.search(q, k=5).mode == "presence"
    with pytest.raises(SearchError, match="no fitted blend weight"):
        engine.search(q, k=5, mode="blend")
    with pytest.raises(SearchError, match="unknown ranking mode"):
        engine.search(q, k=5, mode="loud")


def test_set_ranking_round_trips_and_blend_uses_the_weight(store, model_file):
    entry = set_ranking(model_file.path, "blend", 0.35, note="fitted on scenes", fitted_on="12 items")
    assert entry == {"mode": "blend", "weight": 0.35, "note": "fitted on scenes", "fitted_on": "12 items"}
    assert read_header(model_file.path)["meta"]["ranking"] == entry
    again = load_model(model_file.path)
    assert again.meta["seed"] == 0  # the rest of the header kept
    res = SearchEngine(store, again).search(queries(1, seed=3)[0], k=37)
    assert res.mode == "blend" and res.weight == 0.35
    want = [0.65 * r.score / 8 + 0.35 * r.acoustic for r in res.results]
    np.testing.assert_allclose([r.rank_score for r in res.results], want, atol=1e-6)
    assert [r.rank_score for r in res.results] == sorted((r.rank_score for r in res.results), reverse=True)


def test_fit_ranking_weight_reports_every_grid_point(store, model_file):
    feats = np.asarray(store.features())
    rng = np.random.default_rng(0)
    labels = (rng.random((feats.shape[0], 8)) < 0.3).astype(np.uint8)
    fit = fit_ranking_weight(model_file, feats, labels, FZ, grid=(0.0, 0.5, 1.0))
    assert list(fit.figures) == [0.0, 0.5, 1.0] and fit.items == 37
    assert fit.weight == max(fit.figures, key=lambda w: (fit.figures[w], -w))
    assert all(0.0 <= v <= 1.0 for v in fit.figures.values())
    assert set(fit.cells[0.0]) == {"single s=8", "single s=7", "multi s=8", "multi s=7"}


@pytest.fixture
def model_file(tmp_path):
    return make_model(tmp_path / "m.safetensors")


def test_fingerprints_decide_duplicates_where_the_sounds_were_compared():
    level = np.array([3, 3, 3, 3, 3])
    expected = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    closeness = np.zeros(5)
    # Row 0: acoustically close but another take (fingerprint 0.3); row 1: a slowed copy the
    # acoustic cosine misses (0.5) but its time course matches; row 2: never compared, close.
    acoustic = np.array([0.97, 0.5, 0.93, 0.1, 0.2])
    fingerprint = np.array([0.3, 0.97, np.nan, np.nan, np.nan])
    got = order_items(Ranking(RankingMode.ACOUSTIC), level, expected, closeness, acoustic, 8, fingerprint=fingerprint)
    assert got.duplicate.tolist() == [False, True, True, False, False]
    # Duplicates first, by fingerprint where known, else acoustic cosine; then the mode's order.
    assert got.order.tolist() == [1, 2, 0, 4, 3]
    without = order_items(Ranking(RankingMode.ACOUSTIC), level, expected, closeness, acoustic, 8)
    assert without.duplicate.tolist() == [True, False, True, False, False]
