"""The store's SQLite catalog: files, items, roots and meta rows, its schema and migrations.

Every change goes through `Catalog.transaction()`, which takes the write lock of the database
(BEGIN IMMEDIATE), commits or rolls back, and with `bump=True` raises the `generation` meta row
in the same transaction: search caches and the items' derived copy (itemcache.py) key on it,
so every change to the items or their rows bumps it. Paths are BLOBs of the file-system bytes, so names that are not valid UTF-8
round-trip exactly. The schema version is SQLite's user_version.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from soundsearch.errors import StoreError, StoreLockedError, printable
from soundsearch.store.arrays import NAME_PATTERN
from soundsearch.store.folder import CATALOG
from soundsearch.store.items import flat_columns
from soundsearch.store.records import STATUS_FAILED, STATUS_OK, FileRecord

SCHEMA_VERSION = 3

# The current schema, created in one transaction.
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    duration REAL,
    samplerate INTEGER,
    channels INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    warnings TEXT NOT NULL DEFAULT '[]',
    indexed_at REAL NOT NULL
);
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    array_row INTEGER NOT NULL UNIQUE,
    crc INTEGER
);
CREATE INDEX items_file ON items(file_id);
CREATE TABLE roots (path BLOB PRIMARY KEY, added_at REAL NOT NULL);
"""


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    # Version 1 kept neither per-file warnings nor the library folders a store was built from.
    db.execute("ALTER TABLE files ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]'")
    db.execute("CREATE TABLE roots (path BLOB PRIMARY KEY, added_at REAL NOT NULL)")


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    # Version 3 keeps a crc32 of each item's feature bytes, so damage to the array file is
    # found (`status --verify`) and repaired (`index --verify`). Older items get NULL: unverified
    # until `index --verify` records the checksum of the bytes they hold then.
    db.execute("ALTER TABLE items ADD COLUMN crc INTEGER")


# version -> function that upgrades a catalog from that version to the next, inside the
# transaction that also bumps user_version.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2, 2: _migrate_2_to_3}

_BUMP_GENERATION = "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'"


def friendly(exc: sqlite3.Error, where: Path) -> StoreError:
    """A SQLite error as a one-line StoreError that says what to do."""
    msg = str(exc)
    low = msg.lower()
    if "readonly" in low or "read-only" in low:
        return StoreError(f"the store at {printable(where)} is read-only: check permissions on it")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreError(
            f"the store catalog {printable(where / CATALOG)} is corrupt ({msg}): "
            "move the store folder away and index again"
        )
    if "locked" in low or "busy" in low:
        return StoreLockedError(f"the store at {printable(where)} is busy ({msg}): try again")
    if "full" in low or ("disk i/o error" in low and _disk_full(where)):
        # SQLite reports ENOSPC while writing its WAL as a vague "disk I/O error".
        return StoreError(f"disk full: no space left for the store at {printable(where)}")
    if "unable to open" in low:
        return StoreError(f"cannot open the store catalog in {printable(where)}: check that the folder is accessible")
    return StoreError(f"store at {printable(where)}: {msg}")


def _disk_full(where: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(where).free < 64 * 1024
    except OSError:
        return False


class Catalog:
    """One connection to a store folder's catalog (autocommit: transactions are explicit)."""

    def __init__(self, folder: Path, db: sqlite3.Connection):
        self.folder = folder
        self.db = db

    @classmethod
    def connect(cls, folder: Path, readonly: bool) -> Catalog:
        catalog = folder / CATALOG
        try:
            if readonly:
                # A read-only folder cannot hold WAL's shared-memory file; read the catalog as an
                # immutable snapshot instead (nobody can be writing to it anyway).
                db = sqlite3.connect(f"{catalog.as_uri()}?immutable=1", uri=True, isolation_level=None)
            else:
                db = sqlite3.connect(catalog, timeout=30, isolation_level=None)
            db.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                # FULL: a commit is durable before we unlink the array file it supersedes.
                db.execute("PRAGMA synchronous = FULL")
            return cls(folder, db)
        except sqlite3.Error as exc:
            raise friendly(exc, folder) from exc

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def errors(self) -> Iterator[None]:
        """SQLite errors raised inside as one-line StoreErrors (see `friendly`)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise friendly(exc, self.folder) from exc

    @contextmanager
    def transaction(self, *, write: bool = True, bump: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back if it raises.

        `write` takes the database's write lock at once (BEGIN IMMEDIATE); a read transaction
        (write=False) sees one consistent state of the catalog. `bump` raises the generation,
        as every change to the items or their rows must.
        """
        with self.errors():
            self.db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self.db
                if bump:
                    self.db.execute(_BUMP_GENERATION)
                self.db.execute("COMMIT")
            except BaseException:
                # A Ctrl-C can land after COMMIT ran but before the statement returned; ROLLBACK
                # then raised "no transaction is active" and hid the interrupt behind a store error.
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.errors():
            return self.db.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple = ()) -> tuple:
        with self.errors():
            return self.db.execute(sql, params).fetchone()

    # ---- creating and upgrading

    def version(self) -> int:
        return self.one("PRAGMA user_version")[0]

    def is_blank(self) -> bool:
        """No meta rows: a new file, or a creation that was killed before it committed."""
        has_meta = self.one("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'")[0]
        return not has_meta or not self.one("SELECT count(*) FROM meta")[0]

    def create(self, meta: dict[str, str]) -> None:
        """The current schema with these meta rows, in one transaction."""
        self.db.execute("PRAGMA journal_mode = WAL")
        with self.transaction() as db:
            # A killed creation may have left empty tables behind.
            for table in ("items", "files", "roots", "meta"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def migrate(self, readonly: bool) -> None:
        """Bring an older schema up to SCHEMA_VERSION; refuse a newer or unknown one."""
        path, version = self.folder, self.version()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store at {printable(path)} was made by a newer soundsearch (schema {version}, this one "
                f"reads up to {SCHEMA_VERSION}): upgrade soundsearch"
            )
        if version < 1 or any(v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
            raise StoreError(f"the store at {printable(path)} has unknown schema version {version}")
        if readonly:
            raise StoreError(
                f"the store at {printable(path)} uses schema {version} and needs an upgrade, but it is read-only: "
                "check permissions on it"
            )
        with self.transaction() as db:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = db.execute("PRAGMA user_version").fetchone()[0]
            for v in range(current, SCHEMA_VERSION):
                MIGRATIONS[v](db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ---- meta rows

    def bad_meta(self, key: str, what: str) -> StoreError:
        return StoreError(
            f"the store catalog {printable(self.folder / CATALOG)} is damaged: meta row {key!r} {what}; "
            "it was changed outside soundsearch: move the store folder away and index again"
        )

    def meta(self, *keys: str) -> dict[str, str]:
        """These meta rows, each of which must be there and be text."""
        rows = self.optional_meta(*keys)
        for key in keys:
            if not isinstance(rows.get(key), str):
                raise self.bad_meta(key, "is missing" if key not in rows else f"is {rows[key]!r}, not text")
        return rows

    def optional_meta(self, *keys: str) -> dict:
        """The meta rows of these keys that exist, as stored."""
        return dict(self.rows(f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(keys))})", keys))

    def parse_int(self, key: str, value: str, lo: int = 0) -> int:
        try:
            n = int(value)
        except ValueError:
            n = lo - 1
        if n < lo:
            raise self.bad_meta(key, f"is {value!r}, not a whole number >= {lo}")
        return n

    def int_meta(self, key: str, lo: int = 0) -> int:
        return self.parse_int(key, self.meta(key)[key], lo)

    def array_meta(self) -> tuple[int, str]:
        """(valid rows, file name) of the feature array: the catalog is the authority on both."""
        rows = self.meta("n_slots", "array_file")
        name = rows["array_file"]
        # The name is joined to arrays/ and everything else there is deleted by recovery: only
        # a name soundsearch itself writes is trusted.
        if not re.fullmatch(NAME_PATTERN, name):
            raise self.bad_meta("array_file", f"is {name!r}, not a feature array name")
        return self.parse_int("n_slots", rows["n_slots"]), name

    # ---- reading

    def item_columns(self, db: sqlite3.Connection) -> tuple[np.ndarray, list[tuple]]:
        """Every item as (file id, start, end, array row) in one (n, 4) float64 array, in no
        particular order, and (id, path blob, duration) of every file: the two tables read
        apart and joined in numpy (items.table_from_catalog), which costs far less than a join
        handing out a tuple per item."""
        items = flat_columns(db.execute("SELECT file_id, start_s, end_s, array_row FROM items"), self.folder)
        files = db.execute("SELECT id, path, duration FROM files").fetchall()
        return items, files

    def item_count(self, db: sqlite3.Connection) -> int:
        return db.execute("SELECT count(*) FROM items").fetchone()[0]

    def files(self) -> dict[str, FileRecord]:
        rows = self.rows(
            "SELECT path, size, mtime_ns, duration, samplerate, channels, status, error, warnings FROM files"
        )
        out = {}
        for p, size, mtime_ns, duration, sr, ch, status, error, warnings in rows:
            path = Path(os.fsdecode(p))
            out[str(path)] = FileRecord(path, size, mtime_ns, duration, sr, ch, status, error, tuple(json.loads(warnings)))
        return out

    def file_state(self, path: str) -> tuple[int, int, str, int] | None:
        """(size, mtime_ns, status, generation) of one catalogued file, read in one transaction
        (the generation says which state of the items it belongs to); None when not catalogued."""
        with self.transaction(write=False) as db:
            row = db.execute("SELECT size, mtime_ns, status FROM files WHERE path = ?", (os.fsencode(path),)).fetchone()
            generation = self.int_meta("generation")
        return None if row is None else (row[0], row[1], row[2], generation)

    def file_states(self) -> dict[str, tuple[int, int, str, str | None]]:
        rows = self.rows("SELECT path, size, mtime_ns, status, error FROM files")
        return {os.fsdecode(p): (size, mtime_ns, status, error) for p, size, mtime_ns, status, error in rows}

    def failures(self) -> list[tuple[Path, str]]:
        rows = self.rows("SELECT path, error FROM files WHERE status = ? ORDER BY path", (STATUS_FAILED,))
        return [(Path(os.fsdecode(p)), e or "") for p, e in rows]

    def roots(self) -> list[Path]:
        return [Path(os.fsdecode(p)) for (p,) in self.rows("SELECT path FROM roots ORDER BY path")]

    def counts(self) -> tuple[int, float, int, int, int]:
        """(ok files, their total duration, failed files, items, schema version)."""
        with self.errors():
            files, duration = self.db.execute(
                "SELECT count(*), coalesce(sum(duration), 0) FROM files WHERE status = ?", (STATUS_OK,)
            ).fetchone()
            failures = self.db.execute("SELECT count(*) FROM files WHERE status = ?", (STATUS_FAILED,)).fetchone()[0]
            items = self.db.execute("SELECT count(*) FROM items").fetchone()[0]
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
        return files, float(duration), failures, items, version

    def problems(self, n_slots: int) -> list[str]:
        """Inconsistencies among the catalog's own rows, for an array of n_slots valid rows."""
        with self.errors():
            dup = self.db.execute(
                "SELECT count(*) FROM (SELECT array_row FROM items GROUP BY array_row HAVING count(*) > 1)"
            ).fetchone()[0]
            bad_rows = self.db.execute(
                "SELECT count(*) FROM items WHERE array_row < 0 OR array_row >= ?", (n_slots,)
            ).fetchone()[0]
            empty_ok = self.db.execute(
                "SELECT count(*) FROM files f WHERE status = 'ok' AND NOT EXISTS "
                "(SELECT 1 FROM items i WHERE i.file_id = f.id)"
            ).fetchone()[0]
            failed_items = self.db.execute(
                "SELECT count(*) FROM items i JOIN files f ON f.id = i.file_id WHERE f.status != 'ok'"
            ).fetchone()[0]
            orphans = self.db.execute(
                "SELECT count(*) FROM items WHERE file_id NOT IN (SELECT id FROM files)"
            ).fetchone()[0]
        problems: list[str] = []
        if dup:
            problems.append(f"{dup} array rows used by more than one item")
        if bad_rows:
            problems.append(f"{bad_rows} items point outside the {n_slots} valid array rows")
        if empty_ok:
            problems.append(f"{empty_ok} indexed files have no items")
        if failed_items:
            problems.append(f"{failed_items} items belong to failed files")
        if orphans:
            problems.append(f"{orphans} items belong to no file")
        return problems

    # ---- writing (inside a transaction)

    def put_file(self, db: sqlite3.Connection, entry, now: float) -> int:
        """Insert or update one file's row (dropping its old items); its id."""
        blob = os.fsencode(entry.path)
        values = (
            entry.size, entry.mtime_ns, entry.duration, entry.samplerate, entry.channels, entry.status, entry.error,
            json.dumps(list(entry.warnings)), now,
        )
        old = db.execute("SELECT id FROM files WHERE path = ?", (blob,)).fetchone()
        if old:
            file_id = old[0]
            db.execute("DELETE FROM items WHERE file_id = ?", (file_id,))
            db.execute(
                "UPDATE files SET size=?, mtime_ns=?, duration=?, samplerate=?, channels=?, "
                "status=?, error=?, warnings=?, indexed_at=? WHERE id=?",
                (*values, file_id),
            )
            return file_id
        return db.execute(
            "INSERT INTO files (size, mtime_ns, duration, samplerate, channels, status, error, "
            "warnings, indexed_at, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, blob),
        ).lastrowid
