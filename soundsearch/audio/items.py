"""Cutting recordings into items, and times of day in a recording ("1:35.5").

Item rule (`split_items`, `iter_items`): a recording is cut into consecutive windows of
`item_seconds`. A trailing remainder of at least `min_last_seconds` becomes an item of its own;
a shorter remainder is merged into the window before it (so no audio is dropped and no item is a
sliver). A recording no longer than `item_seconds` (even one sample long) is a single item.
Finer items for long recordings (a store's meta item_hop, event_items): see Cutting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from soundsearch.audio.decode import stream_mono
from soundsearch.audio.events import (
    EVENT_CHUNK_SECONDS,
    EVENT_MIN_SECONDS,
    EVENT_PRE_SECONDS,
    EVENT_SECONDS,
    ONSET_FRAME_SECONDS,
    event_end,
    onset_frames,
)
from soundsearch.audio.files import PathLike
from soundsearch.audio.validate import AudioInfo
from soundsearch.errors import AudioError, AudioWarning


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    signal: np.ndarray


def _item_bounds(n: int, item: int, min_last: int) -> list[tuple[int, int]]:
    if n <= item:
        return [(0, n)]
    full, rem = divmod(n, item)
    bounds = [(i * item, (i + 1) * item) for i in range(full)]
    if rem >= min_last:
        bounds.append((full * item, n))
    elif rem:
        bounds[-1] = (bounds[-1][0], n)
    return bounds


def _item_lengths(item_seconds: float, min_last_seconds: float, sample_rate: int) -> tuple[int, int]:
    if not item_seconds > 0:
        raise ValueError(f"item_seconds must be positive, got {item_seconds}")
    item = max(1, int(round(item_seconds * sample_rate)))
    min_last = max(0, int(round(min_last_seconds * sample_rate)))
    return item, min_last


def split_items(
    signal: np.ndarray, sample_rate: int, item_seconds: float = 10.0, min_last_seconds: float = 1.0
) -> list[Segment]:
    """Cut a mono signal into items by the module's item rule (see the module docstring)."""
    item, min_last = _item_lengths(item_seconds, min_last_seconds, sample_rate)
    return [
        Segment(a / sample_rate, b / sample_rate, signal[a:b])
        for a, b in _item_bounds(int(signal.shape[0]), item, min_last)
    ]


def iter_items(
    path: PathLike,
    sample_rate: int,
    item_seconds: float = 10.0,
    min_last_seconds: float = 1.0,
    *,
    cutting: "Cutting | None" = None,
    start: float | None = None,
    end: float | None = None,
) -> tuple[AudioInfo, Iterator[Segment], list[AudioWarning]]:
    """Stream a file's items holding about one item in memory (a minute with event items).

    `cutting` (default: consecutive windows of item_seconds, the rule of split_items) says how
    to cut; `start`/`end` (seconds) cut only that region of the file, with item times still
    counted from the file's start. Returns the header, a generator of Segments and the warnings
    list, which is complete once the generator is exhausted. Errors found while decoding raise
    AudioError from the generator; a region outside the file raises AudioError at once.
    """
    info, blocks, warnings = stream_mono(path, sample_rate)
    if cutting is None:
        cutting = Cutting(item_seconds, None, 0, min_last_seconds)
    _item_lengths(cutting.item_seconds, cutting.min_last_seconds, sample_rate)  # validates
    offset = 0.0
    if start is not None or end is not None:
        a = max(0.0, float(start or 0.0))
        b = info.duration if end is None else min(float(end), info.duration)
        if not b > a:
            blocks.close()
            raise AudioError(
                info.path,
                f"the region {a:g}-{b if end is None else float(end):g} s holds no audio "
                f"(the recording is {info.duration:.3f} s long)",
            )
        first, last = int(round(a * sample_rate)), int(round(b * sample_rate))
        blocks = _clip_blocks(blocks, first, max(last, first + 1))
        offset = first / sample_rate
    return info, _cut_stream(blocks, sample_rate, cutting, offset), warnings


# A new store's defaults, chosen on bench/moments.py (README "Finding the moment"): windows every
# half item, plus up to DEFAULT_EVENT_ITEMS event items a minute of long recordings.
DEFAULT_HOP_FRACTION = 0.5
DEFAULT_EVENT_ITEMS = 6


@dataclass(frozen=True)
class Cutting:
    """How recordings are cut into items (recorded in a store's meta).

    `hop_seconds` None or >= item_seconds: today's rule (consecutive windows, see the module
    docstring). Shorter: windows start every hop_seconds while a full window and
    min_last_seconds of audio follow, and one more window ends at the end of the recording, so
    every window is a full item_seconds long. `event_items` > 0: a recording longer than
    item_seconds also gets up to that many event items (EVENT_SECONDS, from just before a
    detected onset) per minute. A recording no longer than item_seconds is one item either way.
    """

    item_seconds: float = 10.0
    hop_seconds: float | None = None
    event_items: int = 0
    min_last_seconds: float = 1.0

    @property
    def hop(self) -> float:
        return self.item_seconds if self.hop_seconds is None else min(self.hop_seconds, self.item_seconds)

    @property
    def finer(self) -> bool:
        """Whether items overlap (finer than consecutive windows)."""
        return self.hop < self.item_seconds - 1e-9 or self.event_items > 0

    def items_per_hour(self) -> tuple[float, float]:
        """(windows, most event items) per hour of long recordings."""
        return 3600.0 / self.hop, 60.0 * self.event_items


def _cut_stream(blocks: Iterable[np.ndarray], sr: int, cutting: Cutting, offset: float = 0.0) -> Iterator[Segment]:
    """Items of a stream of mono blocks by `cutting`, holding at most a minute or an item of
    audio (plus a block). Window items come in time order, event items after each minute."""
    # Over 60 lines on purpose: windows and event items are cut from one buffer that both
    # advance; the buffer, envelope and positions below are that shared state.
    item, min_last = _item_lengths(cutting.item_seconds, cutting.min_last_seconds, sr)
    hop = max(1, int(round(cutting.hop * sr)))
    legacy = hop >= item
    frame = max(1, int(round(ONSET_FRAME_SECONDS * sr)))
    chunk = max(item, int(round(EVENT_CHUNK_SECONDS * sr)))
    ev_len = max(1, int(round(EVENT_SECONDS * sr)))
    ev_min = max(1, int(round(EVENT_MIN_SECONDS * sr)))
    pre = int(round(EVENT_PRE_SECONDS * sr))
    events = cutting.event_items > 0
    limit = int(round(cutting.event_items * chunk / (EVENT_CHUNK_SECONDS * sr))) if events else 0

    buf = np.zeros(0, np.float32)
    buf0 = 0  # sample offset of buf[0]
    seen = 0
    next_win = 0
    env: list[np.ndarray] = []
    env_done = 0  # samples covered by env
    next_chunk = 0  # first sample of the next minute whose events are not out yet

    def seg(a: int, b: int) -> Segment:
        return Segment(offset + a / sr, offset + b / sr, buf[a - buf0 : b - buf0].copy())

    def chunk_events(lo: int, hi: int, n: int | None) -> Iterator[Segment]:
        db = np.concatenate(env) if env else np.zeros(0)
        frames = onset_frames(db, lo // frame, min(hi // frame, db.size), limit, max(1, ev_len // (2 * frame)))
        for f in frames:
            a = max(0, f * frame - pre)
            stop = event_end(db, f, max(1, ev_min // frame), max(1, ev_len // frame))
            b = min(a + ev_len, stop * frame)
            yield seg(a, b if n is None else min(n, b))

    for block in blocks:
        buf = np.concatenate([buf, block]) if buf.size else block
        seen += block.size
        if events:
            whole = (seen - env_done) // frame * frame
            if whole:
                x = buf[env_done - buf0 : env_done - buf0 + whole].reshape(-1, frame).astype(np.float64)
                env.append(10.0 * np.log10((x * x).mean(axis=1) + 1e-12))
                env_done += whole
        while next_win + item + min_last <= seen:
            yield seg(next_win, next_win + item)
            next_win += hop
        while events and seen > item and next_chunk + chunk + ev_len + frame <= seen:
            yield from chunk_events(next_chunk, next_chunk + chunk, None)
            next_chunk += chunk
        keep = min(next_win, env_done, next_chunk - pre if events else next_win)
        if keep - buf0 > 0:
            buf = buf[keep - buf0 :]
            buf0 = keep
    n = seen
    if n == 0:
        return
    if legacy:
        if next_win < n:
            yield seg(next_win, n)
    elif n <= item:
        yield seg(0, n)
    else:
        yield seg(n - item, n)
    if events and n > item:
        while next_chunk < n:
            yield from chunk_events(next_chunk, next_chunk + chunk, n)
            next_chunk += chunk


def _clip_blocks(blocks: Iterable[np.ndarray], first: int, last: int | None) -> Iterator[np.ndarray]:
    """The samples [first, last) of a stream of blocks."""
    pos = 0
    for block in blocks:
        a, b = pos, pos + block.size
        pos = b
        lo, hi = max(a, first), b if last is None else min(b, last)
        if hi > lo:
            yield block[lo - a : hi - a]
        if last is not None and pos >= last:
            return


def parse_time(text: str, what: str = "time") -> float:
    """Seconds from "95", "95.5", "1:35", "1:35.5" or "0:01:35"; AudioError-free ValueError-free:
    raises SearchError naming `what` for anything else (negative times included)."""
    from soundsearch.errors import SearchError

    raw = str(text).strip()
    parts = raw.split(":")
    try:
        if not raw or len(parts) > 3 or any(p.strip() == "" for p in parts):
            raise ValueError
        values = [float(p) for p in parts]
    except ValueError:
        raise SearchError(f"{what} {text!r} is not a time: give seconds (95.5) or minutes:seconds (1:35.5)") from None
    if any(v < 0 or not np.isfinite(v) for v in values) or any(v >= 60 for v in values[1:]):
        raise SearchError(f"{what} {text!r} is not a time: give seconds (95.5) or minutes:seconds (1:35.5)")
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return seconds
