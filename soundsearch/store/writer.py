"""The store's one writer, valid while the store's lock is held (see `Store.writer`).

Crash safety rests on one ordering rule: feature rows are appended to the array file and
fsync'ed *before* the catalog transaction that points items at them commits. The catalog's
`n_slots` is the authority on how many rows of the array are valid; rows past it are leftovers
of a killed run and the next writer truncates them (`recover`). Rows whose items were deleted (a
file changed or disappeared) become holes; `compact` writes a new array file without them,
commits the new row numbers and file name in one transaction, and only then unlinks the old
file. So at every instant the catalog points at complete, durable rows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from soundsearch import faults
from soundsearch.errors import StoreError, printable
from soundsearch.store.arrays import (
    HEADER_BYTES,
    append_rows,
    array_name,
    fsync_dir,
    raw_rows,
    read_npy_header,
    row_crc,
    truncate_rows,
    write_new_array,
)
from soundsearch.store.folder import ARRAYS, CATALOG, os_errors
from soundsearch.store.records import STATUS_OK, FileEntry

if TYPE_CHECKING:
    from soundsearch.store.store import Store


class StoreWriter:
    """Write access to a store, valid while its lock is held (see `Store.writer`)."""

    def __init__(self, store: Store):
        self.store = store
        self.catalog = store.catalog
        self._rows_bytes = store.steps * store.dim * 4

    # The committed state is re-read from the catalog before every step rather than cached: a
    # Ctrl-C between a COMMIT and a cache update must not leave the writer believing stale
    # row counts (it would then overwrite committed rows).
    @property
    def _n_slots(self) -> int:
        return self.catalog.array_meta()[0]

    @property
    def _array_path(self) -> Path:
        return self.store.path / ARRAYS / self.catalog.array_meta()[1]

    def recover(self) -> None:
        """Drop what a killed writer left behind: rows past n_slots, superseded or temp files.

        Recovery deletes and truncates, so it acts only on a catalog it has cross-checked against
        the array file's own header: same row geometry, every item's row below n_slots, and all
        committed rows present. Anything else is damage from outside (an edited meta row made a
        run truncate half the features once); it is refused with nothing changed.
        """
        store = self.store
        arrays = store.path / ARRAYS
        with os_errors(store.path, "cleaning up the feature arrays"):
            path = self._array_path
            shape, offset = self._check_array(path)
            n_slots = self._n_slots
            top = self.catalog.one("SELECT max(array_row) FROM items")[0]
            if top is not None and top >= n_slots:
                raise StoreError(
                    f"the store catalog {printable(store.path / CATALOG)} says {n_slots} feature rows, but its "
                    f"items use row {top}: meta row 'n_slots' was changed outside soundsearch; nothing was "
                    "changed: move the store folder away and index again"
                )
            want = offset + n_slots * self._rows_bytes
            if os.path.getsize(path) < want or shape[0] < n_slots:
                # Committed rows are missing: damage from outside, not a killed run. Never pad.
                raise StoreError(
                    f"the feature array {printable(path)} is shorter than the catalog says: "
                    "move the store folder away and index again"
                )
            # Only now, with the current array known good, are other files in arrays/ leftovers.
            for name in os.listdir(arrays):
                if name != path.name:
                    os.unlink(arrays / name)
            # Leftover files gone, leftover rows not yet cut: recovery itself must be re-runnable.
            faults.point("recover.cleaned")
            if shape[0] != n_slots or os.path.getsize(path) != want:
                truncate_rows(path, n_slots, store.steps, store.dim)

    def _check_array(self, path: Path) -> tuple[tuple[int, ...], int]:
        """(shape, data offset) of the array file the catalog names, refused unless its header
        is the store's own with the catalog's row geometry."""
        store = self.store
        if not path.is_file():
            raise StoreError(
                f"the feature array {printable(path)} that the catalog names is missing: "
                "move the store folder away and index again"
            )
        try:
            shape, dtype, offset = read_npy_header(path)
        except ValueError as exc:
            raise StoreError(
                f"the feature array {printable(path)} is unreadable ({exc}): "
                "move the store folder away and index again"
            ) from exc
        if offset != HEADER_BYTES:
            raise StoreError(f"the feature array {printable(path)} has an unexpected header")
        if dtype != np.dtype("<f4") or len(shape) != 3 or tuple(shape[1:]) != (store.steps, store.dim):
            raise StoreError(
                f"the store catalog {printable(store.path / CATALOG)} says items of shape "
                f"({store.steps}, {store.dim}) float32, but {printable(path)} holds {tuple(shape[1:])} {dtype}: "
                "the catalog's meta rows 'steps'/'dim' were changed outside soundsearch; nothing was "
                f"changed: set them back to {shape[1:] if len(shape) == 3 else '?'} or move the store "
                "folder away and index again"
            )
        return shape, offset

    def add_roots(self, roots: Iterable[Path]) -> None:
        now = time.time()
        with self.catalog.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO roots (path, added_at) VALUES (?, ?)",
                [(os.fsencode(r), now) for r in roots],
            )

    def remove_files(self, paths: Iterable[Path | str]) -> int:
        """Forget these files and their items in one transaction; returns how many were known."""
        blobs = [(os.fsencode(p),) for p in paths]
        if not blobs:
            return 0
        with self.catalog.transaction(bump=True) as db:
            removed = db.executemany("DELETE FROM files WHERE path = ?", blobs).rowcount
            # Deleted inside an open transaction: a kill must leave every file still catalogued.
            faults.point("remove.before_commit")
        return removed  # counts files only; their items go by ON DELETE CASCADE

    def write_files(self, entries: list[FileEntry]) -> None:
        """Record a batch of files: array rows first (fsync'ed), then one catalog transaction."""
        store = self.store
        blocks = []
        for e in entries:
            if e.status != STATUS_OK:
                continue
            f = e.features
            if f is None or f.ndim != 3 or f.shape[1:] != (store.steps, store.dim) or len(f) != len(e.segments) or not len(f):
                raise StoreError(
                    f"internal error: features for {printable(e.path)} have shape "
                    f"{None if f is None else f.shape} for {len(e.segments)} segments"
                )
            blocks.append(f)
        start = self._n_slots
        n_new = sum(len(b) for b in blocks)
        if n_new:
            with os_errors(store.path, "writing feature rows"):
                append_rows(self._array_path, start, blocks, store.steps, store.dim)
        now = time.time()
        with self.catalog.transaction(bump=True) as db:
            row = start
            for e in entries:
                file_id = self.catalog.put_file(db, e, now)
                if e.status == STATUS_OK:
                    db.executemany(
                        "INSERT INTO items (file_id, start_s, end_s, array_row, crc) VALUES (?, ?, ?, ?, ?)",
                        [
                            (file_id, float(s), float(t), row + k, row_crc(e.features[k]))
                            for k, (s, t) in enumerate(e.segments)
                        ],
                    )
                    row += len(e.segments)
            db.execute("UPDATE meta SET value = ? WHERE key = 'n_slots'", (str(start + n_new),))
            # Rows durable, items inserted, COMMIT not yet run: the batch must vanish whole
            # (SQLite rolls back the WAL) and its rows be cut off as leftovers.
            faults.point("write.before_commit")
        # Committed; the caller has not yet counted the batch: a kill must lose nothing of it.
        faults.point("write.committed")

    def record_missing_checksums(self, chunk_rows: int = 1024) -> int:
        """Checksum the items that have none (older stores) from the bytes they hold now."""
        rows = self.catalog.rows("SELECT id, array_row FROM items WHERE crc IS NULL ORDER BY array_row")
        if not rows:
            return 0
        n_slots, array_file = self.catalog.array_meta()
        mm = self.store.open_array(array_file, n_slots)
        with self.catalog.transaction() as db:
            db.executemany("UPDATE items SET crc = ? WHERE id = ?", [(row_crc(mm[slot]), i) for i, slot in rows])
        return len(rows)

    def holes(self) -> int:
        """Array rows no item points at any more (compaction reclaims them)."""
        live = self.catalog.one("SELECT count(*) FROM items")[0]
        return self._n_slots - live

    def compact(self, chunk_rows: int = 2048) -> bool:
        """Rewrite the array without holes so features() is a plain memory map again."""
        store = self.store
        if self.holes() == 0:
            return False
        ids_slots = self.catalog.rows("SELECT id, array_row FROM items ORDER BY array_row")
        slots = np.array([s for _, s in ids_slots], dtype=np.int64)
        n = len(slots)
        new_seq = self.catalog.int_meta("array_seq", 1) + 1
        new_name = array_name(new_seq)
        old_path = self._array_path
        src = raw_rows(old_path, self._n_slots, store.steps, store.dim)
        blocks = (src[slots[i:i + chunk_rows]] for i in range(0, n, chunk_rows))
        with os_errors(store.path, "compacting the feature array"):
            write_new_array(store.path / ARRAYS / new_name, blocks, n, store.steps, store.dim)
        del src
        # The new array is in place under its final name, but the catalog still names the old
        # one: the new file is a leftover that recovery must delete, never read.
        faults.point("compact.written")
        with self.catalog.transaction(bump=True) as db:
            # Ascending old rows map to ascending new ones, so no UNIQUE clash on the way.
            db.executemany("UPDATE items SET array_row = ? WHERE id = ?", [(k, i) for k, (i, _) in enumerate(ids_slots)])
            db.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(new_name, "array_file"), (str(new_seq), "array_seq"), (str(n), "n_slots")],
            )
            # Every item renumbered inside the open transaction: a kill must leave the old
            # numbering and the old file, both whole.
            faults.point("compact.before_commit")
        # Switched to the new file; the old one is not yet removed: readers must follow the
        # catalog to the new file, and the next writer remove the old.
        faults.point("compact.switched")
        with os_errors(store.path, "removing the old feature array"):
            os.unlink(old_path)
            fsync_dir(old_path.parent)
        return True
