"""aisfx's network in numpy (a short query's path, no torch) against its torch path, the folded
weights file that path reads, and a cold `soundsearch query` of a file the store does not hold.

Skips when the aisfx weights are not available (as tests/test_aisfx.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import chirp, cold_query, noise_bursts, tone, write_audio
from soundsearch.errors import FeaturizerError
from soundsearch.features import featurizer_from_spec, get_featurizer
from soundsearch.features import aisfx as A
from soundsearch.features import weights as weights_mod

SR = 44100
# Measured: embeddings up to ~34 agree within 1.3e-5 absolute (rel ~4e-7), the signals' pooled
# features within 1.6e-5 (numpy's FFT against scipy's float32 one adds to the network's part):
# at most 0.15 of these bounds. Float32 sums in other orders (BLAS against oneDNN) account for it;
# nearly empty bands let the FFTs part further (test_nearly_empty_bands_...).
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("weights")
        mp.setenv("SOUNDSEARCH_WEIGHTS_DIR", str(d))
        yield d


@pytest.fixture(scope="module")
def torch_fz(weights_dir):
    """Built without a checksum: the weights are loaded with torch, and folded into the dir."""
    try:
        return get_featurizer("aisfx")
    except FeaturizerError as exc:
        pytest.skip(f"aisfx weights not available: {exc}")


def numpy_fz(torch_fz, **params) -> A.AiSFX:
    """Built as a store's spec builds it (the checksum named): from the folded file, no torch."""
    fz = featurizer_from_spec({"name": "aisfx", "params": {**torch_fz.params, **params}})
    assert fz._torch_layers is None and fz._weights is None
    return fz


def test_torch_loading_writes_the_folded_weights_a_spec_reads_back(torch_fz, weights_dir):
    path = weights_dir / f"aisfx-{torch_fz.params['weights']}.folded.npz"
    assert path.is_file()
    fz = numpy_fz(torch_fz)
    assert fz.identity == torch_fz.identity and fz.dim == torch_fz.dim == 1024
    assert fz.weights_digest == torch_fz.weights_digest
    for (w, b), (w2, b2) in zip(fz._layers, torch_fz._layers, strict=True):
        assert np.array_equal(w, w2) and np.array_equal(b, b2)
    # The shapes describe the network: 8 convolutions, 64 ... 512 channels, 3.86 GFLOP a block.
    assert [w.shape[3] for w, _ in fz._layers] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert fz.conv_flops(100) == 3_861_430_272
    # The torch weights are still there for whoever asks (loaded with torch then).
    assert fz.weights.digest == torch_fz.weights_digest


@pytest.mark.parametrize("frames", [8, 9, 37, 100])
def test_numpy_network_equals_torch(torch_fz, frames):
    rng = np.random.default_rng(frames)
    blocks = rng.random((3, frames, 96), dtype=np.float32)
    blocks[1] *= 0.1  # quieter
    blocks[2, :, 40:] = 0.0  # silence in the upper bands
    fz = numpy_fz(torch_fz)
    ours = fz.embed(blocks, backend="numpy")
    theirs = torch_fz.embed(blocks, backend="torch")
    assert ours.shape == theirs.shape == (3, 512) and ours.dtype == np.float32
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def _signals() -> dict[str, np.ndarray]:
    burst = noise_bursts(0.3, SR, seed=5, amp=0.6) + tone(1500.0, 0.3, SR, amp=0.3)
    padded = np.zeros(2 * SR, np.float32)
    padded[SR // 2 : SR // 2 + burst.size] = burst  # trimmed to the burst: shorter than a block
    return {
        "tiny": tone(800.0, 0.05, SR),  # 3 frames, padded to 8
        "short_trimmed": padded,
        "one_block": chirp(200.0, 9000.0, 99 * 1024 / SR, SR),  # exactly 100 frames
        "blocks_tail": np.concatenate([noise_bursts(4.0, SR, seed=6), chirp(seconds=3.3, sr=SR)]),  # end-aligned last block
        "trimmed_blocks": np.concatenate([np.zeros(SR, np.float32), noise_bursts(5.0, SR, seed=7), np.zeros(SR, np.float32)]),
    }


@pytest.mark.parametrize("kind", list(_signals()))
def test_numpy_features_equal_torch_features(torch_fz, kind):
    x = _signals()[kind]
    fz = numpy_fz(torch_fz)
    blocks = torch_fz.blocks(x)
    assert blocks.shape[0] <= A.NUMPY_MAX_BLOCKS
    ours = fz(x)
    assert fz._torch_layers is None  # all of it in numpy, front-end too
    assert fz.numpy_blocks_left == A.NUMPY_MAX_BLOCKS - blocks.shape[0]
    np.testing.assert_allclose(ours, torch_fz(x), rtol=RTOL, atol=ATOL)
    # The numpy front-end (numpy's float64 FFT, no scipy) against scipy's float32 one: the same
    # network inputs (0..1) to float rounding (measured within 1.5e-5), the same frames trimmed.
    np.testing.assert_allclose(fz.frames(x), torch_fz.frames(x), rtol=0, atol=5e-5)


def test_nearly_empty_bands_show_scipys_float32_fft_rounding(torch_fz, tmp_path):
    # A 200-2000 Hz chirp recorded at 22.05 kHz: most bands hold only the FFT's rounding, where
    # scipy's float32 transform (the torch path's, as indexing's) and numpy's float64 one part
    # the most: network inputs up to 1.6e-5 apart, features up to ~9e-5 (measured). The same
    # inputs through the two networks still agree as tightly as anywhere.
    from soundsearch.features import featurize_file

    path = write_audio(tmp_path / "narrow.aiff", chirp(200, 2000, 12.0, 22050), 22050, format="AIFF")
    ours = featurize_file(path, numpy_fz(torch_fz), item_seconds=5.0).features
    theirs = featurize_file(path, torch_fz, item_seconds=5.0).features
    assert ours.shape == theirs.shape == (3, 10, 1024)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-4)
    blocks = torch_fz.blocks(chirp(200, 2000, 5.0, SR))
    np.testing.assert_allclose(numpy_fz(torch_fz).embed(blocks, backend="numpy"), torch_fz.embed(blocks), rtol=RTOL, atol=ATOL)


def test_long_input_imports_torch_after_the_numpy_budget(torch_fz):
    fz = numpy_fz(torch_fz)
    x = noise_bursts(10.0, SR, seed=8)  # 5 blocks
    first = fz.batch([x])
    assert fz._torch_layers is None and fz.numpy_blocks_left == A.NUMPY_MAX_BLOCKS - 5
    fz.numpy_blocks_left = 7
    again = fz.batch([x, x])  # 10 blocks: more than is left, so torch from here on
    assert fz._torch_layers is not None
    np.testing.assert_allclose(again[0], first[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(fz.batch([x])[0], torch_fz(x))  # torch now, as torch_fz


def test_indexing_runs_torch_from_the_first_block(torch_fz):
    fz = numpy_fz(torch_fz).for_indexing()
    assert fz._torch_layers is not None and fz.numpy_blocks_left == 0
    x = chirp(seconds=1.0, sr=SR)
    np.testing.assert_array_equal(fz(x), torch_fz(x))
    from soundsearch.indexing.workers import _WORKER_FEATURIZERS, _worker_featurizer

    _WORKER_FEATURIZERS.pop(torch_fz.identity, None)
    try:
        assert _worker_featurizer(torch_fz.spec(), torch_fz.identity)._torch_layers is not None
    finally:
        _WORKER_FEATURIZERS.pop(torch_fz.identity, None)


def test_a_damaged_folded_file_is_folded_again(torch_fz, weights_dir):
    short = torch_fz.params["weights"]
    path = weights_dir / f"aisfx-{short}.folded.npz"
    good = path.read_bytes()

    def readable() -> bool:
        return weights_mod.load_derived(A.WEIGHT_SOURCE, short, A.FOLDED) is not None

    try:
        for damage in ("flip", "truncate"):
            damaged = bytearray(good)
            if damage == "flip":
                damaged[len(damaged) // 2] ^= 0xFF  # inside a kernel's bytes: the zip's CRC catches it
            else:
                del damaged[1000:]
            path.write_bytes(bytes(damaged))
            assert not readable()
            fz = featurizer_from_spec(torch_fz.spec())
            assert fz._weights is not None and fz._torch_layers is not None  # loaded with torch
            assert readable()  # and folded again
            # A featurizer built without a checksum checks the whole file too.
            path.write_bytes(bytes(damaged))
            get_featurizer("aisfx")
            assert readable()
    finally:
        path.write_bytes(good)
    numpy_fz(torch_fz)


def test_folded_weights_of_an_env_file_follow_that_file(torch_fz, weights_dir, monkeypatch, tmp_path):
    short = torch_fz.params["weights"]
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes((weights_dir / f"aisfx-{short}.safetensors").read_bytes())
    monkeypatch.setenv(A.WEIGHTS_ENV, str(mine))
    assert featurizer_from_spec(torch_fz.spec())._weights is not None  # folded from another file
    assert numpy_fz(torch_fz).weights_digest == torch_fz.weights_digest  # now from this one
    os.utime(mine, ns=(mine.stat().st_atime_ns, mine.stat().st_mtime_ns + 10**9))
    assert featurizer_from_spec(torch_fz.spec())._weights is not None  # touched: read again
    # Other weights in its place: refused as before, never answered by the folded copy.
    tensors = dict(weights_mod.load_safetensors(mine))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    weights_mod.save_safetensors_atomically(tensors, mine, {})
    with pytest.raises(FeaturizerError, match="not the ones these features were made with"):
        featurizer_from_spec(torch_fz.spec())
    monkeypatch.delenv(A.WEIGHTS_ENV)
    numpy_fz(torch_fz)  # without the variable the folded copy of those weights serves again


def test_other_weights_are_refused_without_torch_weights_to_fold(torch_fz):
    with pytest.raises(FeaturizerError, match="not the ones these features were made with"):
        featurizer_from_spec({"name": "aisfx", "params": {**torch_fz.params, "weights": "0123456789abcdef"}})


def test_a_cold_query_of_a_one_shot_the_store_lacks_loads_no_torch(torch_fz, weights_dir, tmp_path):
    from soundsearch.indexing import index_paths
    from soundsearch.model.checkpoint import load_model
    from soundsearch.model.registry import resolve_model
    from soundsearch.search.engine import SearchEngine
    from soundsearch.store import Store

    lib = tmp_path / "lib"
    write_audio(lib / "a.wav", tone(440, 1.5, SR), SR)
    write_audio(lib / "b.wav", noise_bursts(2.0, SR, seed=1), SR)
    write_audio(lib / "c.wav", chirp(seconds=2.5, sr=SR), SR)
    write_audio(lib / "d.wav", np.concatenate([tone(1200, 0.4, SR), noise_bursts(0.8, SR, seed=3)]), SR)
    store = tmp_path / "store"
    index_paths(store, [lib], jobs=1)  # the default featurizer (aisfx), for the default model
    shot = np.concatenate([np.zeros(SR // 10, np.float32), noise_bursts(0.8, SR, seed=77), chirp(200, 4000, 0.4, SR)])
    query = write_audio(tmp_path / "elsewhere" / "shot.wav", shot, SR)
    env = {"SOUNDSEARCH_STORE": str(store), "SOUNDSEARCH_MODELS": str(tmp_path / "models"),
           "SOUNDSEARCH_WEIGHTS_DIR": str(weights_dir)}
    doc, imported = cold_query([str(query)], env)
    # No long recordings in this store, so no print scan: nothing on this path needs scipy either.
    assert imported == {"torch": False, "scipy": False}
    assert not doc["query"]["in_store"] and doc["results"]
    # The same ranking as the torch network (and the torch search engine) gives.
    with Store.open(store) as st:
        st.featurizer().numpy_blocks_left = 0
        again = SearchEngine(st, load_model(resolve_model(None))).search(query, k=10)
        assert st.featurizer()._torch_layers is not None
    assert [r["row"] for r in doc["results"]] == [r.item.row for r in again.results]
    assert [r["level"] for r in doc["results"]] == [r.level for r in again.results]
    np.testing.assert_allclose([r["score"] for r in doc["results"]], [r.score for r in again.results], atol=1e-5)
