"""The candidate prefilter: recall of the exact top 10 on a clustered store, --exact equal to
the exact engine, the index file rebuilt when damaged or stale, the query's own items first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from soundsearch import constants
from soundsearch.cli import app
from soundsearch.errors import SearchError
from soundsearch.model.checkpoint import load_model
from soundsearch.search.engine import SearchEngine
from soundsearch.search.prefilter import index_path, predictor_path
from soundsearch.search.ranking import order_items, resolve_ranking, set_ranking
from soundsearch.search.results import StoredQuery
from soundsearch.store import Store
from test_search import FZ, D, T, make_model, write_items

SOURCES = 12


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Items drawn around SOURCES source templates (some mixed with a second source), in the
    test model's feature scale: the structure a prefilter can exploit, as real libraries'
    several takes of a source have."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(99).normal(0, 1.5, (SOURCES, T, D))
    a, b = rng.integers(0, SOURCES, n), rng.integers(0, SOURCES, n)
    mix = (rng.random(n) < 0.3)[:, None, None] * 0.6
    x = templates[a] + mix * templates[b] + rng.normal(0, 0.4, (n, 1, D)) + rng.normal(0, 0.5, (n, T, D))
    return (x * 3 - 20).astype(np.float32)


@pytest.fixture
def big(tmp_path: Path):
    store = Store.open(tmp_path / "store", create=True, featurizer=FZ)
    write_items(store, clustered(600))
    model = make_model(tmp_path / "m.safetensors")
    # The shipped default model's ranking: blend, mostly acoustic.
    set_ranking(model.path, "blend", 0.75)
    yield store, load_model(model.path)
    store.close()


def _exact_top(engine, q, mode, k=10):
    scores = engine.score_all(q, aggregate=True)
    ranking = resolve_ranking(engine.model, mode)
    return order_items(ranking, scores.level[0], scores.expected[0], scores.closeness[0], scores.acoustic[0],
                       len(engine.taxonomy), k=k).order


@pytest.mark.parametrize("mode", ["blend", "acoustic"])
def test_prefilter_recalls_the_exact_top_10(big, mode):
    store, model = big
    engine = SearchEngine(store, model)
    queries = clustered(20, seed=7)
    recall = []
    for q in queries:
        got = engine.search(q, k=10, mode=mode, candidates=60)
        assert got.candidates is not None and got.candidates <= 60
        want = _exact_top(engine, q, mode)
        recall.append(np.isin(want, [r.item.row for r in got.results]).mean())
    assert np.mean(recall) >= 0.95


@pytest.mark.parametrize("mode", ["blend", "acoustic"])
def test_presence_predictor_recalls_the_top_10_with_fewer_candidates(big, mode):
    store, model = big
    engine = SearchEngine(store, model)
    recall = []
    for q in clustered(20, seed=7):
        got = engine.search(q, k=10, mode=mode, candidates=30)
        assert got.candidates is not None and got.candidates <= 30
        want = _exact_top(engine, q, mode)
        recall.append(np.isin(want, [r.item.row for r in got.results]).mean())
    assert engine.prefilter().built == ["predictor"]  # no HNSW index needed
    assert np.mean(recall) >= 0.95


def test_self_presence_of_every_item_matches_the_query_side(big):
    store, model = big
    engine = SearchEngine(store, model)
    feats = store.features()
    got = engine.self_presence_rows(0, 600)
    for i in (0, 17, 599):
        np.testing.assert_allclose(got[i], engine.self_presence(feats[i : i + 1]), atol=1e-5)
    pre = engine.prefilter()
    m = pre.predictor()
    c = len(engine.taxonomy)
    assert m.dtype == np.int8 and m.shape == (600, c + engine.acoustic_width + 4)
    # Self-presence in steps of 1/127; the acoustic vector to half a step of its row's scale.
    np.testing.assert_allclose(m[:, :c] / 127.0, got, atol=0.5 / 127 + 1e-6)
    acoustic = engine.acoustic_matrix()
    scales = pre.acoustic_scales()
    np.testing.assert_allclose(scales, np.abs(acoustic).max(1) / 127, rtol=1e-6)
    err = np.abs(m[:, c:-4] * scales[:, None] - acoustic)
    assert (err <= 0.5 * scales[:, None] * (1 + 1e-5)).all()
    # So the predicted cosine is within a percent or two of the exact one.
    cos = (m[:, c:-4] * scales[:, None]) @ acoustic[0]
    np.testing.assert_allclose(cos, acoustic @ acoustic[0], atol=0.02)


def test_damaged_predictor_is_rebuilt(big):
    store, model = big
    engine = SearchEngine(store, model)
    q = clustered(1, seed=4)[0]
    want = [r.item.row for r in engine.search(q, candidates=50).results]
    path = predictor_path(engine.cache_path())
    assert engine.prefilter().built == ["predictor"] and path.is_file()
    again = SearchEngine(store, model)
    assert [r.item.row for r in again.search(q, candidates=50).results] == want
    assert again.prefilter().built == []  # read back
    del engine, again
    for damage in (b"not a matrix", path.read_bytes()[: path.stat().st_size // 2]):
        path.write_bytes(damage)
        fresh = SearchEngine(store, model)
        assert [r.item.row for r in fresh.search(q, candidates=50).results] == want
        assert fresh.prefilter().built == ["predictor"]
        del fresh


def test_exact_equals_the_engine_and_is_the_default_below_the_threshold(big, monkeypatch):
    store, model = big
    engine = SearchEngine(store, model)
    q = clustered(1, seed=3)[0]
    exact = engine.search(q, k=10, exact=True)
    assert exact.candidates is None
    assert [r.item.row for r in exact.results] == _exact_top(engine, q, None).tolist()
    below = engine.search(q, k=10)  # 600 items: under PREFILTER_MIN_ITEMS
    assert below.candidates is None and [r.item.row for r in below.results] == [r.item.row for r in exact.results]
    monkeypatch.setattr(constants, "PREFILTER_MIN_ITEMS", 100)
    monkeypatch.setattr(constants, "PREFILTER_CANDIDATES", 80)
    monkeypatch.setattr(constants, "PREFILTER_SHARE", 0.5)
    auto = engine.search(q, k=10)
    # The presence predictor scores PREFILTER_CANDIDATES at any size; only the acoustic index's
    # count grows with the store (PREFILTER_SHARE).
    assert auto.candidates is not None and auto.candidates <= 80
    engine.prefilter_predictor = "acoustic"
    assert engine.search(q, k=10).candidates > 200
    engine.prefilter_predictor = "presence"
    assert engine.search(q, k=10, exact=True).candidates is None
    # The presence order is predicted poorly: scanned in full unless candidates are asked for.
    assert engine.search(q, k=10, mode="presence").candidates is None
    assert engine.search(q, k=10, mode="presence", candidates=50).candidates is not None
    with pytest.raises(SearchError, match="either"):
        engine.search(q, exact=True, candidates=5)
    with pytest.raises(SearchError, match="at least 1"):
        engine.search(q, candidates=0)


def test_own_items_stay_first_and_narrow_filters_fall_back_to_every_item(big):
    store, model = big
    engine = SearchEngine(store, model)
    own = [r.row for r in store.items() if r.path.name == "f010.wav"]
    got = engine.search(StoredQuery(rows=own), k=8, candidates=20)
    assert got.candidates is not None
    shown = [r.item.row for r in got.results]
    assert sorted(shown[: len(own)]) == own and all(r.is_query for r in got.results[: len(own)])
    assert shown == [r.item.row for r in engine.search(StoredQuery(rows=own), k=8, exact=True).results]
    # Candidates that cannot fill k results (narrow filters, or k above the count): every
    # item is scored then.
    wide = engine.search(StoredQuery(rows=own), k=30, candidates=20, include_self=False)
    assert wide.candidates is None and len(wide.results) == 30


def test_damaged_index_is_rebuilt(big):
    store, model = big
    engine = SearchEngine(store, model)
    engine.prefilter_predictor = "acoustic"  # the HNSW index's candidates
    q = clustered(1, seed=4)[0]
    want = [r.item.row for r in engine.search(q, candidates=50).results]
    assert engine.prefilter().built == ["acoustic"]
    path = index_path(engine.cache_path(), "acoustic")
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    again = SearchEngine(store, model)
    again.prefilter_predictor = "acoustic"
    assert [r.item.row for r in again.search(q, candidates=50).results] == want
    assert again.prefilter().built == []  # read back
    del engine, again  # drop their memory maps before the file is replaced
    for damage in (b"not an index", path.read_bytes()[: path.stat().st_size // 2]):
        path.write_bytes(damage)
        fresh = SearchEngine(store, model)
        fresh.prefilter_predictor = "acoustic"
        got = [r.item.row for r in fresh.search(q, candidates=50).results]
        assert fresh.prefilter().built == ["acoustic"]
        # Built on several threads, a graph's insertion order varies: the same items, near enough.
        assert np.isin(want, got).mean() >= 0.8
        assert len(fresh.prefilter().index("acoustic")) == 600
        del fresh


def test_stale_index_is_rebuilt_after_the_store_changes(big):
    store, model = big
    engine = SearchEngine(store, model)
    q = clustered(1, seed=5)[0]
    engine.search(q, candidates=50)
    engine.prefilter().index("acoustic")
    old = index_path(engine.cache_path(), "acoustic")
    old_predictor = predictor_path(engine.cache_path())
    assert old_predictor.is_file()
    write_items(store, clustered(8, seed=11), name="new")
    grown = SearchEngine(store, model)
    got = grown.search(q, candidates=50)
    grown.prefilter().index("acoustic")
    new = index_path(grown.cache_path(), "acoustic")
    assert grown.prefilter().built == ["predictor", "acoustic"] and new != old
    assert new.is_file() and not old.exists()
    assert predictor_path(grown.cache_path()).is_file() and not old_predictor.exists()
    assert grown.prefilter().predictor().shape[0] == 608
    assert len(grown.prefilter().index("acoustic")) == 608
    assert got.items_searched == 608


def test_unwritable_cache_folder_still_prefilters(tmp_path, big):
    store, model = big
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    engine = SearchEngine(store, model, cache_dir=blocker / "cache")
    q = clustered(1, seed=6)[0]
    got = engine.search(q, candidates=50)
    assert got.candidates is not None and len(got.results) == 10


def test_cli_status_names_the_threshold_and_query_refuses_both_knobs(big, tmp_path, monkeypatch):
    store, model = big
    runner = CliRunner()
    res = runner.invoke(app, ["status", "--store", str(store.path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["prefilter_min_items"] == constants.PREFILTER_MIN_ITEMS and doc["prefilter"] is False
    assert doc["compact_cache_min_items"] == constants.COMPACT_CACHE_MIN_ITEMS and doc["cache_dtype"] == "float32"
    res = runner.invoke(app, ["status", "--store", str(store.path)])
    assert "prefilter" in res.stdout and f"{constants.PREFILTER_MIN_ITEMS:,}" in res.stdout
    wav = tmp_path / "q.wav"
    wav.write_bytes(b"")
    res = runner.invoke(app, ["query", str(wav), "--store", str(store.path), "--exact", "--candidates", "5"])
    assert res.exit_code != 0 and "--candidates" in res.output


def test_int8_predicted_scores_pick_the_float_predictions_best(big):
    """The int8 scan's candidates are, up to quantization, the float predictor's: the same
    formula in float64 over the unquantized presence and acoustic vectors."""
    store, model = big
    engine = SearchEngine(store, model)
    presence_i = engine.self_presence_rows(0, 600).astype(np.float64)
    acoustic_i = engine.acoustic_matrix().astype(np.float64)
    c, w = presence_i.shape[1], 0.75
    overlap = []
    for q in clustered(10, seed=11):
        pq = engine.self_presence(q[None]).astype(np.float64)
        aq = engine.acoustic_of(q[None], aggregate=True)[0].astype(np.float64)
        got = engine.prefilter().predicted(pq, aq, w, 60, duplicates=0)
        score = (1 - w) / c * (presence_i @ (2 * pq - 1)) + w * (acoustic_i @ aq)
        want = np.argsort(-score)[:60]
        assert got.shape == (60,) and np.all(np.diff(got) > 0)
        overlap.append(np.isin(want, got).mean())
    assert np.mean(overlap) >= 0.9 and min(overlap) >= 0.8


def test_large_stores_get_the_compact_cache_with_the_float32_results(big, monkeypatch):
    store, model = big
    q = clustered(1, seed=5)[0]
    small = SearchEngine(store, model)
    assert small.cache_dtype == "float32" and not small.compact
    want = [(r.item.row, r.level) for r in small.search(q, k=10, exact=True).results]
    monkeypatch.setattr(constants, "COMPACT_CACHE_MIN_ITEMS", 600)
    large = SearchEngine(store, model)
    assert large.cache_dtype == constants.COMPACT_CACHE_DTYPE and large.compact
    assert [(r.item.row, r.level) for r in large.search(q, k=10, exact=True).results] == want
    assert large.cache_path() != small.cache_path() and large.cache_path().is_file()
    assert SearchEngine(store, model, cache_dtype="float32").cache_dtype == "float32"  # asked for: kept
    doc = json.loads(CliRunner().invoke(app, ["status", "--store", str(store.path), "--json"]).stdout)
    assert doc["cache_dtype"] == constants.COMPACT_CACHE_DTYPE


def test_writing_an_index_drops_what_killed_writers_left(big):
    """The predictor and HNSW files are written through paths.TempFile like the search cache,
    so a temporary file whose writer died (unlocked) goes with the next write."""
    store, model = big
    engine = SearchEngine(store, model)
    engine.prepare()
    leftover = engine.cache_path().parent / ".prefilter-0123-predictor-v2.npy.abcdefgh.tmp"
    leftover.write_bytes(b"half a matrix")
    engine.search(clustered(1, seed=4)[0], candidates=50)
    assert engine.prefilter().built == ["predictor"] and predictor_path(engine.cache_path()).is_file()
    assert not leftover.exists()
    assert not list(engine.cache_path().parent.glob(".prefilter-*.tmp"))


@pytest.mark.parametrize("shape", ["normal", "ties", "ascending", "descending", "inf", "small", "skewed"])
@pytest.mark.parametrize("count", [1, 50, 1000, 20000])
def test_top_picks_the_highest_scores(shape, count):
    """The sampled cut (prefilter._top) returns what a full argpartition does: the `count`
    highest scores, each row once, whatever the order or ties of the scores."""
    from soundsearch.search.prefilter import _top

    rng = np.random.default_rng(count)
    n = 300 if shape == "small" else 200_000
    score = {
        "normal": lambda: rng.normal(size=n),
        "ties": lambda: rng.integers(0, 5, n).astype(float),  # a cut inside a run of equal scores
        "ascending": lambda: np.sort(rng.normal(size=n)),  # the sample's top is the array's end
        "descending": lambda: -np.sort(rng.normal(size=n)),
        "inf": lambda: np.where(rng.random(n) < 0.001, np.inf, rng.normal(size=n)),
        "small": lambda: rng.normal(size=n),
        # High scores only where the sample looks: too few pass its cut (the full partition).
        "skewed": lambda: np.where(np.arange(n) % 64 == 0, 10.0, rng.normal(size=n)) * (np.arange(n) < 64 * 20),
    }[shape]().astype(np.float32)
    got = _top(score, count)
    want = np.argpartition(score, max(0, n - count))[max(0, n - count) :] if count < n else np.arange(n)
    assert got.dtype == np.int64 and np.unique(got).size == got.size == min(count, n)
    np.testing.assert_array_equal(np.sort(score[got]), np.sort(score[want]))


@pytest.mark.parametrize("predictor", ["presence", "acoustic"])
def test_a_copy_of_one_moment_of_a_long_query_is_a_candidate(tmp_path, predictor):
    """A long query (several items) whose one moment has a copy in the store: the exact search
    ranks the copy first as a near-duplicate (its best cosine with a query item), however
    unlike the query's average it is; the prefiltered search must have it among its candidates,
    though a hundred scenes holding all of the query's sounds lie nearer the average."""
    store = Store.open(tmp_path / "store", create=True, featurizer=FZ)
    rng = np.random.default_rng(5)
    templates = np.random.default_rng(99).normal(0, 1.5, (SOURCES, T, D))
    sources = [0, 2, 4, 6, 8, 10]
    # The query: six moments, each a fresh take of another source; the store holds a copy of
    # the fourth (a little noise) as a file of its own.
    query = np.stack([(templates[s] + rng.normal(0, 0.5, (T, D))) * 3 - 20 for s in sources]).astype(np.float32)
    scenes = np.stack([(templates[sources].mean(0) + rng.normal(0, 0.5, (T, D))) * 3 - 20 for _ in range(100)])
    write_items(store, clustered(600))
    write_items(store, scenes.astype(np.float32), name="scene")
    write_items(store, (query[3] + rng.normal(0, 0.05, (T, D)))[None].astype(np.float32), name="copy")
    copy_row = 700
    model = make_model(tmp_path / "m.safetensors")
    set_ranking(model.path, "blend", 0.75)
    engine = SearchEngine(store, load_model(model.path))
    engine.prefilter_predictor = predictor
    exact = engine.search(query, k=10, exact=True)
    assert exact.results[0].item.row == copy_row and exact.results[0].duplicate
    got = engine.search(query, k=10, candidates=40)
    # The acoustic index adds each moment's nearest 10 (DUPLICATE_CANDIDATES // 6).
    assert got.candidates is not None and got.candidates <= (40 if predictor == "presence" else 40 + 6 * 10)
    assert got.results[0].item.row == copy_row and got.results[0].duplicate
    store.close()
