"""The items read as arrays (store/items.py) and their copy in the store's cache, per catalog
generation (store/itemcache.py): the same items as the catalog holds, whichever way they were read."""

from __future__ import annotations

import errno
import os
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest

from soundsearch.features import get_featurizer
from soundsearch.store import CACHE, CATALOG, FileEntry, ItemRecord, ItemTable, ItemView, Store
from soundsearch.store.catalog import Catalog
from soundsearch.store.itemcache import ITEMS_VERSION, load_items

T, D = 10, 128


@pytest.fixture(scope="module")
def fz():
    return get_featurizer("logmel", stats="mean")


def entry(path, segments, seed: int, duration: float | None = None, size: int = 100, mtime_ns: int = 1) -> FileEntry:
    rng = np.random.default_rng(seed)
    return FileEntry(
        path=Path(os.fsdecode(path)),
        size=size,
        mtime_ns=mtime_ns,
        duration=duration,
        samplerate=22050,
        channels=1,
        segments=list(segments),
        features=rng.standard_normal((len(segments), T, D)).astype(np.float32),
    )


def catalog_items(store_dir: Path) -> list[tuple]:
    """(row, path bytes, start, end, file duration or end) of every item, straight from SQLite."""
    with sqlite3.connect(store_dir / CATALOG) as db:
        rows = db.execute(
            "SELECT f.path, i.start_s, i.end_s, f.duration FROM items i JOIN files f ON f.id = i.file_id "
            "ORDER BY i.array_row"
        ).fetchall()
    return [(r, bytes(p), s, e, e if d is None else d) for r, (p, s, e, d) in enumerate(rows)]


def as_tuples(items) -> list[tuple]:
    return [(i.row, os.fsencode(i.path), i.start, i.end, i.file_duration) for i in items]


def copies(store_dir: Path) -> list[str]:
    return sorted(p.name for p in (store_dir / CACHE).glob("*")) if (store_dir / CACHE).is_dir() else []


def only_copy(store_dir: Path) -> Path:
    (name,) = copies(store_dir)
    return store_dir / CACHE / name


def refuse_catalog_reads(monkeypatch) -> None:
    """Make reading the items from the catalog fail: a read that succeeds came from the copy."""

    def refuse(self, db):
        raise AssertionError("the items were read from the catalog, not from their copy")

    monkeypatch.setattr(Catalog, "item_columns", refuse)


# Thirds and tenths, so a value that went through text or float32 anywhere would show.
A = [(k / 3, k / 3 + 10.1) for k in range(3)]
B = [(0.0, 2.5), (20.0, 30.0), (7.5, 17.5)]  # an event item between two windows: rows out of time order


@pytest.fixture
def filled(tmp_path, fz):
    """A store of three files (b without a duration), then one changed (holes left, not compacted)."""
    path = tmp_path / "s"
    with Store.open(path, create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry("/lib/a.wav", A, 1, duration=31.7), entry("/lib/b.wav", B, 2, duration=None)])
            w.write_files([entry("/lib/c.wav", [(0.0, 1.25)], 3, duration=1.25)])
            w.write_files([entry("/lib/a.wav", A[:2], 4, duration=20.2, size=5)])  # a changed: 3 rows become holes
    return path


def test_the_table_is_what_the_catalog_holds(filled):
    want = catalog_items(filled)
    assert [w[1] for w in want] == [b"/lib/b.wav"] * 3 + [b"/lib/c.wav", b"/lib/a.wav", b"/lib/a.wav"]
    assert want[0][4] == 2.5 and want[2][4] == 17.5  # b has no duration: each item's end stands in
    for cold in ("catalog", "copy"):
        with Store.open(filled) as st:
            table = st.item_table()
            assert as_tuples(st.items()) == want, cold
            assert table.paths == ("/lib/b.wav", "/lib/c.wav", "/lib/a.wav")  # in order of their first row
            assert table.file_index.dtype == np.int32 and table.file_index.tolist() == [0, 0, 0, 1, 2, 2]
            assert table.start.dtype == table.end.dtype == table.file_duration.dtype == np.float64
            assert table.start.tolist() == [w[2] for w in want]
            assert table.end.tolist() == [w[3] for w in want]
            assert table.file_duration.tolist() == [2.5, 30.0, 17.5, 1.25, 20.2, 20.2]
            assert not table.start.flags.writeable and not table.file_index.flags.writeable
            # Rows line up with the features although the array file has holes.
            feats = st.features()
            assert feats.shape[0] == 6
            np.testing.assert_array_equal(feats[4:], entry("/lib/a.wav", A[:2], 4).features)
            np.testing.assert_array_equal(feats[:3], entry("/lib/b.wav", B, 2).features)
        assert copies(filled) == [only_copy(filled).name]


def test_items_behave_like_the_list_they_were(filled):
    want = [ItemRecord(r, os.fsdecode(p), s, e, d) for r, p, s, e, d in catalog_items(filled)]
    with Store.open(filled) as st:
        items = st.items()
        assert isinstance(items, ItemView)
        assert len(items) == 6
        assert items == want and want == items and items == tuple(want)
        assert items != want[:-1] and items != want[::-1] and items != []
        assert items[0] == want[0] and items[5] == want[5]
        assert items[-1] == want[-1] and items[-6] == want[0]
        assert items[np.int64(3)] == want[3]
        for bad in (6, -7):
            with pytest.raises(IndexError):
                items[bad]
        assert items[1:3] == want[1:3] and isinstance(items[1:3], list)
        assert items[::-2] == want[::-2] and items[4:100] == want[4:] and items[3:1] == []
        assert list(items) == want and [i.row for i in items] == list(range(6))
        assert want[4] in items and items.index(want[4]) == 4
        assert list(reversed(items)) == want[::-1]
        assert st.items() == items  # another view of the same snapshot
        # Built on demand, but the same record as before: equal and equally hashed, paths as Paths.
        assert hash(items[2]) == hash(want[2])
        assert items[2].path == Path("/lib/b.wav")
        assert [i.row for i in st.items_for_path("/lib/a.wav")] == [4, 5]
        assert st.items_for_path("/lib/nothing.wav") == []
        with pytest.raises(TypeError):
            items[0] = want[0]  # read-only: every reader shares the table


def test_unchanged_items_come_in_time_order(tmp_path, fz):
    audio = Path(os.path.realpath(tmp_path)) / "lib" / "long.wav"
    audio.parent.mkdir()
    audio.write_bytes(b"x" * 321)
    st_ = audio.stat()
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry(str(audio), B, 1, duration=30.0, size=st_.st_size, mtime_ns=st_.st_mtime_ns)])
    with Store.open(tmp_path / "s") as st:
        got = st.unchanged_items(audio)
        assert [(i.row, i.start) for i in got] == [(0, 0.0), (2, 7.5), (1, 20.0)]
        assert [i.row for i in st.items_for_path(audio)] == [0, 1, 2]


def test_the_copy_is_used_by_the_next_reader(filled, monkeypatch):
    want = catalog_items(filled)
    with Store.open(filled) as st:
        assert as_tuples(st.items()) == want
        gen = st.fingerprint().rsplit("-", 1)[1]
    path = only_copy(filled)
    assert path.name == f"items-{st.store_id}-g{gen}-v{ITEMS_VERSION}.npz"
    with zipfile.ZipFile(path) as z:  # plain arrays, no pickles
        assert all(n.endswith(".npy") for n in z.namelist())
    stamp = path.stat().st_mtime_ns
    refuse_catalog_reads(monkeypatch)
    with Store.open(filled) as st:
        assert as_tuples(st.items()) == want
        np.testing.assert_array_equal(st.features()[3], entry("/lib/c.wav", [(0.0, 1.25)], 3).features[0])
    assert path.stat().st_mtime_ns == stamp  # read, not written again


@pytest.mark.parametrize("change", ["index", "update", "remove", "compact", "by hand"])
def test_a_copy_of_an_older_state_is_not_used(filled, change):
    with Store.open(filled) as st:
        st.items()
    old = only_copy(filled)
    with Store.open(filled) as st:
        if change == "by hand":
            # Edited outside soundsearch, so the generation stays: the item count gives it away.
            with sqlite3.connect(filled / CATALOG) as db:
                db.execute("DELETE FROM items WHERE start_s = 20.0")
        else:
            with st.writer() as w:
                if change == "index":
                    w.write_files([entry("/lib/d.wav", [(0.0, 10.0)], 5, duration=10.0)])
                elif change == "update":
                    w.write_files([entry("/lib/c.wav", [(0.0, 4.0), (4.0, 8.0)], 6, duration=8.0, size=9)])
                elif change == "remove":
                    w.remove_files(["/lib/b.wav"])
                else:
                    assert w.compact() is True
    want = catalog_items(filled)
    with Store.open(filled) as st:
        assert as_tuples(st.items()) == want
        assert st.features().shape[0] == len(want)
    if change == "by hand":
        assert copies(filled) == [old.name]  # the same generation's name, now holding the catalog's items
    else:
        assert not old.exists() and len(copies(filled)) == 1  # replaced by the new state's copy
    with Store.open(filled) as st:
        assert as_tuples(st.items()) == want


def _garble(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped byte":
        i = data.index(b"/lib/") + 2  # inside the stored paths: only the zip checksum can tell
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :])
    elif how == "not a zip":
        path.write_bytes(os.urandom(len(data)))
    elif how == "another generation":
        with np.load(path) as z:
            arrays = dict(z)
        arrays["meta"] = arrays["meta"] + np.array([0, 1, 0, 0])
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    elif how == "short column":
        with np.load(path) as z:
            arrays = dict(z)
        arrays["start"] = arrays["start"][:-1]
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    elif how == "pickled":
        with np.load(path) as z:
            arrays = dict(z)
        arrays["paths"] = np.array(["/lib/b.wav"], dtype=object)
        with open(path, "wb") as f:
            np.savez(f, **arrays)


@pytest.mark.parametrize(
    "how", ["empty", "truncated", "flipped byte", "not a zip", "another generation", "short column", "pickled"]
)
def test_a_damaged_copy_is_ignored_and_rebuilt(filled, how):
    want = catalog_items(filled)
    with Store.open(filled) as st:
        st.items()
        gen = int(st.fingerprint().rsplit("-", 1)[1])
    path = only_copy(filled)
    good = path.read_bytes()
    _garble(path, how)
    assert path.read_bytes() != good
    assert load_items(path, gen) is None
    with Store.open(filled) as st:
        assert as_tuples(st.items()) == want
    assert copies(filled) == [path.name]
    assert load_items(path, gen) is not None  # written again, whole
    table, slots = load_items(path, gen)
    assert slots.tolist() == [3, 4, 5, 6, 7, 8]  # a's first 3 rows are holes


def test_a_store_that_cannot_take_the_copy_still_reads(filled, monkeypatch):
    """A full disk (or an unwritable folder) keeps the items in memory; nothing is left behind."""
    import soundsearch.store.itemcache as itemcache

    real_savez = np.savez

    def full_disk(f, **arrays):
        real_savez(f, **arrays)  # a file half written ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... when the disk filled

    monkeypatch.setattr(itemcache.np, "savez", full_disk)
    want = catalog_items(filled)
    with Store.open(filled) as st:
        assert as_tuples(st.items()) == want
    assert copies(filled) == []
    monkeypatch.setattr(itemcache.np, "savez", real_savez)
    (filled / CACHE).rmdir()
    (filled / CACHE).write_bytes(b"a file where the folder should be")
    with Store.open(filled) as st:
        assert as_tuples(st.items()) == want


def test_a_read_only_store_uses_a_copy_it_finds_and_writes_none(filled, monkeypatch):
    # Root ignores permissions, so the store is made to look read-only as Store.open decides it.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: mode != os.W_OK and real_access(p, mode, **kw))
    want = catalog_items(filled)
    with Store.open(filled) as st:
        assert st.readonly
        assert as_tuples(st.items()) == want
    assert copies(filled) == []
    monkeypatch.setattr(os, "access", real_access)
    with Store.open(filled) as st:
        st.items()  # a writable reader leaves a copy
    path = only_copy(filled)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: mode != os.W_OK and real_access(p, mode, **kw))
    refuse_catalog_reads(monkeypatch)
    with Store.open(filled) as st:
        assert st.readonly
        assert as_tuples(st.items()) == want
    assert copies(filled) == [path.name]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_store_folder_without_write_permission_reads_without_a_copy(filled):
    want = catalog_items(filled)
    for p in (filled, filled / "arrays"):
        os.chmod(p, 0o555)
    os.chmod(filled / CATALOG, 0o444)
    try:
        with Store.open(filled) as st:
            assert as_tuples(st.items()) == want
        assert copies(filled) == []
    finally:
        for p in (filled, filled / "arrays"):
            os.chmod(p, 0o755)
        os.chmod(filled / CATALOG, 0o644)


# Not UTF-8: Latin-1, a sequence cut short at the end of a name, a UTF-8-encoded surrogate; and
# a valid 4-byte character.
NAMES = [b"/lib/caf\xe9 [take 1].wav", b"/lib/cut short \xe2\x82", b"/lib/\xed\xa0\x80.wav", b"/lib/\xf0\x9f\x8e\xb5.wav"]


def test_names_that_are_not_utf8_round_trip_through_the_copy(tmp_path, fz, monkeypatch):
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        with st.writer() as w:
            w.write_files([entry(n, [(0.0, 1.0), (1.0, 2.0)], k, duration=2.0) for k, n in enumerate(NAMES)])
        assert [os.fsencode(i.path) for i in st.items()] == [n for n in NAMES for _ in range(2)]
    refuse_catalog_reads(monkeypatch)
    with Store.open(tmp_path / "s") as st:
        assert [os.fsencode(i.path) for i in st.items()] == [n for n in NAMES for _ in range(2)]
        assert st.item_table().paths == tuple(os.fsdecode(n) for n in NAMES)
        for k, n in enumerate(NAMES):
            assert [i.row for i in st.items_for_path(os.fsdecode(n))] == [2 * k, 2 * k + 1]


def test_copies_of_older_states_and_other_stores_are_removed(filled):
    with Store.open(filled) as st:
        st.items()
        gen = int(st.fingerprint().rsplit("-", 1)[1])
        sid = st.store_id
    current = only_copy(filled)
    current.unlink()
    cache = filled / CACHE
    older = cache / f"items-{sid}-g{gen - 1}-v{ITEMS_VERSION}.npz"
    newer = cache / f"items-{sid}-g{gen + 1}-v{ITEMS_VERSION}.npz"  # a reader ahead of us may have written it
    other_store = cache / f"items-0123456789ab-g{gen}-v{ITEMS_VERSION}.npz"
    other_layout = cache / f"items-{sid}-g{gen}-v{ITEMS_VERSION + 1}.npz"
    abandoned = cache / f".{current.name}.abcd1234.tmp"  # a writer killed before its rename
    search = cache / "search-whatever.npy"  # not ours to judge
    for p in (older, newer, other_store, other_layout, abandoned, search):
        p.write_bytes(b"x")
    with Store.open(filled) as st:
        st.items()
    assert copies(filled) == sorted([current.name, newer.name, search.name])


def test_an_empty_store_has_an_empty_table(tmp_path, fz):
    with Store.open(tmp_path / "s", create=True, featurizer=fz) as st:
        assert st.items() == [] and len(st.item_table()) == 0 and list(st.items()) == []
        assert st.item_table().paths == ()
        with pytest.raises(IndexError):
            st.items()[0]
    with Store.open(tmp_path / "s") as st:
        assert st.items() == [] and st.features().shape == (0, T, D)


def test_item_table_records_and_rows():
    table = ItemTable(("/x.wav", "/y.wav"), np.array([0, 1, 0]), np.array([0.0, 1.0, 2.0]),
                      np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 3.0]))
    assert table.records([2, 0]) == [ItemRecord(2, "/x.wav", 2.0, 3.0, 3.0), ItemRecord(0, "/x.wav", 0.0, 1.0, 3.0)]
    assert table.record(1) == ItemRecord(1, "/y.wav", 1.0, 2.0, 2.0)
    assert type(table.record(1).row) is int and type(table.record(1).start) is float
    assert table.rows_of("/x.wav").tolist() == [0, 2] and table.rows_of("/z.wav").tolist() == []
    assert [r.tolist() for r in table.rows_by_file()] == [[0, 2], [1]]


def test_path_names_are_what_record_paths_spell():
    odd = ("/lib/a.wav", "/lib//b.wav", "/lib/./c.wav", "rel/d.wav/", "/lib/e.wav")
    table = ItemTable(odd, np.arange(5), np.zeros(5), np.ones(5), np.ones(5))
    assert table.path_names() == ("/lib/a.wav", "/lib/b.wav", "/lib/c.wav", "rel/d.wav", "/lib/e.wav")
    assert table.path_names() == tuple(str(table.record(r).path) for r in range(5))


def test_long_recordings_from_the_columns_match_a_walk_over_the_items(filled):
    from soundsearch.search.prints import long_hours, long_recordings

    with Store.open(filled) as st:
        with st.writer() as w:  # c, short, between two long ones; d long, last
            w.write_files([entry("/lib/d.wav", [(0.0, 10.0), (10.0, 20.0)], 7, duration=20.0)])
        limit = st.cutting.item_seconds + 1e-6
        walked: dict[str, list[int]] = {}
        for it in st.items():
            if it.file_duration > limit:
                walked.setdefault(str(it.path), []).append(it.row)
        got = long_recordings(st)
        # b has no duration: only its items ending after item_seconds count, as each item's end stands in.
        assert list(got.items()) == list(walked.items()) == [
            ("/lib/b.wav", [1, 2]), ("/lib/a.wav", [4, 5]), ("/lib/d.wav", [6, 7])
        ]
        assert long_hours(st, got) == (30.0 + 20.2 + 20.0) / 3600.0
        # What a search asks first (is the scan within INSIDE_MAX_HOURS?), without the path map.
        from soundsearch.search.prints import PrintCache

        cache = PrintCache(filled, writable=False)
        assert cache.hours(st) == pytest.approx((30.0 + 20.2 + 20.0) / 3600.0, rel=1e-12)
        assert cache._longs is None and cache._states is None
