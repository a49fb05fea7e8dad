"""The pair layer's fused first step (search/fused.py, numba) against plain numpy and against
torch's passes in the search kernel, which it replaces where numba is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundsearch.search import fused
from soundsearch.search.backends import bf16_to_f32, f32_to_bf16
from soundsearch.search.engine import SearchEngine
from soundsearch.search.kernel import _Block
from test_backends import MORE_VARIANTS, _ids
from test_search import make_model, make_store, queries

needs_numba = pytest.mark.skipif(not fused.available(), reason="numba is not installed")


def _reference(h: np.ndarray, q: np.ndarray, groups: int) -> np.ndarray:
    """ReLU(PA_q + PB_i) + ReLU(PA_i + PB_q) in float32, as (G, m, T, K1)."""
    z = np.maximum(h[:, 0] + q[0], 0) + np.maximum(h[:, 1] + q[1], 0)
    m, t, w = z.shape
    return np.ascontiguousarray(z.reshape(m, t, groups, w // groups).transpose(2, 0, 1, 3))


def _rows(rng, m: int, t: int, w: int, extra: int) -> np.ndarray:
    """(m, 2, T, W) halves as a cache holds them: the first values of wider rows."""
    rows = rng.normal(0, 2, (m, 2 * t * w + extra)).astype(np.float32)
    return rows[:, : 2 * t * w].reshape(m, 2, t, w)


@needs_numba
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("m", [1, 7])
def test_float32_equals_numpy(groups, m):
    rng = np.random.default_rng(groups * 10 + m)
    t, w = 3, 16
    h, q = _rows(rng, m, t, w, extra=5), rng.normal(0, 2, (2, t, w)).astype(np.float32)
    assert not h.flags.c_contiguous or m == 1
    z = np.full((groups, m, t, w // groups), np.nan, np.float32)
    fused.pair_layer(h, q, z)
    np.testing.assert_array_equal(z, _reference(h, q, groups))
    assert (z >= 0).all() and (z == 0).any()  # the ReLUs cut something


@needs_numba
@pytest.mark.parametrize("groups", [1, 2])
def test_bfloat16_is_the_float32_sum_rounded_once(groups):
    rng = np.random.default_rng(5)
    m, t, w = 9, 4, 32
    bits = f32_to_bf16(_rows(rng, m, t, w, extra=0).reshape(m, -1))
    wide = np.concatenate([bits, np.zeros((m, 3), np.uint16)], axis=1)[:, : bits.shape[1]]
    h = wide.reshape(m, 2, t, w)
    q = rng.normal(0, 2, (2, t, w)).astype(np.float32)
    z = np.zeros((groups, m, t, w // groups), np.uint16)
    fused.pair_layer(h, q, z)
    want = f32_to_bf16(_reference(bf16_to_f32(h), q, groups))
    np.testing.assert_array_equal(z, want)


@needs_numba
def test_float32_halves_into_bfloat16():
    """A float32 cache's fast scan: float32 halves in, the bfloat16 products' input out."""
    rng = np.random.default_rng(6)
    m, t, w = 6, 3, 16
    h, q = _rows(rng, m, t, w, extra=2), rng.normal(0, 2, (2, t, w)).astype(np.float32)
    z = np.zeros((1, m, t, w), np.uint16)
    fused.pair_layer(h, q, z)
    np.testing.assert_array_equal(z, f32_to_bf16(_reference(h, q, 1)))


@needs_numba
def test_halves_must_be_contiguous_within_an_item():
    h = np.zeros((3, 2, 4, 8), np.float32)[:, :, :, ::2]
    with pytest.raises(ValueError):
        fused.pair_layer(h, np.zeros((2, 4, 4), np.float32), np.zeros((1, 3, 4, 4), np.float32))


def test_without_numba_the_kernel_runs_torchs_passes(monkeypatch, tmp_path):
    monkeypatch.setattr(fused, "available", lambda: False)
    st, feats = make_store(tmp_path / "s", 12)
    model = make_model(None)
    engine = SearchEngine(st, model, persist=False, workers=1)
    block = engine.backend.block(4, 8)
    assert isinstance(block, _Block) and block.fused is None and block.u is not None
    # And the engine still scores as the network does.
    ref = model.score_pairs(queries(1)[0], feats)
    np.testing.assert_allclose(engine.score_all(queries(1), probs=True).probs[0], ref.probs, atol=1e-5)
    st.close()


@needs_numba
@pytest.mark.parametrize("variant", MORE_VARIANTS, ids=_ids)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bfloat16-cache"])
def test_the_kernel_scores_alike_with_and_without_fusion(tmp_path, variant, dtype):
    """float32 halves through the float32 head, float32 halves through the bfloat16 head (a
    float32 cache's fast scan), bfloat16 halves through the bfloat16 head (a compact cache)."""
    st, _ = make_store(tmp_path / "s", 23)
    model = make_model(None, **variant)
    engine = SearchEngine(st, model, persist=False, workers=1)
    engine.prepare()
    backend = engine.backend
    n = engine.n_items
    part, _ = engine._split(engine._cache[:n], False)
    q = queries(1)
    qa, qb, _ = engine._sides(q)
    qpair = backend.pair(qa, qb)[0]
    halves = backend.halves(part)
    if dtype == "bfloat16-cache":
        # What a bfloat16 cache's scan reads (16-bit halves) through the bfloat16 head.
        halves = backend.halves(f32_to_bf16(np.ascontiguousarray(part)), "bfloat16")
    head_dtype = "float32" if dtype == "float32" else "bfloat16"
    with_fusion = backend.block(5, n, head_dtype)
    without = backend.block(5, n, head_dtype)
    without.fused = None
    without.u = torch.empty(without.z.numel() * 2, dtype=without.dtype)
    assert with_fusion.fused is not None
    a = backend.probs(with_fusion, halves, qpair, n)
    b = backend.probs(without, halves, qpair, n)
    if dtype == "float32":
        np.testing.assert_allclose(a, b, atol=1e-6)
    else:
        # torch rounds each order's sum to bfloat16 before adding them; the fused pass rounds
        # once: both within a bfloat16 scan's error, which the re-scoring absorbs.
        np.testing.assert_allclose(a, b, atol=5e-2)
        assert np.abs(a - b).mean() < 5e-3
    st.close()


@needs_numba
def test_runs_where_numba_has_nowhere_to_cache():
    """A read-only install and no writable home: numba finds no place for its on-disk cache and
    refuses cache=True at import; the kernel then compiles in each process instead."""
    import subprocess
    import sys

    code = (
        "import numba.core.caching as c; c.CacheImpl._locator_classes = []\n"
        "import numpy as np\n"
        "from soundsearch.search import fused\n"
        "z = np.zeros((1, 2, 3, 4), np.float32)\n"
        "fused.pair_layer(np.ones((2, 2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32), z)\n"
        "print(z.sum())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "48.0"
