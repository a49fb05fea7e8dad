"""Mixing one scene: a background bed looped to length, events placed at random times and gains
(the event-to-background ratio on the event's active part), the mix scaled below clipping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundsearch.datasets.scenes.recipe import BACKGROUND, SPLITS, SceneRecipe, Source
from soundsearch.errors import DatasetError


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    signal: np.ndarray
    labels: np.ndarray  # (C,) uint8 in taxonomy order
    info: dict


class _AudioCache:
    """Decodes and resamples each recording once (sources are small: tens of MB in all)."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self._cache: dict[Path, np.ndarray] = {}

    def get(self, path: Path) -> np.ndarray:
        sig = self._cache.get(path)
        if sig is None:
            from soundsearch.audio.decode import load  # soundfile and soxr only when mixing

            sig = load(path, self.sample_rate).signal
            self._cache[path] = sig
        return sig


def _rms_db(x: np.ndarray) -> float:
    return 10.0 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)


def _active_rms_db(x: np.ndarray, frame: int = 1024, floor_db: float = 20.0) -> float:
    """RMS over the frames within `floor_db` of the loudest one.

    Plain RMS would let the silence around a short event (a bark, a door) decide its gain;
    the level that matters to a listener is that of the event while it sounds.
    """
    n = max(1, x.size // frame)
    frames = x[: n * frame].reshape(n, -1) if x.size >= frame else x.reshape(1, -1)
    energy = np.mean(np.square(frames, dtype=np.float64), axis=1)
    peak = float(energy.max())
    if peak <= 1e-20:
        return -200.0
    active = energy[energy >= peak * 10 ** (-floor_db / 10)]
    return 10.0 * math.log10(float(active.mean()))


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, x.size // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _bed(bg: np.ndarray, length: int, rng: np.random.Generator, xfade: int) -> np.ndarray:
    """A background bed of `length` samples from a random offset, looped with crossfades if short."""
    if bg.size >= length:
        start = int(rng.integers(0, bg.size - length + 1))
        return bg[start : start + length].copy()
    xfade = min(xfade, bg.size // 4)
    step = bg.size - xfade
    out = np.zeros(length + 2 * bg.size, dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, xfade, dtype=np.float32) if xfade > 0 else None
    pos = 0
    first = True
    while pos < length + bg.size:
        piece = bg.copy()
        if ramp is not None:
            if not first:
                piece[:xfade] *= ramp
            piece[-xfade:] *= ramp[::-1]
        out[pos : pos + piece.size] += piece
        pos += step
        first = False
    start = int(rng.integers(0, max(1, bg.size - xfade)))
    return out[start : start + length].copy()


def _category_weights(pool: dict[str, list[Source]], weighting: str) -> dict[str, float]:
    counts = {c: len(v) for c, v in pool.items() if v}
    if weighting == "uniform":
        raw = {c: 1.0 for c in counts}
    elif weighting == "proportional":
        raw = {c: float(n) for c, n in counts.items()}
    else:
        raw = {c: math.sqrt(n) for c, n in counts.items()}
    total = sum(raw.values())
    return {c: w / total for c, w in raw.items()}


class SceneMaker:
    """Mixes scenes for one split from that split's recordings only."""

    def __init__(self, recipe: SceneRecipe, split: str, sources: Sequence[Source], categories: Sequence[str],
                 cache: _AudioCache | None = None):
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}")
        self.recipe = recipe
        self.split = split
        self.categories = tuple(categories)
        self.cache = cache or _AudioCache(recipe.sample_rate)
        self.backgrounds = sorted((s for s in sources if s.category == BACKGROUND), key=lambda s: s.file)
        events: dict[str, list[Source]] = {}
        for s in sorted(sources, key=lambda s: s.file):
            if s.category != BACKGROUND:
                events.setdefault(s.category, []).append(s)
        self.events = events
        if not self.backgrounds:
            raise DatasetError(f"no background recordings in the {split} split")
        if not self.events:
            raise DatasetError(f"no event recordings in the {split} split")
        weights = _category_weights(events, recipe.category_weighting)
        self._cats = sorted(weights)
        self._weights = np.array([weights[c] for c in self._cats])

    def make(self, index: int) -> Scene:
        r = self.recipe
        # One stream per (seed, split, index): scene i is the same whatever the scene counts.
        rng = np.random.default_rng([r.seed, 2, SPLITS.index(self.split), index])
        sr = r.sample_rate
        length = int(round(r.duration * sr))
        bg_src = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        bed = _bed(self.cache.get(bg_src.path), length, rng, xfade=int(0.05 * sr))
        bg_db = float(rng.uniform(*r.background_db))
        bed_level = _rms_db(bed)
        if bed_level > -200:
            bed *= 10 ** ((bg_db - bed_level) / 20)
        mix = bed.astype(np.float32)

        n_events = 1 + int(rng.choice(len(r.event_count_probs), p=np.asarray(r.event_count_probs)))
        n_events = min(n_events, len(self._cats))
        # Distinct categories, so the label mix follows event_count_probs.
        chosen = rng.choice(len(self._cats), size=n_events, replace=False, p=self._weights)
        labels = np.zeros(len(self.categories), dtype=np.uint8)
        events_info = []
        for ci in chosen:
            cat = self._cats[int(ci)]
            src = self.events[cat][int(rng.integers(len(self.events[cat])))]
            sig = self.cache.get(src.path)
            n = min(sig.size, length)
            offset = int(rng.integers(0, sig.size - n + 1))
            ev = _fade(sig[offset : offset + n].copy(), int(r.fade_seconds * sr))
            onset = int(rng.integers(0, length - n + 1))
            ebr = float(rng.uniform(*r.ebr_db))
            level = _active_rms_db(ev)
            gain_db = (bg_db + ebr - level) if level > -200 else 0.0
            mix[onset : onset + n] += ev * np.float32(10 ** (gain_db / 20))
            for lab in src.labels:
                labels[self.categories.index(lab)] = 1
            events_info.append({
                "file": src.file, "category": cat, "labels": list(src.labels),
                "onset": round(onset / sr, 4), "duration": round(n / sr, 4),
                "source_offset": round(offset / sr, 4), "ebr_db": round(ebr, 3),
            })
        peak = float(np.max(np.abs(mix)))
        scale = 1.0
        if peak > 0.99:
            # Scale the whole mix, so event-to-background ratios stay as drawn.
            scale = 0.99 / peak
            mix *= np.float32(scale)
        info = {"background": bg_src.file, "background_db": round(bg_db, 3), "events": events_info,
                "peak_scale": round(scale, 6)}
        return Scene(self.split, index, mix, labels, info)
