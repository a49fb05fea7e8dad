"""Prefetching scattered rows of memory-mapped arrays (store/mapped.py): the advised ranges
cover exactly the pages of the rows asked for, and arrays in memory are left alone."""

from __future__ import annotations

import mmap

import numpy as np

from soundsearch.store.mapped import prefetch_rows, row_ranges


def _covered(ranges, lo, hi) -> bool:
    return any(s <= lo and hi <= s + n for s, n in ranges)


def test_ranges_cover_each_row_page_aligned(tmp_path):
    arr = np.arange(5000 * 300, dtype=np.float32).reshape(5000, 300)  # 1,200-byte rows
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    rows = np.array([4999, 3, 2500, 2501, 17, 3])
    mapping, ranges = row_ranges(mm, rows)
    header = mm.offset  # np.load maps the file from its start: the data begin after the header
    for r in set(rows.tolist()):
        assert _covered(ranges, header + r * 1200, header + (r + 1) * 1200)
    assert all(s % mmap.PAGESIZE == 0 for s, _ in ranges)
    # Far-apart rows are separate ranges, not one span over the whole file.
    assert sum(n for _, n in ranges) < 4 * 64 * 1024 + 4 * 1200
    assert len(mapping) >= header + mm.nbytes
    # A view of the mapping: its rows are found relative to the same mapping.
    view = mm[1000:]
    _, ranges = row_ranges(view, np.array([10]))
    assert _covered(ranges, header + 1010 * 1200, header + 1011 * 1200)
    prefetch_rows(mm, rows)  # advice only: the data are unchanged
    np.testing.assert_array_equal(mm[np.sort(rows)], arr[np.sort(rows)])


def test_arrays_in_memory_and_empty_rows_need_nothing(tmp_path):
    assert row_ranges(np.zeros((10, 4), np.float32), np.array([1, 2])) is None
    np.save(tmp_path / "b.npy", np.zeros((10, 4), np.float32))
    assert row_ranges(np.load(tmp_path / "b.npy", mmap_mode="r"), np.array([], dtype=np.int64)) is None
    prefetch_rows(np.zeros((3, 3)), np.array([0]))
