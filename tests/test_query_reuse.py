"""A query of a file the store holds unchanged ("more like this") uses its stored items: the same
features and results as featurizing it again, and a cold `soundsearch query` of it loads no torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import chirp, cold_query, noise_bursts, tone, write_audio
from soundsearch.errors import FeaturizerError
from soundsearch.features import featurize_file
from soundsearch.indexing import index_paths
from soundsearch.model.arrays import load_arrays
from soundsearch.model.checkpoint import save_model
from soundsearch.model.config import ModelConfig
from soundsearch.model.network import PresenceNet
from soundsearch.search.engine import SearchEngine
from soundsearch.search.query import query_features
from soundsearch.store import Store
from soundsearch.taxonomy import Taxonomy

REPO = Path(__file__).resolve().parents[1]


def _library(root: Path) -> Path:
    lib = root / "library"
    for f in (220, 440, 880):
        write_audio(lib / f"tone-{f}.wav", tone(f, 1.5))
    for seed in range(3):
        write_audio(lib / f"bursts-{seed}.flac", noise_bursts(2.0, seed=seed))
    # A long recording: windows and event items (the default cutting).
    write_audio(lib / "long.wav", np.concatenate([chirp(seconds=4.0), noise_bursts(4.0, seed=9)] * 4))
    return lib


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> dict:
    """A logmel store of a small library and a random-weight model for it, saved to a file."""
    root = tmp_path_factory.mktemp("reuse")
    lib = _library(root)
    store_dir = root / "store"
    index_paths(store_dir, [lib], featurizer_name="logmel", jobs=1)
    with Store.open(store_dir) as st:
        feats = np.asarray(st.features())
        spec, identity = st.featurizer_spec, st.featurizer_identity
    torch.manual_seed(0)
    config = ModelConfig(steps=feats.shape[1], dim=feats.shape[2], n_categories=8)
    model = save_model(root / "m.safetensors", PresenceNet(config).eval(), config, Taxonomy.default(), spec, identity,
                       feats.mean((0, 1)), feats.std((0, 1)) + 1e-3)
    return {"root": root, "lib": lib, "store": store_dir, "model": model}


def _featurized(store: Store, path: Path):
    """query_features as it was before stored items were reused: the file featurized again."""
    original = Store.unchanged_items
    try:
        Store.unchanged_items = lambda self, p: None
        return query_features(store, path)
    finally:
        Store.unchanged_items = original


def _same_results(a, b) -> None:
    assert [r.item for r in a.results] == [r.item for r in b.results]
    assert [(r.level, r.is_query, r.duplicate) for r in a.results] == [(r.level, r.is_query, r.duplicate) for r in b.results]
    np.testing.assert_allclose([r.score for r in a.results], [r.score for r in b.results], atol=1e-5)
    np.testing.assert_allclose(a.query_presence, b.query_presence, atol=1e-5)


def test_an_unchanged_stored_file_is_its_stored_items(indexed):
    with Store.open(indexed["store"]) as st:
        for path in sorted(indexed["lib"].iterdir()):
            stored = st.unchanged_items(path)
            assert stored, path
            reused = query_features(st, path)
            again = _featurized(st, path)
            assert reused.segments == again.segments
            np.testing.assert_array_equal(reused.self_rows, again.self_rows)
            np.testing.assert_allclose(reused.feats, again.feats, rtol=1e-6, atol=1e-6)
            assert reused.feats.shape[0] == len(stored) and reused.path == again.path
        assert st._featurizer is not None  # built for the comparison only


def test_search_results_are_those_of_featurizing_the_file_again(indexed, monkeypatch):
    with Store.open(indexed["store"]) as st:
        engine = SearchEngine(st, load_arrays(indexed["model"]))
        for path in sorted(indexed["lib"].iterdir()):
            reused = engine.search(path, k=12, include_self=True)
            with monkeypatch.context() as m:
                m.setattr(Store, "unchanged_items", lambda self, p: None)
                again = engine.search(path, k=12, include_self=True)
            _same_results(reused, again)
            assert reused.results[0].is_query
        # A long query ranked by its items' average, each result naming its best query moment.
        long = engine.search(indexed["lib"] / "long.wav", k=5, group_by="file")
        assert len(long.query_segments) > 1 and long.results[0].query_moment is not None


def test_a_changed_moved_or_partial_query_is_featurized(indexed, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("tone-220.wav", "tone-440.wav", "bursts-0.flac"):
        (lib / name).write_bytes((indexed["lib"] / name).read_bytes())
    store_dir = tmp_path / "store"
    index_paths(store_dir, [lib], featurizer_name="logmel", jobs=1)
    with Store.open(store_dir) as st:
        assert st.unchanged_items(lib / "tone-220.wav")
        # Through a symlink: the same file (README "File identity").
        (tmp_path / "link.wav").symlink_to(lib / "tone-220.wav")
        assert st.unchanged_items(tmp_path / "link.wav") == st.unchanged_items(lib / "tone-220.wav")
        # A copy elsewhere is another file; so is a path the store never saw.
        (tmp_path / "copy.wav").write_bytes((lib / "tone-220.wav").read_bytes())
        assert st.unchanged_items(tmp_path / "copy.wav") is None
        assert st.unchanged_items(tmp_path / "missing.wav") is None
        # A region of a stored file is featurized, never "itself".
        region = query_features(st, lib / "tone-220.wav", start=0.2, end=1.0)
        assert region.self_rows is None and region.segments[0][0] == pytest.approx(0.2)
        # Touched (same sound, new time): featurized, and still recognised as itself.
        os.utime(lib / "tone-220.wav", ns=(1, 1))
        assert st.unchanged_items(lib / "tone-220.wav") is None
        assert query_features(st, lib / "tone-220.wav").self_rows is not None
        # Rewritten with another sound: featurized, not itself.
        write_audio(lib / "tone-440.wav", tone(1000, 1.5))
        assert st.unchanged_items(lib / "tone-440.wav") is None
        assert query_features(st, lib / "tone-440.wav").self_rows is None
        # The catalog moved on since this handle's snapshot: not trusted, featurized.
        items_before = st.items()
        write_audio(lib / "new.wav", tone(300, 1.0))
        index_paths(store_dir, [lib], featurizer_name="logmel", jobs=1)
        assert st.items() == items_before  # this handle still reads its snapshot
        assert st.unchanged_items(lib / "bursts-0.flac") is None
        st.refresh()
        assert st.unchanged_items(lib / "bursts-0.flac")
        # A file that failed to index has no items to reuse.
        (lib / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
        index_paths(store_dir, [lib], featurizer_name="logmel", jobs=1)
        st.refresh()
        assert st.unchanged_items(lib / "broken.wav") is None


def _aisfx_or_skip() -> None:
    from soundsearch.features import get_featurizer

    try:
        get_featurizer("aisfx")
    except FeaturizerError as exc:
        pytest.skip(f"aisfx weights not available: {exc}")


def test_aisfx_features_of_a_stored_file_are_what_featurizing_gives(tmp_path):
    # The default featurizer is deterministic: the stored items are what a query would compute,
    # to float rounding (a short query runs aisfx's network in numpy, indexing in torch).
    _aisfx_or_skip()
    lib = tmp_path / "lib"
    write_audio(lib / "a.wav", tone(440, 1.5, 44100), 44100)
    write_audio(lib / "b.flac", np.concatenate([chirp(seconds=3.0), noise_bursts(9.0, seed=2)]))
    index_paths(tmp_path / "store", [lib], jobs=1)
    with Store.open(tmp_path / "store") as st:
        for path in (lib / "a.wav", lib / "b.flac"):
            again = featurize_file(path, st.featurizer(), cutting=st.cutting)
            reused = query_features(st, path)
            assert reused.segments == list(again.segments)
            np.testing.assert_allclose(reused.feats, again.features, rtol=1e-4, atol=1e-5)


def test_a_cold_query_of_an_indexed_file_loads_no_torch(tmp_path):
    _aisfx_or_skip()
    lib = tmp_path / "lib"
    write_audio(lib / "a.wav", tone(440, 1.5, 44100), 44100)
    write_audio(lib / "b.wav", noise_bursts(2.0, seed=1))
    write_audio(lib / "c.wav", chirp(seconds=2.5))
    store = tmp_path / "store"
    index_paths(store, [lib], jobs=1)  # the default featurizer, for the default model
    env = {"SOUNDSEARCH_STORE": str(store), "SOUNDSEARCH_MODELS": str(tmp_path / "models")}
    doc, imported = cold_query([str(lib / "b.wav"), "--include-self"], env)
    assert imported["torch"] is False
    assert doc["results"][0]["is_query"] and doc["results"][0]["path"] == str(lib / "b.wav")
    # The same ranking as the file featurized again (with torch) and scored by the torch engine.
    from soundsearch.model.checkpoint import load_model
    from soundsearch.model.registry import resolve_model

    with Store.open(store) as st:
        engine = SearchEngine(st, load_model(resolve_model(None)))
        original = Store.unchanged_items
        try:
            Store.unchanged_items = lambda self, p: None
            again = engine.search(lib / "b.wav", k=10, include_self=True)
        finally:
            Store.unchanged_items = original
    assert [r["row"] for r in doc["results"]] == [r.item.row for r in again.results]
    assert [r["level"] for r in doc["results"]] == [r.level for r in again.results]
    np.testing.assert_allclose([r["score"] for r in doc["results"]], [r.score for r in again.results], atol=1e-5)
