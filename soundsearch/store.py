"""The feature store: a SQLite catalog of files and items plus one memory-mappable feature array.

Layout of a store folder:

    catalog.sqlite        files, items, roots, meta (WAL mode; the schema version is user_version)
    arrays/features-N.npy one (slots, T, D) float32 .npy file, grown in place by appending rows
    lock                  flock'ed by the one process allowed to write

Crash safety rests on one ordering rule: feature rows are appended to the array file and fsync'ed
*before* the catalog transaction that points items at them commits. The catalog's `n_slots` is the
authority on how many rows of the array are valid; rows past it are leftovers of a killed run and
the next writer truncates them. Rows whose items were deleted (a file changed or disappeared)
become holes; a writer compacts them away by writing a new array file, committing the new row
numbers and file name in one transaction, and only then unlinking the old file. So at every
instant the catalog points at complete, durable rows, and `features()` is a plain memory map,
row-aligned with `items()`, except in the short window after a killed run (then it is a copy).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sqlite3
import struct
import time
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from soundsearch.errors import FeaturizerMismatchError, StoreError, StoreLockedError, StoreMissingError, printable

if TYPE_CHECKING:
    from soundsearch.features import Featurizer

SCHEMA_VERSION = 3
CATALOG = "catalog.sqlite"
ARRAYS = "arrays"
LOCK = "lock"
# The search engine's per-store cache folder (soundsearch.search keeps it inside the store).
CACHE = "cache"
# Files a store folder may hold; anything else means the folder is someone else's. The cache
# is ours too: a store whose catalog was emptied after a query must be recoverable by `index`.
_OWN_NAMES = {CATALOG, CATALOG + "-wal", CATALOG + "-shm", CATALOG + "-journal", ARRAYS, LOCK, CACHE}

STATUS_OK = "ok"
STATUS_FAILED = "failed"

# A fixed-size .npy header (a multiple of 64 like numpy's own) so that growing the array only
# rewrites the shape inside it, never moves the data.
_HEADER_BYTES = 128
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


# --------------------------------------------------------------------------------------------
# Records


class ItemRecord:
    """One stored item; `row` is its index into `Store.features()` and `Store.items()`.

    Read-only by convention. The Path is built on first access: a query reads every item of a
    large store but looks at the paths of only a few, and pathlib dominates the cost otherwise.
    """

    __slots__ = ("row", "_path", "start", "end", "file_duration")

    def __init__(self, row: int, path: Path | str, start: float, end: float, file_duration: float):
        self.row = row
        self._path = path
        self.start = start
        self.end = end
        self.file_duration = file_duration

    @property
    def path(self) -> Path:
        p = self._path
        if type(p) is str:
            p = self._path = Path(p)
        return p  # type: ignore[return-value]

    def _key(self) -> tuple:
        return (self.row, str(self._path), self.start, self.end, self.file_duration)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemRecord) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ItemRecord(row={self.row}, path={str(self._path)!r}, start={self.start}, end={self.end}, "
            f"file_duration={self.file_duration})"
        )


@dataclass(frozen=True)
class FileRecord:
    """What the catalog knows about one file (used for incremental indexing and reports)."""

    path: Path
    size: int
    mtime_ns: int
    duration: float | None
    samplerate: int | None
    channels: int | None
    status: str
    error: str | None
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class StoreStats:
    path: Path
    featurizer_name: str
    featurizer_identity: str
    featurizer_params: dict
    item_seconds: float
    files: int
    items: int
    duration: float
    failures: int
    bytes_on_disk: int
    roots: tuple[Path, ...]
    schema_version: int
    item_hop: float | None = None  # seconds between window starts (item_seconds: no overlap)
    event_items: int = 0  # most event items per minute of a long recording

    def items_per_hour(self) -> tuple[float, float]:
        """(windows, most event items) per hour of long recordings."""
        hop = self.item_hop or self.item_seconds
        return 3600.0 / hop, 60.0 * self.event_items

    def to_json(self) -> dict:
        return {
            "store": printable(self.path),
            "featurizer": {
                "name": self.featurizer_name,
                "identity": self.featurizer_identity,
                "params": self.featurizer_params,
            },
            "item_seconds": self.item_seconds,
            "item_hop": self.item_hop if self.item_hop is not None else self.item_seconds,
            "event_items": self.event_items,
            "files": self.files,
            "items": self.items,
            "duration_seconds": round(self.duration, 3),
            "failures": self.failures,
            "bytes_on_disk": self.bytes_on_disk,
            "roots": [printable(r) for r in self.roots],
            "schema_version": self.schema_version,
        }


@dataclass
class FileEntry:
    """One file's indexing outcome, handed to `StoreWriter.write_files`."""

    path: Path
    size: int
    mtime_ns: int
    status: str = STATUS_OK
    error: str | None = None
    duration: float | None = None
    samplerate: int | None = None
    channels: int | None = None
    warnings: list[str] = field(default_factory=list)
    segments: list[tuple[float, float]] = field(default_factory=list)
    features: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Schema and migrations

# The current schema, created in one transaction. Paths are BLOBs of the file-system bytes so
# that names which are not valid UTF-8 round-trip exactly.
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


def row_crc(row: np.ndarray) -> int:
    """crc32 of one item's features as stored (little-endian float32, C order)."""
    return zlib.crc32(np.ascontiguousarray(row, dtype="<f4").tobytes())


# --------------------------------------------------------------------------------------------
# SQLite error mapping


def _friendly(exc: sqlite3.Error, where: Path) -> StoreError:
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


def _check_store_path(path: Path) -> None:
    """Name a --store that is a symlink loop or a broken link (mkdir said "File exists")."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(f"{printable(path)} is a symbolic link loop, not a store folder: fix the link or use another --store") from None
        raise StoreError(
            f"{printable(path)} is a broken symbolic link (to {printable(os.readlink(path))}), not a store folder: "
            "create its target or use another --store"
        )


def _rollback(db: sqlite3.Connection) -> None:
    # A Ctrl-C can land after COMMIT ran but before the statement returned; ROLLBACK then
    # raised "no transaction is active" and hid the interrupt behind a store error.
    if db.in_transaction:
        db.execute("ROLLBACK")


@contextmanager
def _sql_errors(where: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _friendly(exc, where) from exc


@contextmanager
def _os_errors(where: Path, doing: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            raise StoreError(f"disk full: no space left for the store at {printable(where)} ({doing} failed: {reason})") from exc
        raise StoreError(f"store at {printable(where)}: {doing} failed: {reason}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# The array file


def _npy_header(n: int, steps: int, dim: int) -> bytes:
    body = repr({"descr": "<f4", "fortran_order": False, "shape": (n, steps, dim)}).encode("latin1")
    pad = _HEADER_BYTES - len(_NPY_MAGIC) - 2 - len(body) - 1
    if pad < 0:
        raise StoreError(f"array shape {(n, steps, dim)} does not fit the store's .npy header")
    return _NPY_MAGIC + struct.pack("<H", _HEADER_BYTES - len(_NPY_MAGIC) - 2) + body + b" " * pad + b"\n"


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            raise ValueError(f"unexpected .npy version {version}")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        if fortran:
            raise ValueError("Fortran-ordered array")
        return shape, dtype, f.tell()


def _write_new_array(path: Path, rows: Iterable[np.ndarray], n: int, steps: int, dim: int) -> None:
    """Write a complete array file under a temporary name, fsync it, then move it into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_npy_header(n, steps, dim))
        written = 0
        for block in rows:
            f.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
            written += len(block)
        if written != n:
            raise StoreError(f"internal error: wrote {written} rows, expected {n}")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------
# The store


@dataclass
class _Snapshot:
    generation: int
    items: list[ItemRecord]
    features: np.ndarray
    by_path: dict[str, list[ItemRecord]]


class Store:
    """A feature store folder opened for reading; `writer()` gives the one writer its lock."""

    def __init__(self, path: Path, db: sqlite3.Connection, readonly: bool):
        self.path = path
        self._db = db
        self.readonly = readonly
        self._snapshot: _Snapshot | None = None
        self._featurizer: Featurizer | None = None
        self._load_meta()

    # ---- opening

    @classmethod
    def open(
        cls,
        path: Path | str,
        create: bool = False,
        featurizer: Featurizer | None = None,
        item_seconds: float | None = None,
        item_hop: float | None = None,
        event_items: int | None = None,
    ) -> Store:
        """Open the store at `path`; with `create`, make it (recording `featurizer`) if absent.

        Raises FeaturizerMismatchError when `featurizer` (or `item_seconds`, `item_hop`,
        `event_items`) differs from what the store was built with, StoreError when there is no
        usable store. A new store's hop and event items default to audio.DEFAULT_HOP_FRACTION of
        its item length and audio.DEFAULT_EVENT_ITEMS.
        """
        path = Path(path).expanduser().absolute()
        _check_store_path(path)
        catalog = path / CATALOG
        if path.exists() and not path.is_dir():
            raise StoreError(f"{printable(path)} is a file, not a store folder")
        if not catalog.exists():
            if not create:
                raise StoreMissingError(f"no store at {printable(path)}: run `soundsearch index PATH` first")
            _check_foreign(path)
            with _os_errors(path, "creating the store folder"):
                (path / ARRAYS).mkdir(parents=True, exist_ok=True)
        readonly = not os.access(path, os.W_OK) or (catalog.exists() and not os.access(catalog, os.W_OK))
        db = _connect(path, readonly)
        try:
            with _sql_errors(path):
                version = db.execute("PRAGMA user_version").fetchone()[0]
                has_meta = db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'"
                ).fetchone()[0]
                if not has_meta or not db.execute("SELECT count(*) FROM meta").fetchone()[0]:
                    # A catalog without meta is a creation that was killed before it committed.
                    if not create:
                        raise StoreMissingError(f"no store at {printable(path)}: run `soundsearch index PATH` first")
                    if readonly:
                        raise StoreError(f"the store at {printable(path)} is read-only: check permissions on it")
                    _create(db, path, featurizer, item_seconds, item_hop, event_items)
                else:
                    _migrate(db, path, version, readonly)
            store = cls(path, db, readonly)
        except BaseException:
            db.close()
            raise
        try:
            store._check_request(featurizer, item_seconds, item_hop, event_items)
        except FeaturizerMismatchError:
            store.close()
            raise
        return store

    def _check_request(
        self,
        featurizer: Featurizer | None,
        item_seconds: float | None,
        item_hop: float | None = None,
        event_items: int | None = None,
    ) -> None:
        if featurizer is not None and featurizer.identity != self.featurizer_identity:
            raise FeaturizerMismatchError(
                f"the store at {printable(self.path)} holds features made by {self.featurizer_identity!r}, "
                f"not {featurizer.identity!r}; featurizers cannot be mixed in one store: "
                "index into another store (--store DIR) or keep the store's featurizer"
            )
        if item_seconds is not None and abs(float(item_seconds) - self.item_seconds) > 1e-9:
            raise FeaturizerMismatchError(
                f"the store at {printable(self.path)} cuts recordings into {self.item_seconds:g} s items, "
                f"not {float(item_seconds):g} s: use another store for another item length"
            )
        if item_hop is not None and abs(min(float(item_hop), self.item_seconds) - self.cutting.hop) > 1e-9:
            raise FeaturizerMismatchError(
                f"the store at {printable(self.path)} starts an item every {self.cutting.hop:g} s, "
                f"not every {float(item_hop):g} s: use another store for another hop"
            )
        if event_items is not None and int(event_items) != self.cutting.event_items:
            raise FeaturizerMismatchError(
                f"the store at {printable(self.path)} adds up to {self.cutting.event_items} event items a minute, "
                f"not {int(event_items)}: use another store for another setting"
            )

    def _load_meta(self) -> None:
        meta = self._meta_rows("store_id", "featurizer_spec", "featurizer_identity", "steps", "dim", "item_seconds")
        try:
            spec = json.loads(meta["featurizer_spec"])
        except ValueError:
            spec = None
        if not isinstance(spec, dict):
            raise self._bad_meta("featurizer_spec", "is not a JSON object")
        self.store_id = meta["store_id"]
        self.featurizer_spec = spec
        self.featurizer_identity = meta["featurizer_identity"]
        self.steps = self._parse_int("steps", meta["steps"], 1)
        self.dim = self._parse_int("dim", meta["dim"], 1)
        try:
            self.item_seconds = float(meta["item_seconds"])
        except ValueError:
            self.item_seconds = float("nan")
        if not (np.isfinite(self.item_seconds) and self.item_seconds > 0):
            raise self._bad_meta("item_seconds", f"is {meta['item_seconds']!r}, not a positive number of seconds")
        self.cutting = self._load_cutting()
        # Checked now, not when first needed: a missing n_slots raised KeyError from query and
        # index alike.
        self._array_meta()
        self._meta_rows("generation", "array_seq")

    def _load_cutting(self):
        """How this store cuts recordings. A store made before item_hop/event_items existed
        has neither row and cuts consecutive windows, as it always did."""
        from soundsearch.audio import Cutting

        with _sql_errors(self.path):
            rows = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('item_hop', 'event_items')").fetchall())
        hop, events = None, 0
        if "item_hop" in rows:
            try:
                hop = float(rows["item_hop"])
            except (TypeError, ValueError):
                hop = float("nan")
            if not (np.isfinite(hop) and hop > 0):
                raise self._bad_meta("item_hop", f"is {rows['item_hop']!r}, not a positive number of seconds")
        if "event_items" in rows:
            events = self._parse_int("event_items", str(rows["event_items"]), 0)
        return Cutting(self.item_seconds, hop, events)

    def _bad_meta(self, key: str, what: str) -> StoreError:
        return StoreError(
            f"the store catalog {printable(self.path / CATALOG)} is damaged: meta row {key!r} {what}; "
            "it was changed outside soundsearch: move the store folder away and index again"
        )

    def _meta_rows(self, *keys: str) -> dict[str, str]:
        with _sql_errors(self.path):
            rows = dict(
                self._db.execute(
                    f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(keys))})", keys
                ).fetchall()
            )
        for key in keys:
            if not isinstance(rows.get(key), str):
                raise self._bad_meta(key, "is missing" if key not in rows else f"is {rows[key]!r}, not text")
        return rows

    def _parse_int(self, key: str, value: str, lo: int = 0) -> int:
        try:
            n = int(value)
        except ValueError:
            n = lo - 1
        if n < lo:
            raise self._bad_meta(key, f"is {value!r}, not a whole number >= {lo}")
        return n

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({printable(self.path)!r}, featurizer={self.featurizer_identity!r})"

    # ---- reading

    def featurizer(self) -> Featurizer:
        """The featurizer that made this store's features (for featurizing queries alike)."""
        if self._featurizer is None:
            from soundsearch.features import featurizer_from_spec

            fz = featurizer_from_spec(self.featurizer_spec)
            if fz.identity != self.featurizer_identity:
                raise FeaturizerMismatchError(
                    f"this soundsearch builds {fz.identity!r} from the store's featurizer spec, but the "
                    f"store at {printable(self.path)} was made by {self.featurizer_identity!r}: "
                    "re-index into a new store"
                )
            self._featurizer = fz
        return self._featurizer

    def refresh(self) -> None:
        """Forget the cached items/features so the next call sees the catalog's latest state."""
        self._snapshot = None

    def items(self) -> list[ItemRecord]:
        """Every item, ordered by row (the row of `features()` that holds its matrix)."""
        return list(self._snap().items)  # a copy: callers may sort or filter it

    def features(self) -> np.ndarray:
        """All feature matrices as one read-only (N, T, D) float32 array, row-aligned with items()."""
        return self._snap().features

    def items_for_path(self, path: Path | str) -> list[ItemRecord]:
        return list(self._snap().by_path.get(str(Path(path).absolute()), []))

    def fingerprint(self) -> str:
        """Changes whenever the stored items or their rows change (search caches key on it)."""
        return f"{self.store_id}-{self._snap().generation}"

    def files(self) -> dict[str, FileRecord]:
        """Every catalogued file by its absolute path string, successful or failed."""
        with _sql_errors(self.path):
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, duration, samplerate, channels, status, error, warnings FROM files"
            ).fetchall()
        out = {}
        for p, size, mtime_ns, duration, sr, ch, status, error, warnings in rows:
            path = Path(os.fsdecode(p))
            out[str(path)] = FileRecord(path, size, mtime_ns, duration, sr, ch, status, error, tuple(json.loads(warnings)))
        return out

    def file_states(self) -> dict[str, tuple[int, int, str, str | None]]:
        """path -> (size, mtime_ns, status, error) of every catalogued file; cheap for large stores."""
        with _sql_errors(self.path):
            rows = self._db.execute("SELECT path, size, mtime_ns, status, error FROM files").fetchall()
        return {os.fsdecode(p): (size, mtime_ns, status, error) for p, size, mtime_ns, status, error in rows}

    def failures(self) -> list[tuple[Path, str]]:
        with _sql_errors(self.path):
            rows = self._db.execute(
                "SELECT path, error FROM files WHERE status = ? ORDER BY path", (STATUS_FAILED,)
            ).fetchall()
        return [(Path(os.fsdecode(p)), e or "") for p, e in rows]

    def roots(self) -> list[Path]:
        with _sql_errors(self.path):
            rows = self._db.execute("SELECT path FROM roots ORDER BY path").fetchall()
        return [Path(os.fsdecode(p)) for (p,) in rows]

    def stats(self) -> StoreStats:
        with _sql_errors(self.path):
            files, duration = self._db.execute(
                "SELECT count(*), coalesce(sum(duration), 0) FROM files WHERE status = ?", (STATUS_OK,)
            ).fetchone()
            failures = self._db.execute("SELECT count(*) FROM files WHERE status = ?", (STATUS_FAILED,)).fetchone()[0]
            items = self._db.execute("SELECT count(*) FROM items").fetchone()[0]
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        size = 0
        for root, _dirs, names in os.walk(self.path):
            for name in names:
                try:
                    size += os.stat(os.path.join(root, name)).st_size
                except OSError:
                    pass  # a leftover removed while we walk
        return StoreStats(
            path=self.path,
            featurizer_name=str(self.featurizer_spec.get("name", "")),
            featurizer_identity=self.featurizer_identity,
            featurizer_params=dict(self.featurizer_spec.get("params", {})),
            item_seconds=self.item_seconds,
            files=files,
            items=items,
            duration=float(duration),
            failures=failures,
            bytes_on_disk=size,
            roots=tuple(self.roots()),
            schema_version=version,
            item_hop=self.cutting.hop,
            event_items=self.cutting.event_items,
        )

    def verify(self) -> list[str]:
        """Consistency problems of the catalog against the array file (empty when sound)."""
        problems: list[str] = []
        with _sql_errors(self.path):
            n_slots, array_file = self._array_meta()
            dup = self._db.execute(
                "SELECT count(*) FROM (SELECT array_row FROM items GROUP BY array_row HAVING count(*) > 1)"
            ).fetchone()[0]
            bad_rows = self._db.execute(
                "SELECT count(*) FROM items WHERE array_row < 0 OR array_row >= ?", (n_slots,)
            ).fetchone()[0]
            empty_ok = self._db.execute(
                "SELECT count(*) FROM files f WHERE status = 'ok' AND NOT EXISTS "
                "(SELECT 1 FROM items i WHERE i.file_id = f.id)"
            ).fetchone()[0]
            failed_items = self._db.execute(
                "SELECT count(*) FROM items i JOIN files f ON f.id = i.file_id WHERE f.status != 'ok'"
            ).fetchone()[0]
            orphans = self._db.execute(
                "SELECT count(*) FROM items WHERE file_id NOT IN (SELECT id FROM files)"
            ).fetchone()[0]
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
        try:
            shape, dtype, offset = _read_npy_header(self.path / ARRAYS / array_file)
            if dtype != np.dtype("<f4") or tuple(shape[1:]) != (self.steps, self.dim) or shape[0] < n_slots:
                problems.append(f"array file {array_file} has shape {shape} {dtype}, expected >= {n_slots} rows")
            size = os.path.getsize(self.path / ARRAYS / array_file)
            if size < offset + n_slots * self.steps * self.dim * 4:
                problems.append(f"array file {array_file} holds {size} bytes, too few for {n_slots} rows")
        except (OSError, ValueError) as exc:
            problems.append(f"array file {array_file} unreadable: {exc}")
        return problems

    def check_checksums(self, chunk_rows: int = 1024) -> tuple[dict[str, int], int]:
        """Items whose feature bytes no longer match their checksum, by file path; and the
        number of items that have no checksum yet (stores made before schema 3).

        Reads the whole array once; a missing or short array is verify()'s business (and is
        reported here as every item of it damaged).
        """
        with _sql_errors(self.path):
            self._db.execute("BEGIN")
            try:
                n_slots, array_file = self._array_meta()
                rows = self._db.execute(
                    "SELECT i.array_row, i.crc, f.path FROM items i JOIN files f ON f.id = i.file_id ORDER BY i.array_row"
                ).fetchall()
                try:
                    mm = self._open_array(array_file, n_slots)
                except (OSError, StoreError):
                    mm = None
            finally:
                self._db.execute("COMMIT")
        bad: dict[str, int] = {}
        unverified = 0
        for i in range(0, len(rows), chunk_rows):
            chunk = rows[i : i + chunk_rows]
            block = None
            if mm is not None:
                slots = [r[0] for r in chunk]
                if slots[-1] < len(mm):
                    block = np.asarray(mm[slots[0] : slots[-1] + 1])
            for slot, crc, p in chunk:
                if crc is None:
                    unverified += 1
                    continue
                if block is None or row_crc(block[slot - chunk[0][0]]) != crc:
                    key = os.fsdecode(p)
                    bad[key] = bad.get(key, 0) + 1
        return bad, unverified

    # ---- writing

    @contextmanager
    def writer(self, wait: bool = False) -> Iterator[StoreWriter]:
        """Take the store's write lock (or raise StoreLockedError) and yield the writer."""
        if self.readonly:
            raise StoreError(f"the store at {printable(self.path)} is read-only: check permissions on it")
        with store_lock(self.path, wait=wait):
            w = StoreWriter(self)
            w._recover()
            try:
                yield w
            finally:
                self.refresh()

    # ---- internals

    def _array_meta(self) -> tuple[int, str]:
        rows = self._meta_rows("n_slots", "array_file")
        name = rows["array_file"]
        # The name is joined to arrays/ and everything else there is deleted by recovery: only
        # a name soundsearch itself writes is trusted.
        if not re.fullmatch(r"features-[0-9]+\.npy", name):
            raise self._bad_meta("array_file", f"is {name!r}, not a feature array name")
        return self._parse_int("n_slots", rows["n_slots"]), name

    def _snap(self) -> _Snapshot:
        if self._snapshot is None:
            # A compaction may replace the array file between our catalog read and the open;
            # the catalog then names the new file, so read again.
            for attempt in range(5):
                try:
                    self._snapshot = self._read_snapshot()
                    break
                except FileNotFoundError:
                    if attempt == 4:
                        raise StoreError(
                            f"the store at {printable(self.path)} lost its feature array: "
                            "move the store folder away and index again"
                        ) from None
                    time.sleep(0.05)
        return self._snapshot

    def _read_snapshot(self) -> _Snapshot:
        with _sql_errors(self.path):
            self._db.execute("BEGIN")
            try:
                generation = self._parse_int("generation", self._meta_rows("generation")["generation"])
                n_slots, array_file = self._array_meta()
                rows = self._db.execute(
                    "SELECT i.array_row, f.path, i.start_s, i.end_s, f.duration "
                    "FROM items i JOIN files f ON f.id = i.file_id ORDER BY i.array_row"
                ).fetchall()
                # Opened inside the read transaction: the writer unlinks a replaced array only
                # after its commit, so this file still matches the rows just read (or is gone).
                mm = self._open_array(array_file, n_slots)
            finally:
                self._db.execute("COMMIT")
        slots = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if len(slots) and (slots[0] < 0 or slots[-1] >= n_slots):
            raise StoreError(
                f"the store at {printable(self.path)} is inconsistent (items beyond the feature array): "
                "move the store folder away and index again"
            )
        if len(slots) == n_slots:
            features = mm  # rows are exactly 0..N-1: no copy
        else:
            # Holes left by a run that was stopped before compacting; the next `index` compacts.
            features = np.ascontiguousarray(mm[slots])
            features.flags.writeable = False
        paths: dict[bytes, str] = {}
        items: list[ItemRecord] = []
        by_path: dict[str, list[ItemRecord]] = {}
        for i, (_slot, p, start, end, duration) in enumerate(rows):
            path = paths.get(p)
            if path is None:
                path = paths[p] = os.fsdecode(p)
                by_path[path] = []
            rec = ItemRecord(i, path, start, end, duration if duration is not None else end)
            items.append(rec)
            by_path[path].append(rec)
        return _Snapshot(generation, items, features, by_path)

    def _open_array(self, array_file: str, n_slots: int) -> np.ndarray:
        path = self.path / ARRAYS / array_file
        try:
            shape, dtype, offset = _read_npy_header(path)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"the feature array {printable(path)} is unreadable ({exc}): move the store folder away and index again"
            ) from exc
        row_bytes = self.steps * self.dim * 4
        if (
            dtype != np.dtype("<f4")
            or tuple(shape[1:]) != (self.steps, self.dim)
            or shape[0] < n_slots
            or os.path.getsize(path) < offset + n_slots * row_bytes
        ):
            raise StoreError(
                f"the feature array {printable(path)} has shape {shape} ({dtype}), the catalog expects "
                f"{n_slots} rows of ({self.steps}, {self.dim}) float32: move the store folder away and index again"
            )
        if n_slots == 0:
            empty = np.empty((0, self.steps, self.dim), dtype=np.float32)
            empty.flags.writeable = False
            return empty
        mm = np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(n_slots, self.steps, self.dim))
        return mm.view(np.ndarray)


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    catalog = path / CATALOG
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
        return db
    except sqlite3.Error as exc:
        raise _friendly(exc, path) from exc


def _check_foreign(path: Path) -> None:
    """Refuse to turn a folder full of someone else's files into a store."""
    if path.is_dir():
        foreign = [n for n in os.listdir(path) if n not in _OWN_NAMES]
        if foreign:
            raise StoreError(
                f"{printable(path)} is not empty and holds no soundsearch store "
                f"(found {foreign[0]!r}): choose an empty or new folder for --store"
            )


def _create(
    db: sqlite3.Connection,
    path: Path,
    featurizer: Featurizer | None,
    item_seconds: float | None,
    item_hop: float | None = None,
    event_items: int | None = None,
) -> None:
    from soundsearch.audio import DEFAULT_EVENT_ITEMS, DEFAULT_HOP_FRACTION

    if featurizer is None:
        from soundsearch.features import DEFAULT_FEATURIZER, get_featurizer

        featurizer = get_featurizer(DEFAULT_FEATURIZER)
    array_file = "features-1.npy"
    # The array file exists before the catalog that names it commits.
    with _os_errors(path, "creating the feature array"):
        _write_new_array(path / ARRAYS / array_file, [], 0, featurizer.steps, featurizer.dim)
    db.execute("PRAGMA journal_mode = WAL")
    meta = {
        "store_id": uuid.uuid4().hex[:12],
        "featurizer_spec": json.dumps(featurizer.spec(), sort_keys=True),
        "featurizer_identity": featurizer.identity,
        "steps": str(featurizer.steps),
        "dim": str(featurizer.dim),
        "item_seconds": repr(float(item_seconds if item_seconds is not None else 10.0)),
        # item_hop/event_items: finer items for long recordings (audio.Cutting); stores made
        # before them lack the rows and cut as they always did.
        "item_hop": repr(
            min(float(item_hop), float(item_seconds if item_seconds is not None else 10.0)) if item_hop is not None
            else DEFAULT_HOP_FRACTION * float(item_seconds if item_seconds is not None else 10.0)
        ),
        "event_items": str(int(event_items if event_items is not None else DEFAULT_EVENT_ITEMS)),
        "array_file": array_file,
        "array_seq": "1",
        "n_slots": "0",
        "generation": "0",
        "created_at": repr(time.time()),
    }
    db.execute("BEGIN IMMEDIATE")
    try:
        # A killed creation may have left empty tables behind.
        for table in ("items", "files", "roots", "meta"):
            db.execute(f"DROP TABLE IF EXISTS {table}")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _migrate(db: sqlite3.Connection, path: Path, version: int, readonly: bool) -> None:
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
    db.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        current = db.execute("PRAGMA user_version").fetchone()[0]
        for v in range(current, SCHEMA_VERSION):
            MIGRATIONS[v](db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


# --------------------------------------------------------------------------------------------
# Locking and writing


@contextmanager
def store_lock(path: Path | str, wait: bool = False) -> Iterator[None]:
    """Hold the store's write lock: an exclusive flock on `lock`, released even on kill -9."""
    path = Path(path)
    _check_store_path(path)
    lock_path = path / LOCK
    with _os_errors(path, "opening the lock file"):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = ""
            try:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                holder = f" (pid {pid})" if pid.isdigit() else ""
            except OSError:
                pass
            raise StoreLockedError(
                f"the store at {printable(path)} is being updated by another soundsearch process{holder}: "
                "wait for it to finish, or pass --wait to queue behind it"
            ) from None
        # The pid is only for the message above; the flock itself is the lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class StoreWriter:
    """Write access to a store, valid while its lock is held (see `Store.writer`)."""

    def __init__(self, store: Store):
        self.store = store
        self._db = store._db
        self._rows_bytes = store.steps * store.dim * 4

    # The committed state is re-read from the catalog before every step rather than cached: a
    # Ctrl-C between a COMMIT and a cache update must not leave the writer believing stale
    # row counts (it would then overwrite committed rows).
    @property
    def _n_slots(self) -> int:
        with _sql_errors(self.store.path):
            return self.store._array_meta()[0]

    @property
    def _array_file(self) -> str:
        with _sql_errors(self.store.path):
            return self.store._array_meta()[1]

    @property
    def _seq(self) -> int:
        with _sql_errors(self.store.path):
            return self.store._parse_int("array_seq", self.store._meta_rows("array_seq")["array_seq"], 1)

    @property
    def _array_path(self) -> Path:
        return self.store.path / ARRAYS / self._array_file

    def _recover(self) -> None:
        """Drop what a killed writer left behind: rows past n_slots, superseded or temp files.

        Recovery deletes and truncates, so it acts only on a catalog it has cross-checked against
        the array file's own header: same row geometry, every item's row below n_slots, and all
        committed rows present. Anything else is damage from outside (an edited meta row made a
        run truncate half the features once); it is refused with nothing changed.
        """
        store = self.store
        arrays = store.path / ARRAYS
        with _os_errors(store.path, "cleaning up the feature arrays"):
            current = self._array_file
            path = arrays / current
            if not path.is_file():
                raise StoreError(
                    f"the feature array {printable(path)} that the catalog names is missing: "
                    "move the store folder away and index again"
                )
            try:
                shape, dtype, offset = _read_npy_header(path)
            except ValueError as exc:
                raise StoreError(
                    f"the feature array {printable(path)} is unreadable ({exc}): "
                    "move the store folder away and index again"
                ) from exc
            if offset != _HEADER_BYTES:
                raise StoreError(f"the feature array {printable(path)} has an unexpected header")
            if dtype != np.dtype("<f4") or len(shape) != 3 or tuple(shape[1:]) != (store.steps, store.dim):
                raise StoreError(
                    f"the store catalog {printable(store.path / CATALOG)} says items of shape "
                    f"({store.steps}, {store.dim}) float32, but {printable(path)} holds {tuple(shape[1:])} {dtype}: "
                    "the catalog's meta rows 'steps'/'dim' were changed outside soundsearch; nothing was "
                    f"changed: set them back to {shape[1:] if len(shape) == 3 else '?'} or move the store "
                    "folder away and index again"
                )
            n_slots = self._n_slots
            with _sql_errors(store.path):
                top = self._db.execute("SELECT max(array_row) FROM items").fetchone()[0]
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
                if name != current:
                    os.unlink(arrays / name)
            if shape[0] != n_slots or os.path.getsize(path) != want:
                with open(path, "r+b") as f:
                    f.truncate(want)
                    f.seek(0)
                    f.write(_npy_header(n_slots, store.steps, store.dim))
                    f.flush()
                    os.fsync(f.fileno())

    def add_roots(self, roots: Iterable[Path]) -> None:
        now = time.time()
        with _sql_errors(self.store.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO roots (path, added_at) VALUES (?, ?)",
                    [(os.fsencode(r), now) for r in roots],
                )
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise

    def remove_files(self, paths: Iterable[Path | str]) -> int:
        """Forget these files and their items in one transaction; returns how many were known."""
        blobs = [(os.fsencode(p),) for p in paths]
        if not blobs:
            return 0
        with _sql_errors(self.store.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = self._db.executemany("DELETE FROM files WHERE path = ?", blobs).rowcount
                self._bump_generation()
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise
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
            with _os_errors(store.path, "writing feature rows"), open(self._array_path, "r+b") as fh:
                fh.seek(_HEADER_BYTES + start * self._rows_bytes)
                for b in blocks:
                    fh.write(np.ascontiguousarray(b, dtype="<f4").tobytes())
                fh.flush()
                os.fsync(fh.fileno())
                fh.seek(0)
                fh.write(_npy_header(start + n_new, store.steps, store.dim))
                fh.flush()
                os.fsync(fh.fileno())
        now = time.time()
        with _sql_errors(store.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = start
                for e in entries:
                    blob = os.fsencode(e.path)
                    values = (
                        e.size, e.mtime_ns, e.duration, e.samplerate, e.channels, e.status, e.error,
                        json.dumps(list(e.warnings)), now,
                    )
                    old = self._db.execute("SELECT id FROM files WHERE path = ?", (blob,)).fetchone()
                    if old:
                        file_id = old[0]
                        self._db.execute("DELETE FROM items WHERE file_id = ?", (file_id,))
                        self._db.execute(
                            "UPDATE files SET size=?, mtime_ns=?, duration=?, samplerate=?, channels=?, "
                            "status=?, error=?, warnings=?, indexed_at=? WHERE id=?",
                            (*values, file_id),
                        )
                    else:
                        file_id = self._db.execute(
                            "INSERT INTO files (size, mtime_ns, duration, samplerate, channels, status, error, "
                            "warnings, indexed_at, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (*values, blob),
                        ).lastrowid
                    if e.status == STATUS_OK:
                        self._db.executemany(
                            "INSERT INTO items (file_id, start_s, end_s, array_row, crc) VALUES (?, ?, ?, ?, ?)",
                            [
                                (file_id, float(s), float(t), row + k, row_crc(e.features[k]))
                                for k, (s, t) in enumerate(e.segments)
                            ],
                        )
                        row += len(e.segments)
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'n_slots'", (str(start + n_new),))
                self._bump_generation()
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise

    def record_missing_checksums(self, chunk_rows: int = 1024) -> int:
        """Checksum the items that have none (older stores) from the bytes they hold now."""
        store = self.store
        with _sql_errors(store.path):
            rows = self._db.execute("SELECT id, array_row FROM items WHERE crc IS NULL ORDER BY array_row").fetchall()
        if not rows:
            return 0
        n_slots, array_file = store._array_meta()
        mm = store._open_array(array_file, n_slots)
        with _sql_errors(store.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE items SET crc = ? WHERE id = ?", [(row_crc(mm[slot]), i) for i, slot in rows]
                )
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise
        return len(rows)

    def holes(self) -> int:
        """Array rows no item points at any more (compaction reclaims them)."""
        with _sql_errors(self.store.path):
            live = self._db.execute("SELECT count(*) FROM items").fetchone()[0]
        return self._n_slots - live

    def compact(self, chunk_rows: int = 2048) -> bool:
        """Rewrite the array without holes so features() is a plain memory map again."""
        store = self.store
        if self.holes() == 0:
            return False
        with _sql_errors(store.path):
            ids_slots = self._db.execute("SELECT id, array_row FROM items ORDER BY array_row").fetchall()
        slots = np.array([s for _, s in ids_slots], dtype=np.int64)
        n = len(slots)
        new_seq = self._seq + 1
        new_name = f"features-{new_seq}.npy"
        old_path = self._array_path
        n_slots = self._n_slots
        if n_slots:
            src = np.memmap(old_path, dtype="<f4", mode="r", offset=_HEADER_BYTES,
                            shape=(n_slots, store.steps, store.dim))
        else:
            src = np.empty((0, store.steps, store.dim), np.float32)
        blocks = (src[slots[i:i + chunk_rows]] for i in range(0, n, chunk_rows))
        with _os_errors(store.path, "compacting the feature array"):
            _write_new_array(store.path / ARRAYS / new_name, blocks, n, store.steps, store.dim)
        del src
        with _sql_errors(store.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # Ascending old rows map to ascending new ones, so no UNIQUE clash on the way.
                self._db.executemany(
                    "UPDATE items SET array_row = ? WHERE id = ?", [(k, i) for k, (i, _) in enumerate(ids_slots)]
                )
                self._db.executemany(
                    "UPDATE meta SET value = ? WHERE key = ?",
                    [(new_name, "array_file"), (str(new_seq), "array_seq"), (str(n), "n_slots")],
                )
                self._bump_generation()
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise
        with _os_errors(store.path, "removing the old feature array"):
            os.unlink(old_path)
            _fsync_dir(old_path.parent)
        return True

    def _bump_generation(self) -> None:
        self._db.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'")
