"""The numpy search backend against the torch one: the same scores within float tolerance and
the same top K, for every variant, random-weight and shipped models, both cache dtypes; and the
torch-free model loader against checkpoint.load_model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from soundsearch.errors import ModelError, SearchError
from soundsearch.features import Featurizer, item_stats, spec_stats
from soundsearch.model.arrays import BN_EPS, ArrayModel, expected_shapes, load_arrays
from soundsearch.model.checkpoint import load_model
from soundsearch.model.config import ModelConfig
from soundsearch.model.network import PresenceNet
from soundsearch.search.backends import NumpyBackend, TorchBackend, bf16_to_f32, f32_to_bf16
from soundsearch.search.engine import SearchEngine
from soundsearch.store import Store
from test_search import VARIANTS, make_model, make_store, queries, write_items

REPO = Path(__file__).resolve().parents[1]
MORE_VARIANTS = VARIANTS + [{"siamese": False, "per_category": True}, {"context": "stats"}, {"head": (64, 32, 16), "tower": (48, 24)}]


def _ids(v: dict) -> str:
    return "+".join(f"{k}={x}" for k, x in v.items()) or "default"


def _pair(tmp_path: Path, seed: int = 3, **variant):
    """The same model file loaded with its network (torch backend) and as arrays (numpy)."""
    torch_model = make_model(tmp_path / f"m-{seed}-{_ids(variant)}.safetensors", seed=seed, **variant)
    return torch_model, load_arrays(torch_model.path)


def _assert_same_scores(a, b, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.probs, b.probs, atol=atol)
    np.testing.assert_allclose(a.expected, b.expected, atol=atol * 10)
    # Levels may differ only where "differs" and the likelier other state tie within rounding.
    other = np.maximum(a.probs[..., 0], a.probs[..., 1])
    near_tie = (np.abs(a.probs[..., 2] - other) < 2 * atol).any(-1)
    assert ((a.level == b.level) | near_tie).all()
    np.testing.assert_allclose(a.closeness, b.closeness, atol=1e-5)
    np.testing.assert_allclose(a.acoustic, b.acoustic, atol=1e-5)


def _assert_same_top(a, b, atol: float = 1e-5) -> None:
    """The same top K in the same order; two results may swap only where their scores tie
    within float rounding (the two backends round differently)."""
    rows_a = [r.item.row for r in a.results]
    rows_b = [r.item.row for r in b.results]
    if rows_a == rows_b:
        return
    score_a = {r.item.row: (r.level, r.rank_score) for r in a.results}
    score_b = {r.item.row: (r.level, r.rank_score) for r in b.results}
    for x, y in zip(rows_a, rows_b):
        if x != y:
            # The two results at this place are tied in both engines.
            assert x in score_b and y in score_a, (rows_a, rows_b)
            assert score_a[x][0] == score_a[y][0] and abs(score_a[x][1] - score_a[y][1]) < atol, (rows_a, rows_b)


@pytest.fixture
def store(tmp_path: Path):
    st, feats = make_store(tmp_path / "store", 53)
    st.feats = feats
    yield st
    st.close()


@pytest.mark.parametrize("variant", MORE_VARIANTS, ids=_ids)
def test_numpy_backend_equals_torch_for_every_variant(tmp_path, store, variant):
    torch_model, arrays = _pair(tmp_path, **variant)
    t_engine = SearchEngine(store, torch_model, cache_dir=tmp_path / "ct", block_rows=100, workers=2)
    n_engine = SearchEngine(store, arrays, cache_dir=tmp_path / "cn", block_rows=100, workers=2)
    assert (t_engine.backend.name, n_engine.backend.name) == ("torch", "numpy")
    q = queries(3)
    _assert_same_scores(t_engine.score_all(q, probs=True), n_engine.score_all(q, probs=True))
    agg_t, agg_n = t_engine.score_all(q, probs=True, aggregate=True), n_engine.score_all(q, probs=True, aggregate=True)
    _assert_same_scores(agg_t, agg_n)
    np.testing.assert_allclose(agg_t.acoustic_best, agg_n.acoustic_best, atol=1e-6)
    np.testing.assert_allclose(t_engine.self_presence(q), n_engine.self_presence(q), atol=1e-5)
    # And against the network's own forward pass, as test_search holds the torch engine.
    ref = torch_model.score_pairs(q[0], store.feats)
    np.testing.assert_allclose(n_engine.score_all(q[0], probs=True).probs[0], ref.probs, atol=1e-5)
    # Both ranked alike: the same top 10 in the same order.
    for j in range(3):
        _assert_same_top(t_engine.search(q[j], k=10), n_engine.search(q[j], k=10))


def test_the_backends_share_one_cache_and_either_reads_the_others(tmp_path, store):
    torch_model, arrays = _pair(tmp_path)
    t_engine = SearchEngine(store, torch_model).prepare()
    assert t_engine.built_cache
    n_engine = SearchEngine(store, arrays).prepare()
    assert not n_engine.built_cache and n_engine.cache_path() == t_engine.cache_path()
    q = queries(2)
    _assert_same_scores(t_engine.score_all(q, probs=True), n_engine.score_all(q, probs=True))
    # A database side the numpy backend computed holds the torch one's values.
    fresh = SearchEngine(store, arrays, persist=False)
    fresh._cache = fresh._build(tmp_path / "unused.npy", np.float32)
    np.testing.assert_allclose(fresh._cache, t_engine._cache, atol=2e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_compact_caches_agree(tmp_path, store, dtype):
    torch_model, arrays = _pair(tmp_path)
    t_engine = SearchEngine(store, torch_model, cache_dtype=dtype, cache_dir=tmp_path / "ct").prepare()
    n_engine = SearchEngine(store, arrays, cache_dtype=dtype, cache_dir=tmp_path / "cn").prepare()
    n = t_engine.n_items
    (t_half, t_tail), (n_half, n_tail) = t_engine._split(t_engine._cache[:n]), n_engine._split(n_engine._cache[:n])
    # Built apart, the two caches' 16-bit halves differ only where float32 rounding moved a
    # value across a 16-bit rounding boundary (one step), or near zero, where a sum's float32
    # rounding is large against the value itself; pooled and acoustic parts are float32.
    step = 2**-7 if dtype == "bfloat16" else 2**-10
    to32 = bf16_to_f32 if dtype == "bfloat16" else (lambda x: x.view(np.float16).astype(np.float32))
    t_vals, n_vals = to32(t_half), to32(n_half)
    assert np.mean(t_vals != n_vals) < 0.01
    np.testing.assert_allclose(t_vals, n_vals, rtol=step, atol=2e-5)
    np.testing.assert_allclose(t_tail, n_tail, atol=2e-5)
    # The torch backend scans a bfloat16 cache in bfloat16 where the CPU multiplies it natively,
    # numpy in float32: both within a compact scan's error, and the same results once a search
    # has re-scored its top from float32 rows.
    q = queries(2)
    np.testing.assert_allclose(t_engine.score_all(q, probs=True).probs, n_engine.score_all(q, probs=True).probs, atol=5e-2)
    for query in q:
        a, b = t_engine.search(query, k=5), n_engine.search(query, k=5)
        _assert_same_top(a, b)
        for x, y in zip(a.results, b.results):
            np.testing.assert_allclose(x.probs, y.probs, atol=1e-5)


def test_bfloat16_rounding_is_torchs():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.normal(0, 1, 10000).astype(np.float32),
        rng.normal(0, 1e30, 1000).astype(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-40, 3.4028235e38, -3.4028235e38,
                  1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20], np.float32),
    ])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = f32_to_bf16(x)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(bf16_to_f32(got[nan])).all()  # which NaN torch writes depends on its code path
    np.testing.assert_array_equal(bf16_to_f32(want), torch.from_numpy(x).to(torch.bfloat16).float().numpy())


@pytest.mark.parametrize("attention", [True, False])
def test_huge_logits_agree(tmp_path, store, attention):
    # Logits far beyond exp()'s float32 range take the max-shifted softmax path in both.
    torch_model = make_model(None, seed=8, attention=attention)
    with torch.no_grad():
        torch_model.net.state.weight.mul_(300)
        if torch_model.net.attend is not None:
            torch_model.net.attend.weight.mul_(300)
    arrays = _as_arrays(torch_model)
    q = queries(2)
    t = SearchEngine(store, torch_model, cache_dir=tmp_path / "ct").score_all(q, probs=True)
    n = SearchEngine(store, arrays, cache_dir=tmp_path / "cn").score_all(q, probs=True)
    assert np.isfinite(n.probs).all() and np.abs(n.probs).max() > 0.999
    # Logits in the hundreds carry float32 rounding of ~1e-4, which the softmax passes on.
    np.testing.assert_allclose(t.probs, n.probs, atol=1e-3)


def _as_arrays(model) -> ArrayModel:
    return ArrayModel(
        state={k: v.copy() for k, v in model.state_arrays().items()}, config=model.config, taxonomy=model.taxonomy,
        featurizer_spec=model.featurizer_spec, featurizer_identity=model.featurizer_identity,
        norm_mean=model.norm_mean, norm_std=model.norm_std, meta=model.meta, path=model.path,
    )


class _SpecOnly(Featurizer):
    """Just enough of a featurizer for a MemoryStore holding a shipped model's kind of features."""

    def __init__(self, spec: dict, identity: str, steps: int, dim: int):
        self._spec, self._identity = spec, identity
        self.stats = spec_stats(spec)
        self.steps, self.dim = steps, dim

    @property
    def identity(self) -> str:
        return self._identity

    def spec(self) -> dict:
        return dict(self._spec)


@pytest.mark.parametrize("name", ["default", "logmel-scenes-v1"])
def test_shipped_models_agree(tmp_path, name):
    path = REPO / "models" / f"{name}.safetensors"
    torch_model, arrays = load_model(path), load_arrays(path)
    cfg = torch_model.config
    rng = np.random.default_rng(1)
    # Features around the model's own normalisation, so its units see their usual range.
    feats = (torch_model.norm_mean + torch_model.norm_std * rng.normal(0, 1, (300, cfg.steps, cfg.dim))).astype(np.float32)
    # A store of the model's features, whose featurizer (aisfx for the default) is never built:
    # search reads the statistics it needs from the store's spec.
    fz = _SpecOnly(torch_model.featurizer_spec, torch_model.featurizer_identity, cfg.steps, cfg.dim)
    store = Store.open(tmp_path / "store", create=True, featurizer=fz)
    write_items(store, feats)
    t_engine = SearchEngine(store, torch_model, cache_dir=tmp_path / "ct")
    n_engine = SearchEngine(store, arrays, cache_dir=tmp_path / "cn")
    q = feats[:4] + rng.normal(0, 0.1, feats[:4].shape).astype(np.float32) * torch_model.norm_std
    _assert_same_scores(t_engine.score_all(q, probs=True), n_engine.score_all(q, probs=True))
    for j in range(4):
        t_res, n_res = t_engine.search(q[j], k=10), n_engine.search(q[j], k=10)
        _assert_same_top(t_res, n_res)
        np.testing.assert_allclose([r.score for r in t_res.results], [r.score for r in n_res.results], atol=1e-5)
    assert store._featurizer is None  # never built


def test_item_stats_from_the_spec_are_the_featurizers():
    from soundsearch.features import get_featurizer

    rng = np.random.default_rng(0)
    for fz in (get_featurizer("logmel"), get_featurizer("logmel", stats="max,min"), get_featurizer("logmel", stats="mean")):
        feats = rng.normal(0, 1, (3, fz.steps, fz.dim)).astype(np.float32)
        assert spec_stats(fz.spec()) == fz.stats
        np.testing.assert_array_equal(item_stats(feats, spec_stats(fz.spec())), fz.item_stats(feats))
    assert spec_stats({"name": "x", "params": {}}) == ()


# ---- the torch-free loader ---------------------------------------------------------------


@pytest.mark.parametrize("variant", MORE_VARIANTS, ids=_ids)
def test_expected_shapes_are_the_networks(variant):
    config = ModelConfig(steps=4, dim=6, n_categories=3, **variant)
    net = PresenceNet(config)
    assert expected_shapes(config) == {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert all(m.eps == BN_EPS for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d))


def test_arrays_hold_what_load_model_loads(tmp_path):
    torch_model, arrays = _pair(tmp_path)
    net_state = torch_model.net.state_dict()
    assert set(arrays.state) == set(net_state)
    for k, v in net_state.items():
        np.testing.assert_array_equal(arrays.state[k], v.numpy())
    for field in ("config", "taxonomy", "featurizer_spec", "featurizer_identity", "meta", "path", "name", "variant"):
        assert getattr(arrays, field) == getattr(torch_model, field), field
    np.testing.assert_array_equal(arrays.norm_mean, torch_model.norm_mean)
    np.testing.assert_array_equal(arrays.norm_std, torch_model.norm_std)


def test_loading_as_arrays_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from soundsearch.model.arrays import load_arrays\n"
        "from soundsearch.search.engine import SearchEngine\n"
        f"m = load_arrays({str(REPO / 'models' / 'default.safetensors')!r})\n"
        "m.inference_form()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_backend_choice(tmp_path, store):
    torch_model, arrays = _pair(tmp_path)
    assert isinstance(SearchEngine(store, torch_model, backend="numpy").backend, NumpyBackend)
    assert isinstance(SearchEngine(store, torch_model).backend, TorchBackend)
    with pytest.raises(SearchError, match="needs the model loaded with its network"):
        SearchEngine(store, arrays, backend="torch")
    with pytest.raises(SearchError, match="must be one of numpy, torch"):
        SearchEngine(store, arrays, backend="jax")
    # A LoadedModel scored by the numpy backend folds the network's current weights.
    q = queries(2)
    _assert_same_scores(SearchEngine(store, torch_model, cache_dir=tmp_path / "a").score_all(q, probs=True),
                        SearchEngine(store, torch_model, backend="numpy", cache_dir=tmp_path / "b").score_all(q, probs=True))


def test_unsupported_weight_values_are_model_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    torch_model, _ = _pair(tmp_path)
    tensors = load_file(str(torch_model.path))
    from safetensors import safe_open

    with safe_open(str(torch_model.path), framework="numpy") as f:
        meta = f.metadata()
    tensors["state.bias"] = tensors["state.bias"] > 0  # booleans are no weights
    bad = tmp_path / "bool.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    for load in (load_arrays, load_model):
        with pytest.raises(ModelError, match="corrupt weights"):
            load(bad)
