"""Waveform thumbnails as inline SVG: a page that needs no image files and no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = 160  # peak pairs drawn; enough detail at the page's widest card
HEIGHT = 48


def read_range(path: Path | str, start: float, end: float, max_seconds: float = 30.0) -> tuple[np.ndarray, int]:
    """Mono float32 samples of [start, end) seconds (at most max_seconds) and the sample rate.

    Reads only that range: a thumbnail of a window of an hour-long session must not decode the
    hour. Formats libsndfile cannot read go through the audio module's PyAV fallback."""
    from soundsearch.audio.decode import read_seconds

    return read_seconds(path, start, min(end, start + max_seconds))


def envelope(x: np.ndarray, columns: int = COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """Per-column minimum and maximum, scaled so the loudest peak touches the edge."""
    if x.size == 0:
        return np.zeros(columns), np.zeros(columns)
    edges = np.linspace(0, x.size, columns + 1).astype(np.int64)
    lo = np.empty(columns)
    hi = np.empty(columns)
    for i in range(columns):
        seg = x[edges[i] : max(edges[i + 1], edges[i] + 1)]
        lo[i], hi[i] = float(seg.min()), float(seg.max())
    peak = max(float(np.max(np.abs(x))), 1e-6)
    return lo / peak, hi / peak


def waveform_svg(x: np.ndarray, columns: int = COLUMNS, height: int = HEIGHT) -> str:
    """An SVG waveform (filled min/max outline) drawn in the surrounding text colour."""
    lo, hi = envelope(x, columns)
    mid = height / 2
    amp = mid - 1
    top = " ".join(f"{i},{mid - h * amp:.1f}" for i, h in enumerate(hi))
    bottom = " ".join(f"{i},{mid - lo_ * amp:.1f}" for i, lo_ in reversed(list(enumerate(lo))))
    return (
        f'<svg class="wave" viewBox="0 0 {columns - 1} {height}" preserveAspectRatio="none" '
        f'role="img" aria-label="waveform"><polygon points="{top} {bottom}"/>'
        f'<line x1="0" y1="{mid}" x2="{columns - 1}" y2="{mid}"/></svg>'
    )


def thumbnail(path: Path | str, start: float, end: float) -> str | None:
    """The waveform of a result's matched range, or None when it cannot be read."""
    try:
        x, _ = read_range(path, start, end)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration: the page shows a gap instead
        return None
    return waveform_svg(x)
