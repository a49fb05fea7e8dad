"""The feature store: a SQLite catalog of files and items plus one memory-mappable feature array.

Layout of a store folder (folder.py):

    catalog.sqlite        files, items, roots, meta (WAL mode; the schema version is user_version)
    arrays/features-N.npy one (slots, T, D) float32 .npy file, grown in place by appending rows
    lock                  flock'ed by the one process allowed to write
    cache/                derived files: the items as arrays (itemcache.py), the search caches

One job per module:

    records.py   ItemRecord, FileRecord, StoreStats, FileEntry: what the store hands out and takes in
    items.py     ItemTable, every item as numpy columns; ItemView, Store.items()'s records built on demand
    itemcache.py the ItemTable's copy in cache/, per catalog generation, so a new process skips SQLite
    folder.py    the folder's names, refusing someone else's folder, the write lock
    catalog.py   the SQLite catalog: schema, migrations, meta rows, and the one transaction
                 helper, which bumps the generation (search caches and itemcache.py key on
                 it) for every change to the items
    arrays.py    the feature array file format: a fixed-size .npy header, rows fsync'ed on write
    store.py     Store: opening (creating under the lock), reading, checking
    snapshot.py  a consistent read of every item and the feature rows they point at
    mapped.py    memory-mapped arrays: the pages of scattered rows read ahead, all at once
    writer.py    StoreWriter: the fsync-before-commit rule, recovery after a kill, compaction

Crash safety rests on one ordering rule: feature rows are appended to the array file and fsync'ed
*before* the catalog transaction that points items at them commits (writer.py). So at every
instant the catalog points at complete, durable rows, and `features()` is a plain memory map,
row-aligned with `items()`, except in the short window after a killed run (then it is a copy).
"""

from soundsearch.store.arrays import row_crc
from soundsearch.store.catalog import MIGRATIONS, SCHEMA_VERSION
from soundsearch.store.folder import ARRAYS, CACHE, CATALOG, LOCK, store_lock
from soundsearch.store.items import ItemTable, ItemView
from soundsearch.store.records import STATUS_FAILED, STATUS_OK, FileEntry, FileRecord, ItemRecord, StoreStats
from soundsearch.store.store import Store
from soundsearch.store.writer import StoreWriter

__all__ = [
    "ARRAYS",
    "CACHE",
    "CATALOG",
    "LOCK",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATUS_FAILED",
    "STATUS_OK",
    "FileEntry",
    "FileRecord",
    "ItemRecord",
    "ItemTable",
    "ItemView",
    "Store",
    "StoreStats",
    "StoreWriter",
    "row_crc",
    "store_lock",
]
