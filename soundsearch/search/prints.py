"""Sound prints of a store's long recordings: what search.contains scans to find where a query's
sound occurs inside them.

    print    the recording at 16 kHz mono through the fingerprint's analysis (search.fingerprint:
             1024-sample Hann frames every 256 samples, 16 ms, 40 Mel bands), in dB, neither
             trimmed nor floored, quantised to PRINT_STEP_DB steps from PRINT_MIN_DB in uint8:
             40 bytes per 16 ms, 9 MB per hour of audio.

Only recordings longer than the store's item_seconds get one (they are what gets cut into many
items, and a short query can hide inside them); a library of one-shots pays nothing. Prints are
derived data: `index` makes them for the long recordings it stored, a search makes the missing
ones (a store indexed before prints existed), and any lost or damaged one is made again. Each is
a file in the store's prints/ folder whose name carries the recording's path hash, size and
mtime, so a changed recording never meets its old print; it is written whole and renamed into
place (paths.TempFile) and stale ones are removed when a newer print of the path is written or
a prune finds their recording gone from the store.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundsearch.search.fingerprint import HOP, N_FFT, SAMPLE_RATE, _filters

if TYPE_CHECKING:
    from soundsearch.store import Store

PRINT_MIN_DB = -70.0  # Mel power in dB (a full-scale tone peaks near +50); quieter is clipped
PRINT_STEP_DB = 0.5
PRINTS_DIR = "prints"
FRAME_SECONDS = HOP / SAMPLE_RATE
# Samples resampled and analysed at a time: a long recording is printed a minute at a time.
_BLOCK = 60 * SAMPLE_RATE


def quantise(db: np.ndarray) -> np.ndarray:
    q = np.round((np.asarray(db, np.float32) - PRINT_MIN_DB) / PRINT_STEP_DB)
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantise(u8: np.ndarray) -> np.ndarray:
    return np.asarray(u8, np.float32) * np.float32(PRINT_STEP_DB) + np.float32(PRINT_MIN_DB)


def _frames_db(x: np.ndarray) -> np.ndarray:
    """(frames, N_MELS) float32 dB of 16 kHz samples, one frame every HOP from sample 0."""
    from soundsearch.features.logmel import _hann

    if x.size < N_FFT:
        return np.zeros((0, _filters().shape[0]), np.float32)
    n = 1 + (x.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(x, (n, N_FFT), (x.strides[0] * HOP, x.strides[0]))
    power = np.abs(np.fft.rfft(frames * _hann(N_FFT), axis=1)) ** 2
    return (10.0 * np.log10(np.maximum(power @ _filters().T, 1e-20))).astype(np.float32)


def signal_print(blocks) -> np.ndarray:
    """The uint8 print of a stream of mono float32 blocks at SAMPLE_RATE."""
    out: list[np.ndarray] = []
    buf = np.zeros(0, np.float32)
    for block in blocks:
        buf = np.concatenate([buf, np.asarray(block, np.float32)])
        if buf.size >= _BLOCK + N_FFT:
            n = (buf.size - N_FFT) // HOP + 1  # frames whose samples are all here
            out.append(quantise(_frames_db(buf[: (n - 1) * HOP + N_FFT])))
            buf = buf[n * HOP :]
    if buf.size >= N_FFT:
        out.append(quantise(_frames_db(buf)))
    elif buf.size and not out:  # a recording shorter than one frame is one padded frame
        out.append(quantise(_frames_db(np.pad(buf, (0, N_FFT - buf.size)))))
    return np.concatenate(out) if out else np.zeros((0, _filters().shape[0]), np.uint8)


def file_print(path: Path | str) -> np.ndarray | None:
    """The print of an audio file; None when it cannot be read."""
    from soundsearch.audio.decode import stream_mono
    from soundsearch.errors import SoundsearchError

    try:
        _, blocks, _ = stream_mono(path, SAMPLE_RATE)
        return signal_print(blocks)
    except (SoundsearchError, OSError, RuntimeError, ValueError, MemoryError):
        return None


def _long_rows(store: "Store") -> np.ndarray:
    """Store rows, ascending, of the items of recordings longer than the store's item_seconds."""
    return np.flatnonzero(store.item_table().file_duration > store.cutting.item_seconds + 1e-6)


def long_recordings(store: "Store") -> dict[str, list[int]]:
    """path -> store rows, of every stored recording longer than the store's item_seconds."""
    table = store.item_table()
    rows = _long_rows(store)
    out: dict[str, list[int]] = {}
    if not rows.size:
        return out
    # The long rows grouped by file (each group ascending), the files in order of their first
    # long row: the order a walk over the items meets them in.
    files = table.file_index[rows]
    order = np.argsort(files, kind="stable")
    grouped, files = rows[order], files[order]
    starts = np.flatnonzero(np.r_[True, files[1:] != files[:-1]])
    ends = np.r_[starts[1:], len(grouped)]
    names = table.path_names()  # as str(ItemRecord.path) spells them
    flat = grouped.tolist()
    for g in np.argsort(grouped[starts], kind="stable").tolist():
        key, mine = names[files[starts[g]]], flat[starts[g] : ends[g]]
        # Two spellings of one path (never written by index) are one recording, rows in order.
        out[key] = sorted(out[key] + mine) if key in out else mine
    return out


def long_hours(store: "Store", longs: dict[str, list[int]]) -> float:
    """Hours of audio in the recordings of `longs` (long_recordings)."""
    durations = store.item_table().file_duration
    return sum(float(durations[rows[0]]) for rows in longs.values()) / 3600.0


class PrintCache:
    """The prints/ folder of a store (see the module docstring)."""

    def __init__(self, store_path: Path | str, writable: bool = True):
        self.folder = Path(store_path) / PRINTS_DIR
        self.writable = writable
        self._memo: dict[tuple[str, int, int], np.ndarray] = {}  # a search engine's prints, kept
        self._longs: tuple[str, dict[str, list[int]], float] | None = None
        self._hours: tuple[str, float] | None = None
        self._states: tuple[str, dict] | None = None

    def hours(self, store: "Store") -> float:
        """Hours of the store's long recordings, once per store state, from the item columns
        alone: a search asks on every query whether the scan is within INSIDE_MAX_HOURS, and
        a store of a million items past it should not pay for the path map to be told no."""
        key = store.fingerprint()
        if self._longs is not None and self._longs[0] == key:
            return self._longs[2]
        if self._hours is None or self._hours[0] != key:
            table, rows = store.item_table(), _long_rows(store)
            _, first = np.unique(table.file_index[rows], return_index=True)
            self._hours = (key, float(table.file_duration[rows[first]].sum()) / 3600.0)
        return self._hours[1]

    def recordings(self, store: "Store") -> tuple[dict[str, list[int]], float]:
        """(long_recordings(store), their hours), read once per store state: a search engine
        asks on every query, and reading a million items' catalog rows is not free."""
        key = store.fingerprint()
        if self._longs is None or self._longs[0] != key:
            longs = long_recordings(store)
            self._longs = (key, longs, long_hours(store, longs))
        return self._longs[1], self._longs[2]

    def _store_state(self, store: "Store") -> dict:
        """path -> (size, mtime_ns, ...) of every catalogued file, once per store state (only
        where prints are wanted: a hundred thousand files' rows are a second to read)."""
        key = store.fingerprint()
        if self._states is None or self._states[0] != key:
            self._states = (key, store.file_states())
        return self._states[1]

    @staticmethod
    def _stem(path: str) -> str:
        return hashlib.sha1(os.fsencode(path)).hexdigest()[:20]

    def _name(self, path: str, size: int, mtime_ns: int) -> Path:
        return self.folder / f"{self._stem(path)}-{size}-{mtime_ns}.npy"

    def load(self, path: str, size: int, mtime_ns: int) -> np.ndarray | None:
        try:
            arr = np.load(self._name(path, size, mtime_ns), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != _filters().shape[0]:
            return None
        return arr

    def save(self, path: str, size: int, mtime_ns: int, u8: np.ndarray) -> None:
        """Write a print (atomically) and drop older prints of the same path; a store folder
        that cannot be written keeps prints in memory only."""
        from soundsearch import paths

        if not self.writable:
            return
        target = self._name(path, size, mtime_ns)
        try:
            self.folder.mkdir(exist_ok=True)
            tmp = paths.TempFile(target)
        except OSError:
            return
        try:
            with open(tmp.fd, "wb", closefd=False) as f:
                np.save(f, np.ascontiguousarray(u8, dtype=np.uint8), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            paths.chmod_as_created(tmp.name)
            tmp.publish(target)
        except OSError:
            tmp.discard()
            return
        for old in self.folder.glob(f"{self._stem(path)}-*.npy"):
            if old != target:
                old.unlink(missing_ok=True)

    def prints(self, store: "Store", wanted: list[str], workers: int = 4) -> dict[str, np.ndarray]:
        """path -> print of each of `wanted` (stored recordings), made and saved where missing;
        recordings that cannot be read are left out."""
        states = self._store_state(store)
        out: dict[str, np.ndarray] = {}
        missing: list[tuple[str, int, int]] = []
        for p in wanted:
            st = states.get(p)
            if st is None:
                continue
            key = (p, st[0], st[1])
            got = self._memo.get(key)
            if got is None:
                got = self.load(*key)
            if got is None:
                missing.append((p, st[0], st[1]))
            else:
                out[p] = self._memo[key] = got

        def make(entry):
            p, size, mtime = entry
            try:
                now = os.stat(p)
            except OSError:
                return None
            if now.st_size != size or now.st_mtime_ns != mtime:
                return None  # changed since it was indexed: its items describe another sound
            u8 = file_print(p)
            if u8 is not None:
                self.save(p, size, mtime, u8)
            return u8

        # Decoding, resampling and numpy's FFT release the GIL, so threads overlap them.
        if missing:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing), os.cpu_count() or 1))) as pool:
                for key, u8 in zip(missing, pool.map(make, missing)):
                    if u8 is not None:
                        out[key[0]] = self._memo[key] = u8
        return out

    def prune(self, store: "Store") -> int:
        """Remove prints of recordings no longer stored (or changed), and abandoned temp files."""
        from soundsearch import paths

        if not self.folder.is_dir():
            return 0
        keep = {self._name(p, st[0], st[1]).name for p, st in store.file_states().items()}
        removed = paths.remove_abandoned(self.folder, ".*.tmp")
        for f in self.folder.glob("*.npy"):
            if f.name not in keep:
                f.unlink(missing_ok=True)
                removed += 1
        return removed


def warm(store: "Store", workers: int = 4) -> int:
    """Make the missing prints of a store's long recordings and drop stale ones; how many exist.

    A store with more than constants.INSIDE_MAX_HOURS of long recordings is searched inside
    them only when a query asks (`--inside`), so its prints are made then, not by every index
    run: hundreds of hours would cost an hour of decoding for a search that may never come."""
    from soundsearch.constants import INSIDE_MAX_HOURS

    cache = PrintCache(store.path)
    cache.prune(store)
    longs, hours = cache.recordings(store)
    if hours > INSIDE_MAX_HOURS:
        return sum(1 for _ in cache.folder.glob("*.npy")) if cache.folder.is_dir() else 0
    return len(cache.prints(store, sorted(longs), workers))


__all__ = [
    "FRAME_SECONDS",
    "PRINTS_DIR",
    "PrintCache",
    "dequantise",
    "file_print",
    "long_hours",
    "long_recordings",
    "signal_print",
    "warm",
]
