"""A derived copy of the catalog's items as arrays, so a new process need not fetch every item
row from SQLite (at a million items that is seconds).

`<store>/cache/items-<store id>-g<generation>-v<N>.npz`: the ItemTable's columns, each row's
array-file row, and the distinct paths as their file-system bytes joined by NUL (no path holds
one), so names that are not valid UTF-8 round-trip exactly; no pickles. Every change to the
items bumps the generation (catalog.py), so a file names the one state of the items it holds;
the reader looks for the file of the generation it reads, inside that same read transaction
(snapshot.py), and ignores one that is damaged, does not hold what its name says, or holds
another number of items than the catalog (a catalog edited by hand keeps its generation).

Written by the first reader of a state (to a temporary file renamed into place, paths.TempFile)
which then drops the files of older states; a store folder that cannot be written to (read-only,
no space) keeps the table in memory and reads the catalog next time. The zip format's checksums
let a file cut short or garbled by a crash read as damaged, so it is written without fsync.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from soundsearch.store.items import ItemTable

# Bump when the layout changes: old files then stop matching and are removed on the next write.
ITEMS_VERSION = 1
ITEMS_PREFIX = "items-"
_NAME = re.compile(rf"{ITEMS_PREFIX}(\w+)-g(\d+)-v(\d+)\.npz")
_SEP = b"\0"


def items_path(cache_dir: Path, store_id: str, generation: int) -> Path | None:
    """Where the copy of this state lives; None for a store id unfit for a file name (the
    catalog's meta row was edited): then the table is kept in memory only."""
    if not re.fullmatch(r"[0-9A-Za-z]{1,64}", store_id):
        return None
    return cache_dir / f"{ITEMS_PREFIX}{store_id}-g{generation}-v{ITEMS_VERSION}.npz"


def load_items(path: Path, generation: int) -> tuple[ItemTable, np.ndarray] | None:
    """(table, array-file rows) from the copy at `path`, or None when it is missing, damaged or
    does not hold `generation`'s items in this layout."""
    try:
        with np.load(path, allow_pickle=False) as z:
            got = {k: z[k] for k in ("meta", "paths", "file_index", "start", "end", "file_duration", "slots")}
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged file fails in zipfile, zlib or numpy, in many ways: rebuilt
        return None
    return _checked(got, generation)


def _checked(got: dict, generation: int) -> tuple[ItemTable, np.ndarray] | None:
    meta, blob = got["meta"], got["paths"]
    if meta.dtype != np.int64 or meta.shape != (4,) or blob.dtype != np.uint8 or blob.ndim != 1:
        return None
    version, gen, n, n_files = (int(v) for v in meta)
    if version != ITEMS_VERSION or gen != generation or n < 0 or n_files < 0:
        return None
    want = {"file_index": np.int32, "start": np.float64, "end": np.float64, "file_duration": np.float64,
            "slots": np.int64}
    for key, dtype in want.items():
        if got[key].dtype != dtype or got[key].shape != (n,):
            return None
    fi, slots = got["file_index"], got["slots"]
    if n and (fi.min() < 0 or fi.max() >= n_files or np.any(np.diff(slots) <= 0)):
        return None
    # One decode for all paths: with UTF-8 and surrogateescape, decoding the joined bytes and
    # splitting gives what decoding each path would (NUL ends any partial sequence).
    paths = tuple(os.fsdecode(blob.tobytes()).split("\0")) if n_files else ()
    if len(paths) != n_files:
        return None
    return ItemTable(paths, fi, got["start"], got["end"], got["file_duration"]), slots


def save_items(path: Path, generation: int, table: ItemTable, slots: np.ndarray) -> bool:
    """Write the copy of `generation`'s items to `path` and drop older ones; False (and nothing
    left behind) where the folder cannot take it: the caller keeps the table in memory."""
    from soundsearch import paths as fs

    encoded = [os.fsencode(p) for p in table.paths]
    if any(_SEP in p for p in encoded):
        return False  # not a real path; joined with NUL it would not split back
    tmp = None
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = fs.TempFile(path)
        with open(tmp.fd, "wb", closefd=False) as f:
            np.savez(
                f,
                meta=np.array([ITEMS_VERSION, generation, len(table), len(table.paths)], dtype=np.int64),
                paths=np.frombuffer(_SEP.join(encoded), dtype=np.uint8),
                file_index=table.file_index,
                start=table.start,
                end=table.end,
                file_duration=table.file_duration,
                slots=np.asarray(slots, dtype=np.int64),
            )
        fs.chmod_as_created(tmp.name)
        tmp.publish(path)
    except OSError:
        if tmp is not None:
            tmp.discard()
        return False
    remove_stale(path)
    return True


def remove_stale(current: Path) -> None:
    """Drop the copies of older states of this store, of other stores (the folder was made
    again) and of other layouts, and what writers killed before their rename left behind.
    Copies of newer states stay: a reader still on an old state may write its copy late."""
    from soundsearch import paths as fs

    folder = current.parent
    fs.remove_abandoned(folder, f".{ITEMS_PREFIX}*.tmp")
    mine = _NAME.fullmatch(current.name)
    for other in folder.glob(f"{ITEMS_PREFIX}*.npz"):
        m = _NAME.fullmatch(other.name)
        stale = m is None or m[1] != mine[1] or m[3] != mine[3] or int(m[2]) < int(mine[2])
        if stale:
            try:
                other.unlink()
            except OSError:
                pass  # another process removed it first, or the folder turned read-only: harmless
