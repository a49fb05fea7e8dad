"""The feature store on its own: records, alignment, compaction, recovery, locking, migrations."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from soundsearch.errors import FeaturizerMismatchError, StoreError, StoreLockedError, printable
from soundsearch.features import get_featurizer
from soundsearch.store import (
    ARRAYS,
    CATALOG,
    SCHEMA_VERSION,
    STATUS_FAILED,
    FileEntry,
    Store,
    store_lock,
)

T, D = 10, 128


@pytest.fixture(scope="module")
def fz():
    # The paper's (10, 128) items: the tests write synthetic arrays of that shape.
    return get_featurizer("logmel", stats="mean")


def entry(path: str, n_items: int, seed: int, size: int = 100, mtime_ns: int = 1) -> FileEntry:
    rng = np.random.default_rng(seed)
    return FileEntry(
        path=Path(path),
        size=size,
        mtime_ns=mtime_ns,
        duration=10.0 * n_items,
        samplerate=22050,
        channels=1,
        segments=[(10.0 * k, 10.0 * (k + 1)) for k in range(n_items)],
        features=rng.standard_normal((n_items, T, D)).astype(np.float32),
    )


def by_path(store: Store) -> dict[str, np.ndarray]:
    """Each path's stacked feature rows, read through items() + features()."""
    feats = store.features()
    out: dict[str, list[np.ndarray]] = {}
    for it in store.items():
        out.setdefault(str(it.path), []).append(np.asarray(feats[it.row]))
    return {k: np.stack(v) for k, v in out.items()}


def test_create_records_featurizer_and_starts_empty(tmp_path, fz):
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        assert st.featurizer_identity == fz.identity
        assert st.featurizer_spec == fz.spec()
        assert st.items() == []
        assert st.features().shape == (0, T, D)
        assert st.features().dtype == np.float32
        assert st.featurizer().identity == fz.identity
    with sqlite3.connect(tmp_path / "s" / CATALOG) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_missing_store_and_foreign_folder(tmp_path, fz):
    with pytest.raises(StoreError, match=r"no store at .*soundsearch index"):
        Store.open(tmp_path / "nothing")
    foreign = tmp_path / "music"
    foreign.mkdir()
    (foreign / "song.wav").write_bytes(b"x")
    with pytest.raises(StoreError, match="not empty and holds no soundsearch store"):
        Store.open(foreign, create=True, featurizer=fz)
    assert sorted(os.listdir(foreign)) == ["song.wav"]  # left untouched
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store.open(afile)


def test_featurizer_and_item_length_mismatch_refused(tmp_path, fz):
    Store.open(tmp_path / "s", create=True, featurizer=fz).close()
    other = get_featurizer("logmel", stats="mean,max")
    with pytest.raises(FeaturizerMismatchError, match="cannot be mixed") as exc:
        Store.open(tmp_path / "s", featurizer=other)
    assert other.identity in str(exc.value) and fz.identity in str(exc.value)
    with pytest.raises(FeaturizerMismatchError, match="5 s"):
        Store.open(tmp_path / "s", item_seconds=5.0)
    Store.open(tmp_path / "s", featurizer=get_featurizer("logmel", stats="mean"), item_seconds=10.0).close()


def test_rows_stay_aligned_through_update_removal_and_compaction(tmp_path, fz):
    st = Store.open(tmp_path / "s", create=True, featurizer=fz)
    a, b, c = entry("/lib/a.wav", 2, 1), entry("/lib/b.wav", 3, 2), entry("/lib/c.wav", 1, 3)
    with st.writer() as w:
        w.write_files([a, b])
        w.write_files([c])
    got = by_path(st)
    assert [str(i.path) for i in st.items()] == ["/lib/a.wav"] * 2 + ["/lib/b.wav"] * 3 + ["/lib/c.wav"]
    assert [i.row for i in st.items()] == list(range(6))
    for e in (a, b, c):
        np.testing.assert_array_equal(got[str(e.path)], e.features)
    # Straight after appends the features are a memory map of the array file, not a copy.
    assert isinstance(st.features().base, np.memmap)
    assert not st.features().flags.writeable
    fp1 = st.fingerprint()

    b2 = entry("/lib/b.wav", 1, 20, size=200)  # b changed and is shorter now
    with st.writer() as w:
        w.write_files([b2])
        w.remove_files([Path("/lib/a.wav")])
        assert w.holes() == 5  # a's 2 rows and b's old 3 rows
        # Before compaction the holes are skipped and rows still line up.
        st.refresh()
        got = by_path(st)
        assert set(got) == {"/lib/b.wav", "/lib/c.wav"}
        np.testing.assert_array_equal(got["/lib/b.wav"], b2.features)
        np.testing.assert_array_equal(got["/lib/c.wav"], c.features)
        assert w.compact() is True
        assert w.holes() == 0
    got = by_path(st)
    np.testing.assert_array_equal(got["/lib/b.wav"], b2.features)
    np.testing.assert_array_equal(got["/lib/c.wav"], c.features)
    assert st.features().shape == (2, T, D)
    assert isinstance(st.features().base, np.memmap)
    assert os.listdir(tmp_path / "s" / ARRAYS) == ["features-2.npy"]
    # The array file is a plain .npy anyone can load without pickle.
    on_disk = np.load(tmp_path / "s" / ARRAYS / "features-2.npy", mmap_mode="r", allow_pickle=False)
    np.testing.assert_array_equal(on_disk, st.features())
    assert st.fingerprint() != fp1
    assert st.items_for_path("/lib/b.wav")[0].end == 10.0
    assert st.items_for_path("/lib/a.wav") == []
    assert st.verify() == []
    st.close()


def test_failed_files_hold_no_items_and_are_reported(tmp_path, fz):
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry("/lib/ok.wav", 1, 1)])
            w.write_files([FileEntry(Path("/lib/ok.wav"), 5, 2, status=STATUS_FAILED, error="broken now")])
            w.compact()
        assert st.items() == []
        assert st.failures() == [(Path("/lib/ok.wav"), "broken now")]
        stats = st.stats()
        assert (stats.files, stats.items, stats.failures) == (0, 0, 1)
        assert st.verify() == []


def test_fingerprint_is_stable_without_writes(tmp_path, fz):
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry("/lib/a.wav", 1, 1)])
        fp = st.fingerprint()
    with Store.open(tmp_path / "s") as st:
        assert st.fingerprint() == fp
    with Store.open(tmp_path / "s2", create=True, featurizer=fz) as other:
        assert other.fingerprint() != fp


def test_undecodable_file_names_round_trip(tmp_path, fz):
    weird = os.fsdecode(b"/lib/caf\xe9 [take 1].wav")  # Latin-1 bytes: not valid UTF-8
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry(weird, 1, 1)])
        assert os.fsencode(st.items()[0].path) == b"/lib/caf\xe9 [take 1].wav"
        assert len(st.items_for_path(weird)) == 1
        assert printable(st.items()[0].path) == "/lib/caf\\xe9 [take 1].wav"
        assert list(st.files()) == [weird]


def test_leftovers_of_a_killed_writer_are_ignored_then_cleaned(tmp_path, fz):
    st = Store.open(tmp_path / "s", create=True, featurizer=fz)
    a = entry("/lib/a.wav", 2, 1)
    with st.writer() as w:
        w.write_files([a])
    arrays = tmp_path / "s" / ARRAYS
    array = arrays / "features-1.npy"
    committed_size = array.stat().st_size
    # What a kill between "rows written" and "catalog committed" leaves: rows past n_slots and a
    # header that already counts them, plus a half-written compaction output.
    with open(array, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(np.full((3, T, D), 7.0, np.float32).tobytes())
        from soundsearch.store.arrays import npy_header

        f.seek(0)
        f.write(npy_header(5, T, D))
    (arrays / "features-2.npy.tmp").write_bytes(b"half")
    (arrays / "features-2.npy").write_bytes(b"uncommitted")

    reader = Store.open(tmp_path / "s")
    assert len(reader.items()) == 2
    np.testing.assert_array_equal(by_path(reader)["/lib/a.wav"], a.features)
    assert reader.verify() == []

    with st.writer() as w:
        assert sorted(os.listdir(arrays)) == ["features-1.npy"]
        assert array.stat().st_size == committed_size
        w.write_files([entry("/lib/b.wav", 1, 2)])
    st.refresh()
    assert np.load(array, mmap_mode="r").shape == (3, T, D)
    np.testing.assert_array_equal(by_path(st)["/lib/a.wav"], a.features)
    assert [i.row for i in st.items()] == [0, 1, 2]
    reader.close()
    st.close()


def test_a_reader_keeps_its_snapshot_across_a_compaction(tmp_path, fz):
    st = Store.open(tmp_path / "s", create=True, featurizer=fz)
    a, b = entry("/lib/a.wav", 1, 1), entry("/lib/b.wav", 1, 2)
    with st.writer() as w:
        w.write_files([a, b])
    reader = Store.open(tmp_path / "s")
    before = by_path(reader)
    with st.writer() as w:
        w.remove_files(["/lib/a.wav"])
        w.compact()
    # The old file is unlinked but still mapped: the reader's view is intact and consistent.
    np.testing.assert_array_equal(by_path(reader)["/lib/a.wav"], before["/lib/a.wav"])
    reader.refresh()
    assert set(by_path(reader)) == {"/lib/b.wav"}
    np.testing.assert_array_equal(by_path(reader)["/lib/b.wav"], b.features)
    reader.close()
    st.close()


def test_second_writer_is_refused_with_a_clear_message(tmp_path, fz):
    st = Store.open(tmp_path / "s", create=True, featurizer=fz)
    with st.writer():
        with pytest.raises(StoreLockedError, match=rf"being updated by another soundsearch process \(pid {os.getpid()}\).*--wait"):
            with st.writer():
                pass
    with st.writer():  # released
        pass
    st.close()


def test_waiting_writer_gets_the_lock_when_released(tmp_path):
    order = []
    held = threading.Event()

    def holder():
        with store_lock(tmp_path):
            held.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    with store_lock(tmp_path, wait=True):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]


# The schema of version 1, spelled out as it was so the migration is tested against real data.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, duration REAL, samplerate INTEGER, channels INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')), error TEXT, indexed_at REAL NOT NULL);
CREATE TABLE items (id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    start_s REAL NOT NULL, end_s REAL NOT NULL, array_row INTEGER NOT NULL UNIQUE);
CREATE INDEX items_file ON items(file_id);
"""


def make_v1_store(path: Path, fz) -> np.ndarray:
    import json

    (path / ARRAYS).mkdir(parents=True)
    feats = np.arange(2 * T * D, dtype=np.float32).reshape(2, T, D)
    np.save(path / ARRAYS / "features-1.npy", feats, allow_pickle=False)
    db = sqlite3.connect(path / CATALOG)
    db.executescript(V1_SCHEMA)
    meta = {
        "store_id": "oldstore", "featurizer_spec": json.dumps(fz.spec()), "featurizer_identity": fz.identity,
        "steps": str(T), "dim": str(D), "item_seconds": "10.0", "array_file": "features-1.npy",
        "array_seq": "1", "n_slots": "2", "generation": "3", "created_at": "0",
    }
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    db.execute("INSERT INTO files VALUES (1, ?, 10, 5, 15.0, 44100, 2, 'ok', NULL, 0)", (b"/old/x.wav",))
    db.execute("INSERT INTO files VALUES (2, ?, 10, 5, NULL, NULL, NULL, 'failed', 'bad', 0)", (b"/old/y.wav",))
    db.executemany("INSERT INTO items VALUES (?, 1, ?, ?, ?)", [(1, 0.0, 10.0, 0), (2, 10.0, 15.0, 1)])
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    return feats


def test_version_1_store_is_migrated(tmp_path, fz):
    feats = make_v1_store(tmp_path / "s", fz)
    with Store.open(tmp_path / "s") as st:
        assert [(str(i.path), i.start, i.end, i.file_duration) for i in st.items()] == [
            ("/old/x.wav", 0.0, 10.0, 15.0),
            ("/old/x.wav", 10.0, 15.0, 15.0),
        ]
        np.testing.assert_array_equal(st.features(), feats)
        assert st.files()["/old/x.wav"].warnings == ()
        assert st.roots() == []
        assert st.stats().schema_version == SCHEMA_VERSION
        with st.writer() as w:  # and the migrated store takes writes
            w.add_roots([Path("/old")])
            w.write_files([entry("/old/z.wav", 1, 9)])
        assert st.roots() == [Path("/old")]
        assert len(st.items()) == 3
    with sqlite3.connect(tmp_path / "s" / CATALOG) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_store_from_a_newer_version_is_refused(tmp_path, fz):
    Store.open(tmp_path / "s", create=True, featurizer=fz).close()
    with sqlite3.connect(tmp_path / "s" / CATALOG) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer soundsearch"):
        Store.open(tmp_path / "s")


def test_corrupt_catalog_gives_a_friendly_error(tmp_path, fz):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / CATALOG).write_bytes(os.urandom(4096))
    with pytest.raises(StoreError, match=r"corrupt .*move the store folder away"):
        Store.open(tmp_path / "s")


def test_missing_feature_array_is_a_store_error(tmp_path, fz):
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry("/lib/a.wav", 1, 1)])
    os.unlink(tmp_path / "s" / ARRAYS / "features-1.npy")
    with Store.open(tmp_path / "s") as st:
        with pytest.raises(StoreError, match="lost its feature array"):
            st.features()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_store_reads_but_refuses_writes(tmp_path, fz):
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry("/lib/a.wav", 1, 1)])
    for p in [tmp_path / "s", tmp_path / "s" / ARRAYS]:
        os.chmod(p, 0o555)
    os.chmod(tmp_path / "s" / CATALOG, 0o444)
    try:
        with Store.open(tmp_path / "s") as st:
            assert len(st.items()) == 1
            with pytest.raises(StoreError, match="read-only"):
                with st.writer():
                    pass
    finally:
        for p in [tmp_path / "s", tmp_path / "s" / ARRAYS]:
            os.chmod(p, 0o755)


def test_a_failure_before_the_catalog_commit_leaves_no_trace(tmp_path, fz, monkeypatch):
    import soundsearch.store.arrays as arrays_mod

    st = Store.open(tmp_path / "s", create=True, featurizer=fz)
    a = entry("/lib/a.wav", 2, 1)
    with st.writer() as w:
        w.write_files([a])
    fp = st.fingerprint()

    # Die right after the feature rows hit the file, before anything is committed.
    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(arrays_mod.os, "fsync", broken_fsync)
        with st.writer() as w:
            with pytest.raises(StoreError, match="writing feature rows failed: Input/output error"):
                w.write_files([entry("/lib/b.wav", 3, 2)])
    with Store.open(tmp_path / "s") as reader:
        assert [str(i.path) for i in reader.items()] == ["/lib/a.wav"] * 2
        assert reader.fingerprint() == fp
        assert reader.verify() == []

    # Die during a compaction, after the new array is in place but before the catalog names it.
    with st.writer() as w:
        w.remove_files(["/lib/a.wav"])
        w.write_files([entry("/lib/c.wav", 1, 3)])
        with monkeypatch.context() as m:
            m.setattr(arrays_mod, "fsync_dir", lambda path: (_ for _ in ()).throw(OSError(28, "No space left on device")))
            with pytest.raises(StoreError, match="compacting the feature array failed: No space left"):
                w.compact()
    assert sorted(os.listdir(tmp_path / "s" / ARRAYS)) == ["features-1.npy", "features-2.npy"]
    with Store.open(tmp_path / "s") as reader:
        assert [str(i.path) for i in reader.items()] == ["/lib/c.wav"]
        assert reader.verify() == []
    with st.writer() as w:  # the next writer clears the orphan and compacts for real
        assert os.listdir(tmp_path / "s" / ARRAYS) == ["features-1.npy"]
        assert w.compact() is True
    st.refresh()
    assert os.listdir(tmp_path / "s" / ARRAYS) == ["features-2.npy"]
    assert len(st.items()) == 1 and st.verify() == []
    st.close()


def test_a_truncated_array_is_reported_not_padded(tmp_path, fz):
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry("/lib/a.wav", 2, 1)])
    array = tmp_path / "s" / ARRAYS / "features-1.npy"
    with open(array, "r+b") as f:
        f.truncate(128 + T * D * 4)  # one of two committed rows gone
    with Store.open(tmp_path / "s") as st:
        assert st.verify() == [f"array file features-1.npy holds {128 + T * D * 4} bytes, too few for 2 rows"]
        with pytest.raises(StoreError, match=r"catalog expects 2 rows .*index again"):
            st.features()
        with pytest.raises(StoreError, match="shorter than the catalog says"):
            with st.writer():
                pass
    assert array.stat().st_size == 128 + T * D * 4


@pytest.mark.parametrize("leftover", ["empty catalog", "tables without meta"])
def test_a_creation_killed_half_way_is_finished_by_the_next_index(tmp_path, leftover):
    from conftest import tone, write_audio
    from soundsearch.errors import StoreMissingError
    from soundsearch.indexing import index_paths

    store = tmp_path / "s"
    (store / ARRAYS).mkdir(parents=True)
    (store / ARRAYS / "features-1.npy.tmp").write_bytes(b"partial")
    with sqlite3.connect(store / CATALOG) as db:
        if leftover == "tables without meta":
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    with pytest.raises(StoreMissingError, match="no store at"):
        Store.open(store)
    write_audio(tmp_path / "lib" / "a.wav", tone(440, 0.3, 8000), 8000)
    report = index_paths(store, [tmp_path / "lib"], jobs=1)
    assert report.added == 1
    with Store.open(store) as st:
        assert len(st.items()) == 1 and st.verify() == []
    assert os.listdir(store / ARRAYS) == ["features-1.npy"]
