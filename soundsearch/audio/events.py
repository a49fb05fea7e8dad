"""Event items: a short item starting just before each detected onset of a long recording, so a
bark of a third of a second is the main content of one item instead of 3% of a 10 s window."""

from __future__ import annotations

import numpy as np

EVENT_SECONDS = 2.0  # the longest event item
# The shortest: an event item ends where the energy falls back to its background (so a short
# bark, not the ambience after it, is the item's content), but not before this.
EVENT_MIN_SECONDS = 0.5
EVENT_PRE_SECONDS = 0.1  # the item starts this far before the onset frame (attack kept whole)
# Onset detection on 20 ms energy frames: a frame rising ONSET_DB above the median of the second
# before it, a local peak of that rise within ONSET_PEAK_FRAMES, louder than ONSET_FLOOR_DB.
ONSET_FRAME_SECONDS = 0.02
ONSET_DB = 3.0
ONSET_FLOOR_DB = -60.0
ONSET_CONTEXT_FRAMES = 50
ONSET_PEAK_FRAMES = 5
# Events are picked per minute (the strongest rises first), so their number is bounded by the
# setting per minute of audio whatever the recording holds.
EVENT_CHUNK_SECONDS = 60.0


def event_end(db: np.ndarray, f: int, min_frames: int, max_frames: int) -> int:
    """The frame after an event starting at frame f: where the envelope is back within
    ONSET_DB of the median of the second before the onset (between min and max frames on)."""
    base = float(np.median(db[max(0, f - ONSET_CONTEXT_FRAMES) : max(1, f - 1)])) if f > 1 else float(db[0])
    tail = db[f + min_frames : f + max_frames]
    back = np.flatnonzero(tail < base + ONSET_DB)
    return f + min_frames + (int(back[0]) if back.size else tail.size)


def onset_frames(db: np.ndarray, lo: int, hi: int, limit: int, min_gap: int) -> list[int]:
    """Frames in [lo, hi) of the dB envelope `db` where an event starts: the `limit` strongest
    rises over the median of the preceding second, at least `min_gap` frames apart."""
    ctx = ONSET_CONTEXT_FRAMES
    first = max(lo, ctx)
    if hi - first <= 0 or limit <= 0:
        return []
    past = np.lib.stride_tricks.sliding_window_view(db[first - ctx : hi - 1], ctx)  # row i: frames before first+i
    rise = db[first:hi] - np.median(past, axis=1)
    ok = (rise >= ONSET_DB) & (db[first:hi] >= ONSET_FLOOR_DB)
    if not ok.any():
        return []
    w = ONSET_PEAK_FRAMES
    padded = np.pad(rise, w, constant_values=-np.inf)
    peak = rise >= np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1).max(axis=1)
    cand = np.flatnonzero(ok & peak)
    chosen: list[int] = []
    for i in cand[np.argsort(-rise[cand], kind="stable")]:
        f = first + int(i)
        if all(abs(f - c) >= min_gap for c in chosen):
            chosen.append(f)
            if len(chosen) >= limit:
                break
    return sorted(chosen)
