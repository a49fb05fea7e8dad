"""The store folder: the names it holds, the write lock, and its file-system errors as one line.

    catalog.sqlite        the SQLite catalog (catalog.py)
    arrays/features-N.npy the feature array (arrays.py)
    lock                  flock'ed by the one process allowed to write
    cache/                derived files, rebuilt when missing: the items as arrays
                          (itemcache.py) and the search engine's cache (soundsearch.search)
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from soundsearch.errors import StoreError, StoreLockedError, printable

CATALOG = "catalog.sqlite"
ARRAYS = "arrays"
LOCK = "lock"
# The per-store folder of derived files: the items' arrays (itemcache.py) and the search
# engine's cache (soundsearch.search keeps it inside the store).
CACHE = "cache"
# Files a store folder may hold; anything else means the folder is someone else's. The cache
# is ours too: a store whose catalog was emptied after a query must be recoverable by `index`.
OWN_NAMES = {CATALOG, CATALOG + "-wal", CATALOG + "-shm", CATALOG + "-journal", ARRAYS, LOCK, CACHE}


def check_store_path(path: Path) -> None:
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


def check_foreign(path: Path) -> None:
    """Refuse to turn a folder full of someone else's files into a store."""
    if path.is_dir():
        foreign = [n for n in os.listdir(path) if n not in OWN_NAMES]
        if foreign:
            raise StoreError(
                f"{printable(path)} is not empty and holds no soundsearch store "
                f"(found {foreign[0]!r}): choose an empty or new folder for --store"
            )


@contextmanager
def os_errors(where: Path, doing: str) -> Iterator[None]:
    """OSError as a StoreError naming the store and what was being done (disk full said plainly)."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            raise StoreError(f"disk full: no space left for the store at {printable(where)} ({doing} failed: {reason})") from exc
        raise StoreError(f"store at {printable(where)}: {doing} failed: {reason}") from exc


@contextmanager
def store_lock(path: Path | str, wait: bool = False) -> Iterator[None]:
    """Hold the store's write lock: an exclusive flock on `lock`, released even on kill -9."""
    path = Path(path)
    check_store_path(path)
    lock_path = path / LOCK
    with os_errors(path, "opening the lock file"):
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
