"""The feature array file: one (slots, T, D) little-endian float32 .npy, grown in place.

The header has a fixed size (a multiple of 64 like numpy's own), so growing the array only
rewrites the shape inside it, never moves the data; the file stays a plain .npy that anyone can
load without pickle. Every write is fsync'ed before it returns: the store commits the catalog
rows that point at new rows only after that (writer.py).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from soundsearch import faults
from soundsearch.errors import StoreError, printable

HEADER_BYTES = 128
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
# A name soundsearch writes (features-<seq>.npy); recovery deletes every other file in arrays/.
NAME_PATTERN = r"features-[0-9]+\.npy"


def array_name(seq: int) -> str:
    return f"features-{seq}.npy"


def row_crc(row: np.ndarray) -> int:
    """crc32 of one item's features as stored (little-endian float32, C order)."""
    return zlib.crc32(np.ascontiguousarray(row, dtype="<f4").tobytes())


def npy_header(n: int, steps: int, dim: int) -> bytes:
    body = repr({"descr": "<f4", "fortran_order": False, "shape": (n, steps, dim)}).encode("latin1")
    pad = HEADER_BYTES - len(_NPY_MAGIC) - 2 - len(body) - 1
    if pad < 0:
        raise StoreError(f"array shape {(n, steps, dim)} does not fit the store's .npy header")
    return _NPY_MAGIC + struct.pack("<H", HEADER_BYTES - len(_NPY_MAGIC) - 2) + body + b" " * pad + b"\n"


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file; ValueError for anything but a C-order v1.0 one."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            raise ValueError(f"unexpected .npy version {version}")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        if fortran:
            raise ValueError("Fortran-ordered array")
        return shape, dtype, f.tell()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_array(path: Path, rows: Iterable[np.ndarray], n: int, steps: int, dim: int) -> None:
    """Write a complete array file under a temporary name, fsync it, then move it into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(npy_header(n, steps, dim))
        written = 0
        for block in rows:
            f.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
            written += len(block)
        if written != n:
            raise StoreError(f"internal error: wrote {written} rows, expected {n}")
        f.flush()
        # Complete but neither durable nor in place: a kill leaves only the .tmp, which the next
        # writer's recovery (or the next creation, which rewrites it) must clear.
        faults.point("array.new_written")
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def append_rows(path: Path, start: int, blocks: list[np.ndarray], steps: int, dim: int) -> None:
    """Write `blocks` as rows start, start+1, ... and fsync them, then the header that counts them."""
    n_new = sum(len(b) for b in blocks)
    with open(path, "r+b") as fh:
        fh.seek(HEADER_BYTES + start * steps * dim * 4)
        for b in blocks:
            fh.write(np.ascontiguousarray(b, dtype="<f4").tobytes())
        fh.flush()
        # Rows written, not yet fsync'ed, header still counting the old rows: past n_slots, so
        # the next writer must truncate them, whatever state they are in.
        faults.point("array.rows_written")
        os.fsync(fh.fileno())
        # Rows durable but the header not yet grown: the file is longer than its header says.
        faults.point("array.rows_synced")
        fh.seek(0)
        fh.write(npy_header(start + n_new, steps, dim))
        fh.flush()
        os.fsync(fh.fileno())


def truncate_rows(path: Path, n_slots: int, steps: int, dim: int) -> None:
    """Cut the file back to its first n_slots rows, with a header that says so."""
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + n_slots * steps * dim * 4)
        f.seek(0)
        f.write(npy_header(n_slots, steps, dim))
        f.flush()
        os.fsync(f.fileno())


def open_array(path: Path, n_slots: int, steps: int, dim: int) -> np.ndarray:
    """The first n_slots rows as a read-only (n_slots, steps, dim) memory map.

    FileNotFoundError when the file is gone (a compaction replaced it); StoreError when it is not
    the array the catalog describes."""
    try:
        shape, dtype, offset = read_npy_header(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"the feature array {printable(path)} is unreadable ({exc}): move the store folder away and index again"
        ) from exc
    row_bytes = steps * dim * 4
    if (
        dtype != np.dtype("<f4")
        or tuple(shape[1:]) != (steps, dim)
        or shape[0] < n_slots
        or os.path.getsize(path) < offset + n_slots * row_bytes
    ):
        raise StoreError(
            f"the feature array {printable(path)} has shape {shape} ({dtype}), the catalog expects "
            f"{n_slots} rows of ({steps}, {dim}) float32: move the store folder away and index again"
        )
    if n_slots == 0:
        empty = np.empty((0, steps, dim), dtype=np.float32)
        empty.flags.writeable = False
        return empty
    mm = np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(n_slots, steps, dim))
    return mm.view(np.ndarray)


def raw_rows(path: Path, n_slots: int, steps: int, dim: int) -> np.ndarray:
    """The first n_slots rows as a memory map, unchecked (the writer checked the file)."""
    if n_slots:
        return np.memmap(path, dtype="<f4", mode="r", offset=HEADER_BYTES, shape=(n_slots, steps, dim))
    return np.empty((0, steps, dim), np.float32)


def array_problems(path: Path, n_slots: int, steps: int, dim: int) -> list[str]:
    """What is wrong with the array file for a catalog of n_slots rows (empty when sound)."""
    problems: list[str] = []
    name = path.name
    try:
        shape, dtype, offset = read_npy_header(path)
        if dtype != np.dtype("<f4") or tuple(shape[1:]) != (steps, dim) or shape[0] < n_slots:
            problems.append(f"array file {name} has shape {shape} {dtype}, expected >= {n_slots} rows")
        size = os.path.getsize(path)
        if size < offset + n_slots * steps * dim * 4:
            problems.append(f"array file {name} holds {size} bytes, too few for {n_slots} rows")
    except (OSError, ValueError) as exc:
        problems.append(f"array file {name} unreadable: {exc}")
    return problems
