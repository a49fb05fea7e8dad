"""The search engine: exact against the model's own forward pass, cached, ranked, filtered."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from soundsearch.errors import FeaturizerMismatchError, SearchError, StoreError
from soundsearch.features import get_featurizer
from soundsearch.model.config import ModelConfig
from soundsearch.model.checkpoint import load_model, save_model
from soundsearch.model.network import LoadedModel, PresenceNet
from soundsearch.presence import BOTH, DIFFERS
from soundsearch.search.engine import SearchEngine, rank
from soundsearch.store import FileEntry, Store
from soundsearch.taxonomy import Taxonomy

T, D = 10, 128  # the logmel store's item shape
FZ = get_featurizer("logmel", stats="mean")  # the paper's (10, 128) items keep the synthetic arrays small


def write_items(store: Store, feats: np.ndarray, per_file: int = 4, name: str = "f") -> None:
    """Put raw feature rows into a store as files of `per_file` 10 s items each."""
    with store.writer() as w:
        entries = []
        for f, start in enumerate(range(0, len(feats), per_file)):
            block = feats[start : start + per_file]
            segs = [(10.0 * i, 10.0 * (i + 1)) for i in range(len(block))]
            entries.append(
                FileEntry(path=Path(f"/lib/{name}{f:03d}.wav"), size=1, mtime_ns=f, duration=10.0 * len(block),
                          samplerate=22050, channels=1, segments=segs, features=block)
            )
        w.write_files(entries)


def make_store(path: Path, n: int, seed: int = 0) -> tuple[Store, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Per-file offsets make items differ in more than noise, as real recordings do.
    feats = (rng.normal(0, 1, (n, 1, D)) + rng.normal(0, 1, (n, T, D))).astype(np.float32) * 3 - 20
    store = Store.open(path, create=True, featurizer=FZ)
    write_items(store, feats)
    return store, feats


def make_model(path: Path | None, seed: int = 0, identity: str = FZ.identity, **variant) -> LoadedModel:
    torch.manual_seed(seed)
    config = ModelConfig(steps=T, dim=D, n_categories=8, **variant)
    net = PresenceNet(config)
    # Non-trivial batch-norm statistics, so that folding them into the weights matters.
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
    net.eval()
    mean, std = np.full(D, -20, np.float32), np.full(D, 3, np.float32)
    if path is None:
        return LoadedModel(net=net, config=config, taxonomy=Taxonomy.default(), featurizer_spec=FZ.spec(),
                           featurizer_identity=identity, norm_mean=mean, norm_std=std)
    save_model(path, net, config, Taxonomy.default(), FZ.spec(), identity, mean, std, {"seed": seed})
    return load_model(path)


@pytest.fixture
def store(tmp_path: Path):
    st, feats = make_store(tmp_path / "store", 37)
    st.feats = feats
    yield st
    st.close()


@pytest.fixture
def model(tmp_path: Path) -> LoadedModel:
    return make_model(tmp_path / "m.safetensors")


def queries(n: int, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ((rng.normal(0, 1, (n, 1, D)) + rng.normal(0, 1, (n, T, D))) * 3 - 20).astype(np.float32)


VARIANTS = [
    {},
    {"per_category": True},
    {"siamese": False},
    {"attention": False},
    {"context": "stats", "per_category": True, "attention": False},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_engine_equals_model_forward_for_every_variant(tmp_path, store, variant):
    model = make_model(tmp_path / "v.safetensors", seed=3, **variant)
    # A block size that does not divide the item count exercises the short last block.
    engine = SearchEngine(store, model, block_rows=100, workers=2)
    q = queries(3)
    scores = engine.score_all(q, probs=True)
    for j in range(3):
        ref = model.score_pairs(q[j], store.feats)
        np.testing.assert_allclose(scores.probs[j], ref.probs, atol=1e-5)
        np.testing.assert_array_equal(scores.level[j], ref.level)
        np.testing.assert_allclose(scores.expected[j], ref.expected, atol=1e-5)
    # Closeness is the cosine of the mean-pooled tower outputs.
    with torch.no_grad():
        h = model.net.embed(torch.from_numpy(model.normalise(np.concatenate([q, store.feats])))).mean(1)
        h = torch.nn.functional.normalize(h, dim=1)
    np.testing.assert_allclose(scores.closeness, (h[:3] @ h[3:].T).numpy(), atol=1e-5)


def test_symmetric_scores_and_workers_agree(store, model):
    one = SearchEngine(store, model, workers=1, block_rows=60).score_all(store.feats[:5], probs=True)
    two = SearchEngine(store, model, workers=2, block_rows=60).score_all(store.feats[:5], probs=True)
    np.testing.assert_array_equal(one.level, two.level)
    np.testing.assert_allclose(one.probs, two.probs, atol=1e-6)
    # score(a, b) == score(b, a): the first 5 x first 5 block is symmetric.
    np.testing.assert_allclose(one.probs[:, :5], one.probs[:, :5].transpose(1, 0, 2, 3), atol=2e-6)


def test_long_query_averages_probabilities_over_its_items(store, model):
    engine = SearchEngine(store, model)
    q = queries(3, seed=9)
    agg = engine.score_all(q, probs=True, aggregate=True)
    each = engine.score_all(q, probs=True)
    mean = each.probs.mean(0)
    np.testing.assert_allclose(agg.probs[0], mean, atol=1e-6)
    np.testing.assert_array_equal(agg.level[0], (mean.argmax(-1) != DIFFERS).sum(-1))
    np.testing.assert_allclose(agg.expected[0], mean[..., :2].sum((-1, -2)), atol=1e-5)
    assert agg.level.shape == (1, 37)


def test_cache_is_built_once_and_follows_store_and_model(tmp_path, store, model):
    first = SearchEngine(store, model).prepare()
    assert first.built_cache
    cache_file = first.cache_path()
    assert cache_file.is_file() and cache_file.parent == store.path / "cache"
    umask = os.umask(0)
    os.umask(umask)
    assert cache_file.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert not list(cache_file.parent.glob(".*.tmp"))
    q = queries(1)
    before = first.score_all(q)

    again = SearchEngine(store, model).prepare()
    assert not again.built_cache  # read back, not recomputed
    np.testing.assert_array_equal(again.score_all(q).expected, before.expected)

    # The store changes: a new fingerprint, a rebuilt cache, and the stale one removed.
    write_items(store, queries(2, seed=11), name="new")
    grown = SearchEngine(store, model).prepare()
    assert grown.built_cache and grown.n_items == 39
    assert grown.cache_path() != cache_file and not cache_file.exists()
    assert grown.score_all(q).level.shape == (1, 39)
    # Another dtype of the same state lives beside it.
    half = SearchEngine(store, model, cache_dtype="bfloat16").prepare()
    assert half.cache_path().is_file() and grown.cache_path().is_file()

    # The model file changes in place: its content hash changes, so does the cache.
    retrained = make_model(model.path, seed=42)
    engine = SearchEngine(store, retrained).prepare()
    assert engine.built_cache
    ref = retrained.score_pairs(q[0], store.features())
    np.testing.assert_array_equal(engine.score_all(q).level[0], ref.level)
    # The old model's caches (both dtypes) went with the new one's arrival.
    assert list((store.path / "cache").glob("search-*.npy")) == [engine.cache_path()]


def test_corrupt_cache_is_rebuilt(store, model):
    engine = SearchEngine(store, model).prepare()
    want = engine.score_all(queries(1)).level
    path = engine.cache_path()
    del engine  # drop its memory map before the file is replaced
    broken = path.with_suffix(".tmp")
    broken.write_bytes(b"not an array")
    os.replace(broken, path)
    fresh = SearchEngine(store, model).prepare()
    assert fresh.built_cache
    np.testing.assert_array_equal(fresh.score_all(queries(1)).level, want)


def test_unwritable_cache_folder_still_searches(tmp_path, store, model):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    engine = SearchEngine(store, model, cache_dir=blocker / "cache").prepare()
    ref = model.score_pairs(queries(1)[0], store.feats)
    np.testing.assert_array_equal(engine.score_all(queries(1)).level[0], ref.level)


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 5e-2), ("float16", 5e-3)])
def test_compact_cache_scan_is_close_and_recompute_exact(store, model, dtype, tol):
    exact = SearchEngine(store, model).score_all(queries(2), probs=True)
    compact = SearchEngine(store, model, cache_dtype=dtype)
    half = compact.score_all(queries(2), probs=True)
    assert np.abs(half.probs - exact.probs).max() < tol
    # The pooled embedding and the acoustic vector are stored as float32: exact.
    np.testing.assert_array_equal(half.closeness, exact.closeness)
    np.testing.assert_array_equal(half.acoustic, exact.acoustic)
    np.testing.assert_array_equal(compact.acoustic_matrix(), SearchEngine(store, model).acoustic_matrix())
    # A compact row: 16-bit halves, float32 tail (2 storage values a value).
    full = SearchEngine(store, model).prepare()
    assert compact.cache_path().stat().st_size < 0.6 * full.cache_path().stat().st_size
    # Re-scored from float32 rows recomputed from the features: the float32 engine's scores.
    rows = np.array([3, 0, 17, 36])
    again = compact.score_all(queries(2), probs=True, rows=rows, recompute=True)
    np.testing.assert_array_equal(again.level, exact.level[:, rows])
    np.testing.assert_allclose(again.probs, exact.probs[:, rows], atol=1e-5)
    np.testing.assert_allclose(again.expected, exact.expected[:, rows], atol=1e-5)
    with pytest.raises(SearchError, match="float32"):
        SearchEngine(store, model, cache_dtype="int8")


def _same_results(a, b) -> None:
    assert [r.item.row for r in a.results] == [r.item.row for r in b.results]
    assert [r.level for r in a.results] == [r.level for r in b.results]
    assert [r.states.tolist() for r in a.results] == [r.states.tolist() for r in b.results]
    assert [r.duplicate for r in a.results] == [r.duplicate for r in b.results]
    assert [r.moments for r in a.results] == [r.moments for r in b.results]
    for x, y in zip(a.results, b.results):
        np.testing.assert_allclose(x.probs, y.probs, atol=1e-5)
        assert abs(x.score - y.score) < 1e-5 and abs(x.rank_score - y.rank_score) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32-fast"])
def test_compact_cache_search_equals_float32_after_rescoring(tmp_path, model, dtype, backend, monkeypatch):
    """A compact cache's scan, or a float32 cache's bfloat16 fast scan (torch backend with
    numba), then the re-scoring: the float32 scan's results, having re-scored few items."""
    # Enough items that a search re-scores only some of them (it looks at 64 first).
    big, feats = make_store(tmp_path / "big", 600, seed=4)
    if backend == "numpy":
        from soundsearch.model.arrays import load_arrays

        model = load_arrays(model.path)
    fast = dtype == "float32-fast"
    if fast:
        from soundsearch.search import fused, kernel

        if backend == "numpy" or not fused.available():
            pytest.skip("a fast scan needs the torch backend and numba")
        # The fast scan wherever the test runs: torch emulates bfloat16 where the CPU lacks it.
        monkeypatch.setattr(kernel, "fast_bfloat16", lambda: True)
    # One worker each: the prefilter's HNSW index (one per cache file, so one per engine here)
    # is built the same way only single-threaded; with two threads the engines' candidate sets
    # differed by a few items on a busy machine, and so could their results.
    exact = SearchEngine(big, model, workers=1)
    exact.fast_scan = False
    compact = SearchEngine(big, model, cache_dtype="float32" if fast else dtype, workers=1)
    if fast:
        assert compact.scan_dtype(fast=True) == "bfloat16" and exact.cache_path() == compact.cache_path()
    c = len(model.taxonomy)
    qs = list(queries(4, seed=21)) + [feats[5] + 0.3, feats[200]]  # near and at stored items
    cat = model.taxonomy.categories
    asks = [dict(k=10), dict(k=5, require=[cat[0]]), dict(k=5, exclude=[cat[1]]), dict(k=10, min_level=c - 2),
            dict(k=3, include_self=False), dict(k=4, group_by="file"), dict(k=5, mode="acoustic")]
    rescored = []
    for q in qs:
        for kw in asks:
            want = exact.search(q, exact=True, **kw)
            got = compact.search(q, exact=True, **kw)
            _same_results(want, got)
            rescored.append(compact.last_rescored)
            assert exact.last_rescored is None
    assert max(rescored) < 600  # the point: most items keep their approximate scores
    # A long query (several items) too, and through the prefilter's rows.
    long_q = feats[40:43] + 0.2
    _same_results(exact.search(long_q, k=6, exact=True), compact.search(long_q, k=6, exact=True))
    _same_results(exact.search(qs[0], k=6, candidates=300), compact.search(qs[0], k=6, candidates=300))
    big.close()


def _reference_order(level, expected, closeness):
    return sorted(range(len(level)), key=lambda i: (-int(level[i]), -float(expected[i]), -float(closeness[i]), i))


def test_rank_orders_by_level_then_expected_then_closeness():
    rng = np.random.default_rng(0)
    n = 500
    # Few distinct values, so every tie-break is exercised.
    level = rng.integers(5, 9, n)
    expected = rng.integers(0, 4, n).astype(np.float32) / 2 + level - 2
    closeness = rng.integers(0, 3, n).astype(np.float32) / 3
    ref = _reference_order(level, expected, closeness)
    assert rank(level, expected, closeness).tolist() == ref
    for k in (1, 7, 50, 499, 500, 900):
        assert rank(level, expected, closeness, k=k).tolist() == ref[:k]
    assert rank(level, expected, closeness, k=0).tolist() == []
    # A higher level wins even against a higher expected agreement.
    assert rank(np.array([6, 7]), np.array([6.9, 6.1]), np.array([1.0, 0.0])).tolist() == [1, 0]


def test_search_returns_ranked_results(store, model):
    engine = SearchEngine(store, model)
    q = queries(1, seed=3)[0]
    res = engine.search(q, k=5)
    scores = engine.score_all(q, probs=True)
    expect = rank(scores.level[0], scores.expected[0], scores.closeness[0], k=5).tolist()
    assert [r.item.row for r in res.results] == expect
    assert [r.rank for r in res.results] == [1, 2, 3, 4, 5]
    top = res.results[0]
    assert top.level == scores.level[0, top.item.row]
    np.testing.assert_allclose(top.probs, scores.probs[0, top.item.row])
    assert top.states.tolist() == scores.probs[0, top.item.row].argmax(-1).tolist()
    assert top.item == store.items()[top.item.row]
    assert res.items_searched == 37 and res.matches == 37 and not top.is_query


def test_filters(store, model):
    engine = SearchEngine(store, model)
    q = queries(1, seed=4)[0]
    scores = engine.score_all(q, probs=True)
    states = scores.states[0]
    tax = model.taxonomy
    # Pick the category with the most mixed predictions, so both filters keep something.
    j = int(np.argmin(np.abs((states == BOTH).mean(0) - 0.5)))
    cat = tax.categories[j]
    n_both = int((states[:, j] == BOTH).sum())
    req = engine.search(q, k=100, require=[cat])
    assert req.matches == n_both and len(req.results) == n_both
    assert all(r.states[j] == BOTH for r in req.results)
    exc = engine.search(q, k=100, exclude=[cat])
    assert exc.matches == 37 - n_both
    assert all(r.states[j] != BOTH for r in exc.results)
    lvl = int(np.median(scores.level[0]))
    ml = engine.search(q, k=100, min_level=lvl)
    assert ml.matches == int((scores.level[0] >= lvl).sum())
    assert all(r.level >= lvl for r in ml.results)
    assert engine.search(q, k=3, require=tax.categories[:1], exclude=tax.categories[1:2]).filters == {
        "require": [tax.categories[0]], "exclude": [tax.categories[1]], "min_level": None}


def test_filter_errors_name_the_valid_categories(store, model):
    engine = SearchEngine(store, model)
    q = queries(1)[0]
    with pytest.raises(SearchError) as info:
        engine.search(q, require=["cat"])
    assert "'cat'" in str(info.value) and "engine" in str(info.value) and "dog" in str(info.value)
    with pytest.raises(SearchError, match="both required and excluded"):
        engine.search(q, require=["dog"], exclude=["dog"])
    with pytest.raises(SearchError, match="between 0 and 8"):
        engine.search(q, min_level=9)
    with pytest.raises(SearchError, match="query features"):
        engine.score_all(np.zeros((T, D + 1), np.float32))


def test_empty_store_and_featurizer_mismatch(tmp_path, model):
    empty = Store.open(tmp_path / "empty", create=True, featurizer=FZ)
    engine = SearchEngine(empty, model)
    with pytest.raises(StoreError, match="holds no items"):
        engine.search(queries(1)[0])
    assert engine.score_all(queries(2)).level.shape == (2, 0)
    other = make_model(None, identity="logmel/1:other")
    with pytest.raises(FeaturizerMismatchError, match="trained on features"):
        SearchEngine(empty, other)


def test_flop_count_matches_the_architecture(store, model):
    engine = SearchEngine(store, model)
    # Per item-step: adds of both orders (3 x 256), 256x128 layer, 128 x (8*3 + 8) outputs.
    per_step = 3 * 256 + 2 * 256 * 128 + 2 * 128 * 32
    assert engine.flops_per_query() == per_step * T * 37


@pytest.mark.parametrize("attention", [True, False])
def test_huge_logits_stay_exact(tmp_path, store, attention):
    # Logits far beyond exp()'s float32 range take the max-shifted softmax path.
    model = make_model(None, seed=8, attention=attention)
    with torch.no_grad():
        model.net.state.weight.mul_(300)
        if model.net.attend is not None:
            model.net.attend.weight.mul_(300)
    engine = SearchEngine(store, model, cache_dir=tmp_path / "c")
    q = queries(2)
    scores = engine.score_all(q, probs=True)
    assert np.isfinite(scores.probs).all()
    for j in range(2):
        ref = model.score_pairs(q[j], store.feats)
        assert np.abs(ref.probs).max() > 0.999  # saturated, so the test is about large values
        # Logits in the hundreds carry float32 rounding of ~1e-4, which the softmax passes on.
        np.testing.assert_allclose(scores.probs[j], ref.probs, atol=1e-3)
        np.testing.assert_array_equal(scores.level[j], ref.level)


def test_full_disk_is_a_clear_error_not_a_crash(store, model, monkeypatch):
    import errno

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with pytest.raises(StoreError, match="no room for the search cache"):
        SearchEngine(store, model).prepare()
    # No half-written file left behind; the items' copy (store.itemcache) was whole before the search cache began.
    assert [p.name for p in (store.path / "cache").glob("*") if not p.name.startswith("items-")] == []
