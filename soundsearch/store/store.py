"""The Store: a store folder opened for reading, created on request; `writer()` gives the one
writer its lock (writer.py).

`items()` and `features()` come from one snapshot (snapshot.py), so they stay row-aligned until
`refresh()` whatever a writer does meanwhile.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from soundsearch.errors import FeaturizerMismatchError, StoreError, StoreMissingError, printable
from soundsearch.store.arrays import array_name, array_problems, open_array, row_crc, write_new_array
from soundsearch.store.catalog import Catalog
from soundsearch.store.folder import ARRAYS, CATALOG, check_foreign, check_store_path, os_errors, store_lock
from soundsearch.store.items import ItemTable, ItemView
from soundsearch.store.records import STATUS_OK, FileRecord, ItemRecord, StoreStats
from soundsearch.store.snapshot import Snapshot, load_snapshot
from soundsearch.store.writer import StoreWriter

if TYPE_CHECKING:
    from soundsearch.audio.items import Cutting
    from soundsearch.features import Featurizer


class Store:
    """A feature store folder opened for reading; `writer()` gives the one writer its lock."""

    def __init__(self, path: Path, catalog: Catalog, readonly: bool):
        self.path = path
        self.catalog = catalog
        self.readonly = readonly
        self._snapshot: Snapshot | None = None
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
        *,
        wait: bool = False,
    ) -> Store:
        """Open the store at `path`; with `create`, make it (recording `featurizer`) if absent.

        A store is created under its write lock, asking again there whether it exists, so two
        first runs do not both create it (`wait`: queue behind another writer rather than raise
        StoreLockedError); a folder holding someone else's files is refused before the lock file
        lands in it. A creation a kill interrupted is finished.

        Raises FeaturizerMismatchError when `featurizer` (or `item_seconds`, `item_hop`,
        `event_items`) differs from what the store was built with, StoreMissingError when there
        is no store and StoreError when there is no usable one. A new store's hop and event items
        default to audio.DEFAULT_HOP_FRACTION of its item length and audio.DEFAULT_EVENT_ITEMS.
        """
        path = Path(path).expanduser().absolute()
        request = (featurizer, item_seconds, item_hop, event_items)
        if not create:
            return cls._open(path, None, request)
        try:
            return cls._open(path, None, request)
        except StoreMissingError:
            pass
        check_foreign(path)  # before the lock file lands in someone else's folder
        with store_lock(path, wait=wait):
            return cls._open(path, request, request)

    @classmethod
    def _open(cls, path: Path, create: tuple | None, request: tuple) -> Store:
        """Open, or with `create` (featurizer, item_seconds, item_hop, event_items) make, the store."""
        check_store_path(path)
        catalog_path = path / CATALOG
        if path.exists() and not path.is_dir():
            raise StoreError(f"{printable(path)} is a file, not a store folder")
        if not catalog_path.exists():
            if create is None:
                raise StoreMissingError(f"no store at {printable(path)}: run `soundsearch index PATH` first")
            check_foreign(path)
            with os_errors(path, "creating the store folder"):
                (path / ARRAYS).mkdir(parents=True, exist_ok=True)
        readonly = not os.access(path, os.W_OK) or (catalog_path.exists() and not os.access(catalog_path, os.W_OK))
        catalog = Catalog.connect(path, readonly)
        try:
            with catalog.errors():
                catalog.version()
                if catalog.is_blank():
                    # A catalog without meta is a creation that was killed before it committed.
                    if create is None:
                        raise StoreMissingError(f"no store at {printable(path)}: run `soundsearch index PATH` first")
                    if readonly:
                        raise StoreError(f"the store at {printable(path)} is read-only: check permissions on it")
                    _create(catalog, *create)
                else:
                    catalog.migrate(readonly)
            store = cls(path, catalog, readonly)
        except BaseException:
            catalog.close()
            raise
        try:
            store.check_request(*request)
        except FeaturizerMismatchError:
            store.close()
            raise
        return store

    def check_request(
        self,
        featurizer: Featurizer | None = None,
        item_seconds: float | None = None,
        item_hop: float | None = None,
        event_items: int | None = None,
    ) -> None:
        """Raise FeaturizerMismatchError where these (None: not asked) differ from how the
        store was built."""
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
        catalog = self.catalog
        meta = catalog.meta("store_id", "featurizer_spec", "featurizer_identity", "steps", "dim", "item_seconds")
        try:
            spec = json.loads(meta["featurizer_spec"])
        except ValueError:
            spec = None
        if not isinstance(spec, dict):
            raise catalog.bad_meta("featurizer_spec", "is not a JSON object")
        self.store_id = meta["store_id"]
        self.featurizer_spec = spec
        self.featurizer_identity = meta["featurizer_identity"]
        self.steps = catalog.parse_int("steps", meta["steps"], 1)
        self.dim = catalog.parse_int("dim", meta["dim"], 1)
        try:
            self.item_seconds = float(meta["item_seconds"])
        except ValueError:
            self.item_seconds = float("nan")
        if not (np.isfinite(self.item_seconds) and self.item_seconds > 0):
            raise catalog.bad_meta("item_seconds", f"is {meta['item_seconds']!r}, not a positive number of seconds")
        self.cutting = self._load_cutting()
        # Checked now, not when first needed: a missing n_slots raised KeyError from query and
        # index alike.
        catalog.array_meta()
        catalog.meta("generation", "array_seq")

    def _load_cutting(self) -> Cutting:
        """How this store cuts recordings. A store made before item_hop/event_items existed
        has neither row and cuts consecutive windows, as it always did."""
        from soundsearch.audio.items import Cutting

        rows = self.catalog.optional_meta("item_hop", "event_items")
        hop, events = None, 0
        if "item_hop" in rows:
            try:
                hop = float(rows["item_hop"])
            except (TypeError, ValueError):
                hop = float("nan")
            if not (np.isfinite(hop) and hop > 0):
                raise self.catalog.bad_meta("item_hop", f"is {rows['item_hop']!r}, not a positive number of seconds")
        if "event_items" in rows:
            events = self.catalog.parse_int("event_items", str(rows["event_items"]), 0)
        return Cutting(self.item_seconds, hop, events)

    def close(self) -> None:
        self.catalog.close()

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

    def _snap(self) -> Snapshot:
        if self._snapshot is None:
            self._snapshot = load_snapshot(self)
        return self._snapshot

    def refresh(self) -> None:
        """Forget the cached items/features so the next call sees the catalog's latest state."""
        self._snapshot = None

    def items(self) -> ItemView:
        """Every item, ordered by row (the row of `features()` that holds its matrix): a
        read-only sequence that builds each ItemRecord when asked for (items.py); callers that
        look at every item read `item_table()`'s columns instead."""
        return ItemView(self._snap().table)

    def item_table(self) -> ItemTable:
        """Every item as read-only numpy columns, row-aligned with `features()` (items.py)."""
        return self._snap().table

    def features(self) -> np.ndarray:
        """All feature matrices as one read-only (N, T, D) float32 array, row-aligned with items()."""
        return self._snap().features

    def items_for_path(self, path: Path | str) -> list[ItemRecord]:
        table = self._snap().table
        return table.records(table.rows_of(str(Path(path).absolute())))

    def unchanged_items(self, path: Path | str) -> list[ItemRecord] | None:
        """The items of the file at `path`, in time order, when the store holds it as it is on
        disk now: indexed without failure, the same size and modification time (the rule
        `index` skips unchanged files by), recorded in the state of the catalog that items()
        and features() were read from. None otherwise (not stored, changed, failed, or the
        catalog moved on since the snapshot). The file is known by its real path (README:
        "File identity"), so a symlink to an indexed file is that file."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            return None
        snap = self._snap()
        state = self.catalog.file_state(real)
        if state is None:
            return None
        size, mtime_ns, status, generation = state
        if status != STATUS_OK or size != st.st_size or mtime_ns != st.st_mtime_ns or generation != snap.generation:
            return None
        items = snap.table.records(snap.table.rows_of(real))
        return sorted(items, key=lambda r: (r.start, r.end, r.row)) if items else None

    def fingerprint(self) -> str:
        """Changes whenever the stored items or their rows change (search caches key on it)."""
        return f"{self.store_id}-{self._snap().generation}"

    def files(self) -> dict[str, FileRecord]:
        """Every catalogued file by its absolute path string, successful or failed."""
        return self.catalog.files()

    def file_states(self) -> dict[str, tuple[int, int, str, str | None]]:
        """path -> (size, mtime_ns, status, error) of every catalogued file; cheap for large stores."""
        return self.catalog.file_states()

    def failures(self) -> list[tuple[Path, str]]:
        return self.catalog.failures()

    def roots(self) -> list[Path]:
        return self.catalog.roots()

    def stats(self) -> StoreStats:
        files, duration, failures, items, version = self.catalog.counts()
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
            duration=duration,
            failures=failures,
            bytes_on_disk=size,
            roots=tuple(self.roots()),
            schema_version=version,
            item_hop=self.cutting.hop,
            event_items=self.cutting.event_items,
        )

    def verify(self) -> list[str]:
        """Consistency problems of the catalog against the array file (empty when sound)."""
        n_slots, array_file = self.catalog.array_meta()
        problems = self.catalog.problems(n_slots)
        return problems + array_problems(self.path / ARRAYS / array_file, n_slots, self.steps, self.dim)

    def check_checksums(self, chunk_rows: int = 1024) -> tuple[dict[str, int], int]:
        """Items whose feature bytes no longer match their checksum, by file path; and the
        number of items that have no checksum yet (stores made before schema 3).

        Reads the whole array once; a missing or short array is verify()'s business (and is
        reported here as every item of it damaged).
        """
        with self.catalog.transaction(write=False) as db:
            n_slots, array_file = self.catalog.array_meta()
            rows = db.execute(
                "SELECT i.array_row, i.crc, f.path FROM items i JOIN files f ON f.id = i.file_id ORDER BY i.array_row"
            ).fetchall()
            try:
                mm = self.open_array(array_file, n_slots)
            except (OSError, StoreError):
                mm = None
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

    def open_array(self, array_file: str, n_slots: int) -> np.ndarray:
        """The store's array file `array_file` as a read-only map of its n_slots valid rows."""
        return open_array(self.path / ARRAYS / array_file, n_slots, self.steps, self.dim)

    # ---- writing

    @contextmanager
    def writer(self, wait: bool = False) -> Iterator[StoreWriter]:
        """Take the store's write lock (or raise StoreLockedError) and yield the writer."""
        if self.readonly:
            raise StoreError(f"the store at {printable(self.path)} is read-only: check permissions on it")
        with store_lock(self.path, wait=wait):
            w = StoreWriter(self)
            w.recover()
            try:
                yield w
            finally:
                self.refresh()


def _create(
    catalog: Catalog,
    featurizer: Featurizer | None,
    item_seconds: float | None,
    item_hop: float | None = None,
    event_items: int | None = None,
) -> None:
    """Make a new store in the folder of `catalog`: an empty array file, then the catalog naming it."""
    from soundsearch.audio.items import DEFAULT_EVENT_ITEMS, DEFAULT_HOP_FRACTION

    if featurizer is None:
        from soundsearch.features import DEFAULT_FEATURIZER, get_featurizer

        featurizer = get_featurizer(DEFAULT_FEATURIZER)
    seconds = float(item_seconds if item_seconds is not None else 10.0)
    array_file = array_name(1)
    # The array file exists before the catalog that names it commits.
    with os_errors(catalog.folder, "creating the feature array"):
        write_new_array(catalog.folder / ARRAYS / array_file, [], 0, featurizer.steps, featurizer.dim)
    catalog.create({
        "store_id": uuid.uuid4().hex[:12],
        "featurizer_spec": json.dumps(featurizer.spec(), sort_keys=True),
        "featurizer_identity": featurizer.identity,
        "steps": str(featurizer.steps),
        "dim": str(featurizer.dim),
        "item_seconds": repr(seconds),
        # item_hop/event_items: finer items for long recordings (audio.Cutting); stores made
        # before them lack the rows and cut as they always did.
        "item_hop": repr(min(float(item_hop), seconds) if item_hop is not None else DEFAULT_HOP_FRACTION * seconds),
        "event_items": str(int(event_items if event_items is not None else DEFAULT_EVENT_ITEMS)),
        "array_file": array_file,
        "array_seq": "1",
        "n_slots": "0",
        "generation": "0",
        "created_at": repr(time.time()),
    })
