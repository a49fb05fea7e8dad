"""Every item of a snapshot as numpy columns (ItemTable), and the read-only sequence of
ItemRecords over it that `Store.items()` hands out (ItemView).

A million ItemRecords cost seconds to build and hundreds of MB to hold, while a query looks at
the records of a few dozen items; the columns serve the callers that look at every item, and
records are built on demand for the others.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Iterator

import numpy as np

from soundsearch.errors import StoreError, printable
from soundsearch.store.records import ItemRecord


class ItemTable:
    """Every item of one store state; row = position (the row of `Store.features()`).

    `paths`: the distinct path strings (os.fsdecode of the catalog's bytes) in order of their
    first row; `file_index` (int32) points into it. `start`, `end`, `file_duration` (float64)
    in seconds; `file_duration` is `end` where the catalog does not know the file's duration.
    The columns are read-only: every reader of the store shares them.
    """

    __slots__ = ("paths", "file_index", "start", "end", "file_duration", "_numbers", "_names")

    def __init__(self, paths: tuple[str, ...], file_index: np.ndarray, start: np.ndarray, end: np.ndarray,
                 file_duration: np.ndarray):
        self.paths = paths
        self.file_index = _frozen(file_index, np.int32)
        self.start = _frozen(start, np.float64)
        self.end = _frozen(end, np.float64)
        self.file_duration = _frozen(file_duration, np.float64)
        self._numbers: dict[str, int] | None = None
        self._names: tuple[str, ...] | None = None

    @classmethod
    def empty(cls) -> ItemTable:
        none = np.zeros(0, np.float64)
        return cls((), np.zeros(0, np.int32), none, none, none)

    def __len__(self) -> int:
        return int(self.file_index.shape[0])

    def record(self, row: int) -> ItemRecord:
        """The ItemRecord of `row` (0 <= row < len)."""
        row = int(row)
        return ItemRecord(row, self.paths[self.file_index[row]], float(self.start[row]), float(self.end[row]),
                          float(self.file_duration[row]))

    def records(self, rows) -> list[ItemRecord]:
        """The ItemRecords of `rows` (any iterable of rows), in that order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        paths = self.paths
        return [
            ItemRecord(r, paths[f], s, e, d)
            for r, f, s, e, d in zip(rows.tolist(), self.file_index[rows].tolist(), self.start[rows].tolist(),
                                     self.end[rows].tolist(), self.file_duration[rows].tolist())
        ]

    def path_names(self) -> tuple[str, ...]:
        """`paths` spelled as str(ItemRecord.path) spells them (pathlib's normal form). Index
        writes every path from a Path, so they are the same strings; only a path written
        otherwise pays for a Path (a million of them cost seconds)."""
        if self._names is None:
            self._names = tuple(p if _normal(p) else str(Path(p)) for p in self.paths)
        return self._names

    def file_number(self, path: str) -> int | None:
        """The index into `paths` of this path string, or None when no item has it."""
        if self._numbers is None:
            # Built on first use: a query asks for one path, and a million-file dict is not free.
            self._numbers = {p: i for i, p in enumerate(self.paths)}
        return self._numbers.get(path)

    def rows_of(self, path: str) -> np.ndarray:
        """The rows (ascending, int64) of the items of the file with this path string."""
        i = self.file_number(path)
        if i is None:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.file_index == i)

    def rows_by_file(self) -> list[np.ndarray]:
        """Per entry of `paths`, its rows (ascending, int64): every file's rows at once."""
        order = np.argsort(self.file_index, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(self.file_index, minlength=len(self.paths)))))
        return [order[bounds[i] : bounds[i + 1]] for i in range(len(self.paths))]


def _normal(p: str) -> bool:
    """Whether str(Path(p)) == p: no empty or "." parts, no trailing separator (POSIX)."""
    if not p or p == "." or "//" in p or "/./" in p:
        return False
    return not p.startswith("./") and not p.endswith(("/", "/."))


def _frozen(a: np.ndarray, dtype) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=dtype)
    a.flags.writeable = False
    return a


class ItemView(Sequence):
    """`Store.items()`: the ItemRecords of an ItemTable, by row, built when asked for.

    A read-only sequence (len, indexing with negative indices, slices as lists, iteration);
    equal to a list or tuple of the same records. Each access builds a new ItemRecord.
    """

    __slots__ = ("table",)

    def __init__(self, table: ItemTable):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index):
        n = len(self.table)
        if isinstance(index, slice):
            return self.table.records(range(*index.indices(n)))
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item index {index} out of range for {n} items")
        return self.table.record(i)

    def __iter__(self) -> Iterator[ItemRecord]:
        n = len(self.table)
        step = 65536  # records built a block at a time: iterating a large store holds one block
        for s in range(0, n, step):
            yield from self.table.records(range(s, min(n, s + step)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ItemView):
            return other.table is self.table or list(self) == list(other)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<ItemView of {len(self)} items>"


def table_from_catalog(items: np.ndarray, files: list[tuple], where) -> tuple[ItemTable, np.ndarray]:
    """(the ItemTable, each row's array-file row) from the catalog's two tables read flat
    (Catalog.item_columns): `items` (n, 4) float64 of (file id, start, end, array row) in any
    order, `files` (id, path bytes, duration or None). Items of no file are left out, as the
    join they replace left them out. `where`: the store folder, for the message of a catalog
    whose values are not numbers."""
    if not len(items):
        return ItemTable.empty(), np.zeros(0, np.int64)
    items = items[np.argsort(items[:, 3], kind="stable")]
    try:
        ids = np.fromiter((f[0] for f in files), dtype=np.int64, count=len(files))
        durations = np.array([np.nan if f[2] is None else f[2] for f in files], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise _damaged(where) from None
    by_id = np.argsort(ids, kind="stable")
    ids_sorted = ids[by_id]
    file_ids = items[:, 0].astype(np.int64)
    pos = np.searchsorted(ids_sorted, file_ids)
    known = pos < len(ids_sorted)
    known[known] = ids_sorted[pos[known]] == file_ids[known]
    if not known.all():
        items, pos = items[known], pos[known]
    which = by_id[pos]  # each item's index into `files`
    used, first = np.unique(which, return_index=True)
    used = used[np.argsort(first)]  # the files in order of their first row
    number = np.empty(len(files), np.int32)
    number[used] = np.arange(len(used), dtype=np.int32)
    paths = tuple(os.fsdecode(files[j][1]) for j in used.tolist())
    d = durations[which]
    end = items[:, 2]
    table = ItemTable(paths, number[which], items[:, 1], end, np.where(np.isnan(d), end, d))
    return table, items[:, 3].astype(np.int64)


def flat_columns(cursor, where) -> np.ndarray:
    """The rows of `cursor` (each of 4 numbers) as one (n, 4) float64 array, without keeping
    a Python tuple per row."""
    try:
        flat = np.fromiter(chain.from_iterable(cursor), dtype=np.float64)
    except (TypeError, ValueError):
        raise _damaged(where) from None
    return flat.reshape(-1, 4)


def _damaged(where) -> StoreError:
    return StoreError(
        f"the store catalog in {printable(where)} is damaged (an item or file row holds a value that is not a number): "
        "move the store folder away and index again"
    )
