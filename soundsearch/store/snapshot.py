"""A consistent read of a store: every item and the feature rows they point at, row-aligned.

The catalog's items and the array file are read in one catalog read transaction. The writer
unlinks a replaced array file only after the commit that stops naming it, so the file opened
inside the transaction matches the rows just read, or is gone (then the read is tried again).
The items come from their derived copy of the generation read in that transaction when there
is one (itemcache.py), else from the catalog, and the copy is then written for the next reader.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from soundsearch.errors import StoreError, printable
from soundsearch.store.folder import CACHE
from soundsearch.store.itemcache import items_path, load_items, save_items
from soundsearch.store.items import ItemTable, table_from_catalog

if TYPE_CHECKING:
    from soundsearch.store.store import Store


@dataclass
class Snapshot:
    generation: int
    table: ItemTable
    features: np.ndarray


def load_snapshot(store: Store) -> Snapshot:
    # A compaction may replace the array file between our catalog read and the open;
    # the catalog then names the new file, so read again.
    for attempt in range(5):
        try:
            return _read_snapshot(store)
        except FileNotFoundError:
            if attempt == 4:
                raise StoreError(
                    f"the store at {printable(store.path)} lost its feature array: "
                    "move the store folder away and index again"
                ) from None
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _read_snapshot(store: Store) -> Snapshot:
    catalog = store.catalog
    columns = None
    with catalog.transaction(write=False) as db:
        generation = catalog.int_meta("generation")
        n_slots, array_file = catalog.array_meta()
        copy = items_path(store.path / CACHE, store.store_id, generation)
        loaded = load_items(copy, generation) if copy is not None else None
        if loaded is not None and len(loaded[0]) != catalog.item_count(db):
            loaded = None  # the catalog was changed without a new generation (edited by hand)
        if loaded is None:
            columns = catalog.item_columns(db)
        # Opened inside the read transaction: see the module docstring.
        mm = store.open_array(array_file, n_slots)
    if loaded is None:
        loaded = table_from_catalog(*columns, store.path)
        if copy is not None and not store.readonly:
            save_items(copy, generation, *loaded)
    table, slots = loaded
    if len(slots) and (slots[0] < 0 or slots[-1] >= n_slots):
        raise StoreError(
            f"the store at {printable(store.path)} is inconsistent (items beyond the feature array): "
            "move the store folder away and index again"
        )
    if len(slots) == n_slots:
        features = mm  # rows are exactly 0..N-1: no copy
    else:
        # Holes left by a run that was stopped before compacting; the next `index` compacts.
        features = np.ascontiguousarray(mm[slots])
        features.flags.writeable = False
    return Snapshot(generation, table, features)
