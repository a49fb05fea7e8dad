"""Bounded fuzzing of the parsers that read outside input (hypothesis, derandomized).

Dataset CSVs, model headers, store metadata and audio headers are data from files a user (or
anyone) hands us: whatever is in them, only the project's own typed errors may escape, and a
store that is refused is left exactly as it was. Each fuzzer runs a fixed, seeded set of
examples so CI is deterministic and bounded (the whole file takes seconds).
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from soundsearch import audio
from soundsearch.datasets import csv as dcsv
from soundsearch.errors import (
    AudioError,
    DatasetError,
    ModelError,
    SoundsearchError,
    StoreError,
)
from soundsearch.taxonomy import Taxonomy


def fuzz(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                               HealthCheck.data_too_large],
    )


def only(exc_type: type[SoundsearchError], fn, *args, **kwargs):
    """fn's result, or None when it raised exc_type; any other exception fails the test."""
    try:
        result = fn(*args, **kwargs)
    except exc_type as exc:
        assert str(exc), "a typed error must say what is wrong"
        event(f"{fn.__name__}: {type(exc).__name__}")  # see --hypothesis-show-statistics
        return None
    event(f"{fn.__name__}: ok")
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


# ---- dataset CSVs -------------------------------------------------------------------------

HEADER_NAMES = ["path", "Path ", "split", "labels", "dog", "engine", "music", "", " ", "a,b", 'q"',
                "machinery-impact", "human-speech", "x\ty", "é"]
CELLS = ["a.wav", "b.wav", "c.wav", "sub/d.wav", "missing.wav", "/abs/x.wav", "~/y.wav", "", " ",
         "0", "1", "1.0", "true", "2", "-1", "nan", "train", "test", "validate", "val", "TEST",
         "engine", "dog;music", "music;;dog", "engine;unknown", '"', "a\nb", "\x00", "é", "\ufeff"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("csv")
    for name in ("a.wav", "b.wav", "c.wav", "sub/d.wav"):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(b"")
    return root


@st.composite
def near_valid_tables(draw):
    """A well-formed labels table of either shape, with a few cells or names then fuzzed."""
    if draw(st.booleans()):
        header = ["path", "split", "dog", "engine", "music"]
        valid = lambda col: {"path": ["a.wav", "b.wav", "c.wav", "sub/d.wav"], "split": ["train", "test", "val"]}.get(
            col, ["0", "1"])
    else:
        header = ["path", "labels", "split"]
        valid = lambda col: {"path": ["a.wav", "b.wav", "c.wav", "sub/d.wav"], "split": ["train", "test"]}.get(
            col, ["engine", "dog;music", "music"])
    header = draw(st.permutations(header))
    if draw(st.booleans()):
        header = [h for h in header if h != "split"]
    paths = draw(st.permutations(["a.wav", "b.wav", "c.wav", "sub/d.wav"]))
    rows = []
    for i, p in enumerate(paths):
        rows.append([p if h == "path" else ("train" if h == "split" and i < 2 else draw(st.sampled_from(valid(h))))
                     for h in header])
    for _ in range(draw(st.integers(0, 2))):
        r = draw(st.integers(0, len(rows)))
        target = header if r == len(rows) else rows[r]
        target[draw(st.integers(0, len(target) - 1))] = draw(st.sampled_from(CELLS) | st.text(max_size=6))
    return header, rows


random_tables = st.tuples(
    st.lists(st.sampled_from(HEADER_NAMES) | st.text(max_size=6), min_size=0, max_size=6),
    st.lists(st.lists(st.sampled_from(CELLS) | st.text(max_size=6), max_size=7), max_size=8),
)


@fuzz(300)
@given(
    table=near_valid_tables() | random_tables,
    raw=st.booleans(),
    encoding=st.sampled_from(ENCODINGS),
    suffix=st.sampled_from([".csv", ".tsv", ".CSV"]),
    seed=st.integers(0, 2**32 - 1) | st.just(0),
    taxonomy=st.sampled_from([None, None, Taxonomy(("dog", "engine", "music")), Taxonomy.default()]),
    junk=st.none() | st.binary(min_size=1, max_size=16),
)
def test_fuzzed_dataset_csv_raises_only_dataset_errors(csv_root, table, raw, encoding, suffix, seed, taxonomy, junk):
    header, rows = table
    delim = "\t" if suffix == ".tsv" else ","
    if raw:  # no quoting: quotes, delimiters and newlines in cells break the shape as they will
        text = "\n".join(delim.join(r) for r in [header] + rows)
    else:
        buf = io.StringIO()
        import csv as pycsv

        w = pycsv.writer(buf, delimiter=delim)
        w.writerow(header)
        w.writerows(rows)
        text = buf.getvalue()
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    if junk is not None:
        data = data[: seed % (len(data) + 1)] + junk + data[seed % (len(data) + 1):]
    path = csv_root / f"labels{suffix}"
    path.write_bytes(data)
    ds = only(DatasetError, dcsv.load, path, seed=seed, taxonomy=taxonomy)
    if ds is not None:
        assert ds.train and ds.test
        for ex in ds.train + ds.test + ds.validate:
            assert ex.path.is_file()
            assert ex.labels.shape == (len(ds.taxonomy),)


# ---- model headers ------------------------------------------------------------------------

HEADER_PATHS = [
    ("format",), ("format_version",), ("config",), ("config", "steps"), ("config", "dim"),
    ("config", "n_categories"), ("config", "tower"), ("config", "head"), ("config", "siamese"),
    ("config", "per_category"), ("config", "attention"), ("config", "dropout"), ("config", "context"),
    ("config", "variant"), ("config", "unknown"), ("taxonomy",), ("featurizer",), ("featurizer", "spec"),
    ("featurizer", "identity"), ("meta",), ("meta", "epochs"), ("meta", "validation"),
    ("meta", "validation", "loss"),
]
DELETE = object()


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join_safetensors(st_header: dict, body: bytes) -> bytes:
    text = json.dumps(st_header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


class Blob(bytes):
    """Bytes whose repr stays short in hypothesis' report of a failing example."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> Blob:
    import torch

    from soundsearch.model.checkpoint import save_model
    from test_model import loaded, make_net

    torch.set_num_threads(1)
    m = loaded(make_net())
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(path, m.net, m.config, m.taxonomy, m.featurizer_spec, m.featurizer_identity, m.norm_mean,
               m.norm_std, meta=m.meta)
    return Blob(path.read_bytes())


def _check_model(path: Path) -> None:
    from soundsearch.model import registry
    from soundsearch.model.arrays import load_arrays
    from soundsearch.model.checkpoint import load_model

    only(ModelError, registry.read_header, path)
    info = registry.model_info(path)  # reports problems in .error; never raises
    assert info.error is None or info.error
    json.dumps(info.to_json(), allow_nan=False)
    m = only(ModelError, load_model, path)
    if m is not None:
        assert len(m.taxonomy) == m.config.n_categories
    # The torch-free loader (a query's) accepts and refuses exactly the same files.
    a = only(ModelError, load_arrays, path)
    assert (a is None) == (m is None)


@fuzz(200)
@given(
    edits=st.lists(st.tuples(st.sampled_from(HEADER_PATHS), json_values | st.just(DELETE)), min_size=1, max_size=3),
)
@example(edits=[(("config", "tower"), [0.5])])
@example(edits=[(("taxonomy",), ["dog"] * 8)])
@example(edits=[(("taxonomy",), None)])  # found by this fuzzer: model_info raised TypeError
@example(edits=[(("meta",), [])])
@example(edits=[(("featurizer",), "logmel")])
@example(edits=[(("taxonomy",), [float("nan")] * 8)])
def test_fuzzed_model_header_raises_only_model_errors(tmp_path, model_bytes, edits):
    st_header, body = _split_safetensors(model_bytes)
    header = json.loads(st_header["__metadata__"]["soundsearch"])
    for keys, value in edits:
        node = header
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    st_header["__metadata__"]["soundsearch"] = json.dumps(header)
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(_join_safetensors(st_header, body))
    _check_model(path)


@fuzz(150)
@given(
    metadata=st.none() | st.text(max_size=40) | json_values.map(json.dumps),
    other=st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2),
)
def test_fuzzed_model_metadata_text_raises_only_model_errors(tmp_path, model_bytes, metadata, other):
    st_header, body = _split_safetensors(model_bytes)
    md = dict(other)
    if metadata is not None:
        md["soundsearch"] = metadata
    st_header["__metadata__"] = md
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(_join_safetensors(st_header, body))
    _check_model(path)


@fuzz(200)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 10**6),
    in_header=st.booleans(),
)
@example(flips=[], cut=0, in_header=False)
@example(flips=[], cut=7, in_header=False)
@example(flips=[(7, 255)], cut=None, in_header=False)
def test_corrupt_model_bytes_raise_only_model_errors(tmp_path, model_bytes, flips, cut, in_header):
    data = bytearray(model_bytes)
    (n,) = struct.unpack("<Q", model_bytes[:8])
    span = 8 + n if in_header else len(data)
    for pos, byte in flips:
        data[pos % span] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    _check_model(path)


# ---- store metadata -----------------------------------------------------------------------

META_KEYS = ["store_id", "featurizer_spec", "featurizer_identity", "steps", "dim", "item_seconds", "item_hop",
             "event_items", "array_file", "array_seq", "n_slots", "generation", "created_at", "unknown"]
META_VALUES = (
    st.text(max_size=12)
    | st.integers(-2**63, 2**63 - 1)
    | st.floats()
    | st.binary(max_size=8)
    | st.sampled_from(["0", "1", "-1", "10", "1e9", "nan", "inf", "-0.0", " 5 ", "5_0", "٣", "99999999999999999999",
                       "features-1.npy", "features-2.npy", "features-01.npy", "../features-1.npy", "{}", "[]",
                       '{"name": "logmel"}', '{"name": "nope"}', '{"name": "logmel", "params": {"n_mels": -1}}'])
    | json_values.map(json.dumps)
)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    from soundsearch.features import get_featurizer
    from soundsearch.store import FileEntry, Store

    fz = get_featurizer("logmel", stats="mean")
    path = tmp_path_factory.mktemp("store") / "s"
    rng = np.random.default_rng(0)
    with Store.open(path, create=True, featurizer=fz) as store, store.writer() as w:
        feats = rng.normal(size=(3, fz.steps, fz.dim)).astype(np.float32)
        w.write_files([FileEntry(path=Path(f"/lib/f{i}.wav"), size=1, mtime_ns=i, duration=10.0,
                                 samplerate=22050, channels=1, segments=[(0.0, 10.0)], features=feats[i : i + 1])
                       for i in range(3)])
    return path


def _sizes(store: Path) -> dict[str, int]:
    return {p.relative_to(store).as_posix(): p.stat().st_size for p in sorted((store / "arrays").iterdir())}


@fuzz(200)
@given(edits=st.lists(st.tuples(st.sampled_from(META_KEYS), META_VALUES | st.none()), min_size=1, max_size=3))
def test_fuzzed_store_meta_raises_only_store_errors(base_store, edits):
    from soundsearch.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        shutil.copytree(base_store, path)
        db = sqlite3.connect(path / "catalog.sqlite")
        for key, value in edits:
            if value is None:
                db.execute("DELETE FROM meta WHERE key=?", (key,))
            else:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        db.commit()
        db.close()
        before = _sizes(path)
        store = only(StoreError, Store.open, path)
        if store is None:
            assert _sizes(path) == before, "a refused store must be left as it was"
            assert (path / "catalog.sqlite").is_file()
            return
        with store:
            # Reading what the meta rows describe: still only typed errors.
            for read in (store.items, store.features, store.stats, store.featurizer):
                only(SoundsearchError, read)
        assert _sizes(path) == before


# ---- audio headers ------------------------------------------------------------------------

def _wav(subtype: str = "PCM_16", sr: int = 8000, channels: int = 1, frames: int = 400) -> bytes:
    buf = io.BytesIO()
    t = np.arange(frames) / sr
    sig = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(buf, np.repeat(sig[:, None], channels, axis=1), sr, subtype=subtype, format="WAV")
    return buf.getvalue()


WAVS = [_wav(), _wav("FLOAT", 22050, 2), _wav("PCM_24", 16000), _wav("PCM_U8", 11025)]
AUDIO_EXTS = [".wav", ".flac", ".mp3", ".ogg", ".aiff", ".m4a", ".opus", ".WAV", ""]


def _check_audio(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = only(AudioError, audio.probe, path)
        if info is not None:
            assert info.samplerate > 0 and info.channels > 0 and info.frames > 0
        loaded_audio = only(AudioError, audio.load, path, 16000)
        if loaded_audio is not None:
            assert np.isfinite(loaded_audio.signal).all()


@fuzz(250)
@given(
    which=st.integers(0, len(WAVS) - 1),
    edits=st.lists(st.tuples(st.integers(0, 63), st.binary(min_size=1, max_size=4)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 2000),
    ext=st.sampled_from(AUDIO_EXTS[:2] + [".aiff"]),
)
def test_fuzzed_wav_header_raises_only_audio_errors(tmp_path, which, edits, cut, ext):
    data = bytearray(WAVS[which])
    for pos, chunk in edits:
        data[pos : pos + len(chunk)] = chunk
    if cut is not None:
        data = data[:cut]
    path = tmp_path / f"x{ext}"
    path.write_bytes(bytes(data))
    _check_audio(path)


@fuzz(100)
@given(
    data=st.binary(max_size=512) | st.sampled_from([b"RIFF", b"fLaC", b"ID3", b"OggS", b"FORM"]).flatmap(
        lambda magic: st.binary(max_size=256).map(lambda rest: magic + rest)),
    ext=st.sampled_from(AUDIO_EXTS),
)
def test_random_bytes_with_audio_extensions_raise_only_audio_errors(tmp_path, data, ext):
    path = tmp_path / f"y{ext}"
    path.write_bytes(data)
    _check_audio(path)
