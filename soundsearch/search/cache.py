"""The search engine's cache of the database side: its layout, file name, creation, loading
and stale removal.

`<store>/cache/search-<store state>-<model path>-<model content>-<dtype>-v<N>.npy`, one row per
item [PB | PA | pooled | acoustic], then as few rows as hold the acoustic standardisation
(mu, sigma) as raw float32 bytes (exact in either dtype; pack_norm, unpack_norm). The acoustic
part costs D' values per item (logmel's default mean,std,max: 384, 1.5 KiB in float32, +7% on
the 5.1k-value row of the default model).

float32 by default, compact from COMPACT_CACHE_MIN_ITEMS items (default_cache_dtype). The compact dtypes (COMPACT_DTYPES: bfloat16, float16) store the halves
[PB | PA], 82-91% of a row and all that the pair arithmetic reads, in 16 bits, and the pooled
embedding and acoustic vector as their float32 bytes (2 storage values each), so closeness and
the acoustic cosine stay exact: a row of the default model (aisfx) is 14.5 KiB instead of 24.5,
of a logmel store 12 instead of 22, and a query streams half the bytes of halves. Scores from
the 16-bit halves are approximate; a search re-scores the items that could rank near the top
from float32 rows (rerank.py), so its results are the float32 engine's.

Written to a temporary file and renamed into place (paths.TempFile); writing one removes caches
of older store states and of older versions of the same model file, and what builds killed
before their rename left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundsearch import faults, paths
from soundsearch.errors import StoreError

if TYPE_CHECKING:
    from soundsearch.model.arrays import ModelBase

# Bump when the cache layout or the folding changes: old files then simply stop matching.
CACHE_VERSION = 3
CACHE_PREFIX = "search-"
CACHE_DTYPES = ("float32", "bfloat16", "float16")
# Halves in 16 bits, the rest as float32 bytes; every value stored as uint16 (numpy has no
# bfloat16), read as bfloat16 or float16.
COMPACT_DTYPES = ("bfloat16", "float16")


def default_cache_dtype(n_items: int) -> str:
    """The cache dtype a store of `n_items` gets unless one is asked for (constants)."""
    from soundsearch.constants import COMPACT_CACHE_DTYPE, COMPACT_CACHE_MIN_ITEMS

    return COMPACT_CACHE_DTYPE if n_items >= COMPACT_CACHE_MIN_ITEMS else "float32"


def storage_dtype(dtype: str) -> type:
    """The numpy type of a cache of `dtype`'s file."""
    return np.uint16 if dtype in COMPACT_DTYPES else np.float32


def row_width(dtype: str, halves: int, tail: int) -> int:
    """Storage values per item row: `halves` 16-bit values and `tail` float32 values take two
    storage values each in a compact cache."""
    return halves + 2 * tail if dtype in COMPACT_DTYPES else halves + tail


def _sha(data: bytes | str, n: int = 16) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest()[:n]


def model_key(model: "ModelBase") -> str:
    """Content hash of the loaded model (weights, normalisation, architecture).

    Hashing what was loaded, not the file, keeps the key right even if the file is replaced
    while a search runs. The same key whether the weights were loaded as a torch network or
    as arrays (the network's float32 and int64 values), so both backends share one cache.
    """
    h = hashlib.sha256(json.dumps(model.config.to_json(), sort_keys=True).encode())
    for name, value in sorted(model.state_arrays().items()):
        value = np.asarray(value)
        h.update(name.encode())
        h.update(np.ascontiguousarray(value, np.float32 if np.issubdtype(value.dtype, np.floating) else np.int64).tobytes())
    h.update(np.asarray(model.norm_mean, np.float32).tobytes())
    h.update(np.asarray(model.norm_std, np.float32).tobytes())
    return h.hexdigest()[:16]


def cache_name(store_fingerprint: str, model_path: Path | None, key: str, dtype: str) -> str:
    """The cache file's name for a store state, a model file (its path and content) and a dtype."""
    where = str(model_path) if model_path is not None else "(unsaved)"
    return f"{CACHE_PREFIX}{_sha(store_fingerprint, 12)}-{_sha(where, 8)}-{key}-{dtype}-v{CACHE_VERSION}.npy"


def norm_rows(acoustic_width: int, row_width: int, storage: type) -> int:
    """Rows after the items holding (mu, sigma) as float32 bytes."""
    values = 2 * acoustic_width * 4 // np.dtype(storage).itemsize
    return -(-values // row_width)


def pack_norm(mean: np.ndarray, std: np.ndarray, row_width: int, storage: type) -> np.ndarray:
    """(mu, sigma) as the cache's last rows."""
    raw = np.concatenate([mean, std]).astype(np.float32).view(storage)
    rows = np.zeros(norm_rows(mean.shape[0], row_width, storage) * row_width, dtype=storage)
    rows[: raw.size] = raw
    return rows.reshape(-1, row_width)


def unpack_norm(arr: np.ndarray, n_items: int, acoustic_width: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from a cache of n_items item rows."""
    d = acoustic_width
    raw = np.ascontiguousarray(arr[n_items:]).reshape(-1)
    values = raw.view(np.uint8)[: 2 * d * 4].view(np.float32)
    return values[:d].copy(), values[d:].copy()


def load_cache(path: Path, shape: tuple[int, int], storage: type) -> np.ndarray | None:
    """The cache at `path` memory-mapped, or None when it is missing, unreadable or of another shape."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError):
        return None  # unreadable or truncated: the caller recomputes it, replacing it
    return arr if arr.shape == shape and arr.dtype == storage else None


def create_cache_file(
    cache_dir: Path, path: Path, shape: tuple[int, int], storage: type
) -> tuple[np.ndarray | None, paths.TempFile | None]:
    """A writable memory map over a new temporary file beside `path`, and that file;
    (None, None) when the folder cannot be written to (a read-only store still searches, it just
    recomputes its side each time). A full disk is an error."""
    tmp: paths.TempFile | None = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = paths.TempFile(path)
        out = np.lib.format.open_memmap(tmp.name, mode="w+", dtype=storage, shape=shape)
        # Claim the blocks now: a memory map over a full disk fails with SIGBUS on the
        # first write to a page that cannot be allocated, not with an error.
        with open(tmp.name, "r+b") as fh:
            try:
                os.posix_fallocate(fh.fileno(), 0, os.path.getsize(tmp.name))
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise  # file systems without fallocate just write as they go
        return out, tmp
    except OSError as exc:
        if tmp is not None:
            tmp.discard()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            size = shape[0] * shape[1] * np.dtype(storage).itemsize
            raise StoreError(
                f"no room for the search cache ({size / 2**30:.1f} GiB) in {cache_dir}: "
                "free some disk space"
            ) from None
        return None, None


def publish_cache_file(out: np.ndarray, tmp: paths.TempFile, path: Path) -> np.ndarray:
    """Flush the written temporary file, rename it into place, drop stale caches; the cache
    memory-mapped from its final path."""
    out.flush()
    paths.chmod_as_created(tmp.name)
    # Built and flushed, not yet under its name: a kill must leave no file a search would load.
    faults.point("cache.written")
    tmp.publish(path)
    # In place, stale caches not yet removed: the next search must pick this one, not a stale one.
    faults.point("cache.published")
    remove_stale(path.parent, path)
    return np.load(path, mmap_mode="c", allow_pickle=False)


def remove_stale(cache_dir: Path, current: Path) -> None:
    """Drop caches of an older store state, of an older version of this model file, or of
    an older cache layout, and the temporary files of builds that were killed; other models'
    and other dtypes' caches of this state stay."""
    paths.remove_abandoned(cache_dir, f".{CACHE_PREFIX}*.tmp")
    store_part, where_part, key_part = current.name[len(CACHE_PREFIX) :].split("-")[:3]
    for other in cache_dir.glob(f"{CACHE_PREFIX}*.npy"):
        if other == current:
            continue
        parts = other.name[len(CACHE_PREFIX) : -len(".npy")].split("-")
        stale = (
            len(parts) != 5
            or parts[0] != store_part
            or (parts[1] == where_part and parts[2] != key_part)
            or parts[4] != f"v{CACHE_VERSION}"
        )
        if stale:
            try:
                other.unlink()
            except OSError:
                pass  # another process may hold or have removed it; harmless
