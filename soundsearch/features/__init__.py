"""Featurizers: turn one item's mono signal into a (T, D) float32 matrix of frame embeddings.

Every featurizer declares its name, complete parameters, sample rate, dimension D and steps T,
and an identity string ("name/version:" + canonical JSON of the parameters) that stores and
model files record, so features made differently are never mixed.

Featurizer modules are imported only when asked for, so naming `openl3` without its optional
package fails with a how-to instead of breaking every other command.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundsearch.constants import TUNABLE_DEFAULTS
from soundsearch.errors import AudioError, AudioWarning, FeaturizerError, SoundsearchError

# The shipped default model's featurizer (with its default parameters), so that a store made by
# a plain `soundsearch index` is one the default model can search; tests/test_model.py checks
# that the two agree. Pretrained sound-effects embeddings ranked better than log-Mel on every
# held-out setting measured (models/README.md).
DEFAULT_FEATURIZER = "aisfx"

# name -> "module:factory"; the factory takes the featurizer's keyword parameters.
_REGISTRY: dict[str, str] = {
    "logmel": "soundsearch.features.logmel:LogMel",
    "aisfx": "soundsearch.features.aisfx:AiSFX",
    "openl3": "soundsearch.features.openl3:OpenL3",
}

STAT_ORDER = ("mean", "std", "max", "min")


class Featurizer:
    """Base class. Subclasses set the attributes in __init__ and implement `frames`."""

    name: str = ""
    version: int = 1
    sample_rate: int
    dim: int
    steps: int
    # Shortest signal (in samples at sample_rate) that fills one analysis frame without padding.
    frame_samples: int = 1

    @property
    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def identity(self) -> str:
        return f"{self.name}/{self.version}:" + json.dumps(self.params, sort_keys=True, separators=(",", ":"))

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def batch(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        if not signals:
            return np.zeros((0, self.steps, self.dim), np.float32)
        return np.stack([self(s) for s in signals]).astype(np.float32, copy=False)

    def for_indexing(self) -> Featurizer:
        """This featurizer set up to featurize many files (indexing); returns it. One with a
        faster path for a single short query than for many files (aisfx's network in numpy,
        which spares importing torch) turns it off here, so a store's features all come from
        one code path."""
        return self

    def item_stats(self, feats: np.ndarray) -> np.ndarray:
        """(N, T, D) stored per-step features -> (N, D') float32 whole-item statistics
        (features.item_stats with this featurizer's `stats`)."""
        return item_stats(feats, tuple(getattr(self, "stats", ()) or ()))

    def __repr__(self) -> str:
        return f"<Featurizer {self.identity}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Featurizer) and other.identity == self.identity

    def __hash__(self) -> int:
        return hash(self.identity)


def item_stats(feats: np.ndarray, stats: Sequence[str] = ()) -> np.ndarray:
    """(N, T, D) stored per-step features -> (N, D') float32 whole-item statistics.

    Derived from the per-step statistics a featurizer stores (`stats`: D / len(stats) values
    per statistic, in that order), so a whole item is summarised over all its frames without
    the frames: mean = mean over steps of the step means; std = sqrt(mean_t(std_t^2 +
    mean_t^2) - mean^2) (the law of total variance); max and min over steps of the step max
    and min. Exact when every step pools the same number of frames. Without `stats` (or when
    D does not split by them): the mean and max over steps of the values.

    A function of the features and the store's recorded `stats` alone, so search computes it
    without building the featurizer (for aisfx: without loading its network and torch).
    """
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim == 2:
        f = f[None]
    if f.ndim != 3:
        raise FeaturizerError(f"item_stats needs (N, T, D) features, got shape {f.shape}")
    stats = tuple(stats or ())
    if not stats or f.shape[2] % len(stats):
        return np.concatenate([f.mean(1), f.max(1)], axis=1).astype(np.float32)
    width = f.shape[2] // len(stats)
    block = {s: f[:, :, i * width : (i + 1) * width] for i, s in enumerate(stats)}
    out = []
    mean = block["mean"].mean(1) if "mean" in block else None
    if mean is not None:
        out.append(mean)
    if "std" in block:
        std_t = block["std"]
        if mean is not None:
            second = (std_t * std_t + block["mean"] ** 2).mean(1)
            out.append(np.sqrt(np.maximum(second - mean * mean, 0.0)))
        else:  # without step means only the spread within steps is known
            out.append(np.sqrt((std_t * std_t).mean(1)))
    if "max" in block:
        out.append(block["max"].max(1))
    if "min" in block:
        out.append(block["min"].min(1))
    return np.concatenate(out, axis=1).astype(np.float32)


def spec_stats(spec: dict[str, Any]) -> tuple[str, ...]:
    """The per-step statistics a featurizer spec records (its `stats` parameter), () when it
    records none: what item_stats needs, read without building the featurizer (every
    featurizer with `stats` records them under that name; tests check it)."""
    params = spec.get("params") if isinstance(spec, dict) else None
    raw = params.get("stats") if isinstance(params, dict) else None
    return parse_stats(raw) if raw else ()


def check_signal(signal: np.ndarray) -> np.ndarray:
    """A mono float32 1-D view of `signal`; FeaturizerError for anything else or an empty one."""
    x = np.asarray(signal)
    if x.ndim != 1:
        raise FeaturizerError(f"expected a mono 1-D signal, got shape {x.shape}")
    if x.size == 0:
        raise FeaturizerError("cannot featurize an empty signal (0 samples)")
    return x.astype(np.float32, copy=False)


def parse_stats(stats: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical tuple of per-step statistics ("mean,max" -> ("mean", "max"))."""
    items = [s.strip().lower() for s in (stats.split(",") if isinstance(stats, str) else stats)]
    items = [s for s in items if s]
    unknown = sorted(set(items) - set(STAT_ORDER))
    if unknown or not items:
        raise FeaturizerError(
            f"bad stats {stats!r}: choose one or more of {', '.join(STAT_ORDER)} (comma-separated)"
        )
    if len(set(items)) != len(items):
        raise FeaturizerError(f"bad stats {stats!r}: a statistic is repeated")
    # One canonical order, so "max,mean" and "mean,max" are the same featurizer.
    return tuple(s for s in STAT_ORDER if s in items)


def pool_steps(frames: np.ndarray, steps: int, stats: Sequence[str] = ("mean",)) -> np.ndarray:
    """Summarise (F, B) frames into (steps, B * len(stats)) float32.

    With F >= steps the frames are split into `steps` contiguous groups as even as possible
    (sizes differ by at most one) and each group is summarised by every statistic in turn,
    concatenated in the order given. With F < steps each step takes the nearest frame in time
    (frames repeat), so every step holds real data; its std is then 0.
    """
    f = np.asarray(frames)
    n, b = f.shape
    if n == 0:
        raise FeaturizerError("no frames to pool")
    if n < steps:
        idx = ((np.arange(steps) + 0.5) * n / steps).astype(np.int64)
        picked = f[idx].astype(np.float32)
        parts = {"mean": picked, "max": picked, "min": picked, "std": np.zeros_like(picked)}
        return np.concatenate([parts[s] for s in stats], axis=1)
    bounds = (np.arange(steps + 1) * n) // steps
    starts = bounds[:-1]
    counts = np.diff(bounds).astype(np.float64)[:, None]
    f64 = f.astype(np.float64, copy=False)
    out = []
    mean = None
    for s in stats:
        if s in ("mean", "std") and mean is None:
            mean = np.add.reduceat(f64, starts, axis=0) / counts
        if s == "mean":
            out.append(mean)
        elif s == "std":
            dev = f64 - np.repeat(mean, np.diff(bounds), axis=0)
            out.append(np.sqrt(np.add.reduceat(dev * dev, starts, axis=0) / counts))
        elif s == "max":
            out.append(np.maximum.reduceat(f64, starts, axis=0))
        elif s == "min":
            out.append(np.minimum.reduceat(f64, starts, axis=0))
    return np.concatenate(out, axis=1).astype(np.float32)


def available_featurizers() -> list[str]:
    """Registered featurizer names, the default first (a name may still need an optional extra)."""
    return [DEFAULT_FEATURIZER] + sorted(n for n in _REGISTRY if n != DEFAULT_FEATURIZER)


def get_featurizer(name: str | None = None, **params: Any) -> Featurizer:
    """A featurizer by name with parameters; FeaturizerError for unknown names or parameters."""
    name = (name or DEFAULT_FEATURIZER).strip().lower()
    target = _REGISTRY.get(name)
    if target is None:
        raise FeaturizerError(f"unknown featurizer {name!r}: choose one of {', '.join(available_featurizers())}")
    module_name, factory_name = target.split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    try:
        return factory(**params)
    except TypeError as e:
        raise FeaturizerError(f"bad parameters for featurizer {name!r}: {e}") from None


def departures(identity: str, build: bool = True) -> tuple[str, list[str]]:
    """(name, ["key=value", ...]) of a featurizer identity: the parameters where it departs from
    that featurizer's defaults (all of them when the defaults cannot be built here), so a store
    or model made with `logmel stats=mean` never looks like plain `logmel`.

    With `build=False` only the tunable parameters (TUNABLE_DEFAULTS) are compared and nothing
    heavy is imported; which weights were used then goes unsaid.
    """
    head, _, params_json = identity.partition(":")
    name = head.split("/")[0]
    try:
        params = json.loads(params_json)
    except ValueError:
        return name, []
    if not build and name in TUNABLE_DEFAULTS:
        tunable = TUNABLE_DEFAULTS[name]
        return name, [f"{k}={v}" for k, v in sorted(params.items()) if k in tunable and tunable[k] != v]
    try:
        defaults = get_featurizer(name).params
    except SoundsearchError:
        defaults = {}
    return name, [f"{k}={v}" for k, v in sorted(params.items()) if defaults.get(k) != v]


def index_options(identity: str) -> str:
    """The `soundsearch index` options that make features with this identity."""
    name, changed = departures(identity)
    return " ".join([f"--featurizer {name}", *(f"-p {c}" for c in changed)])


def featurizer_from_spec(spec: dict[str, Any]) -> Featurizer:
    """Rebuild a featurizer from `Featurizer.spec()` (as recorded by a store or a model)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise FeaturizerError(f"not a featurizer spec: {spec!r}")
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise FeaturizerError(f"featurizer spec params must be a mapping, got {params!r}")
    return get_featurizer(spec["name"], **params)


@dataclass
class FileFeatures:
    path: Path
    info: Any  # audio.AudioInfo
    segments: list[tuple[float, float]]
    features: np.ndarray  # (n_items, T, D) float32
    warnings: list[AudioWarning] = field(default_factory=list)
    duration: float = 0.0  # seconds actually decoded, at the featurizer's rate


# Items handed to Featurizer.batch at a time: room for a featurizer to batch across items,
# while a long recording still costs memory for a few items, not for the whole file.
_BATCH_ITEMS = 4


def featurize_file(
    path: Any,
    featurizer: Featurizer,
    item_seconds: float = 10.0,
    min_last_seconds: float = 1.0,
    *,
    cutting: Any = None,
    start: float | None = None,
    end: float | None = None,
) -> FileFeatures:
    """Decode a file (or its region start..end seconds), cut it into items and featurize each.
    Raises AudioError.

    The file is streamed item by item (see audio.iter_items; `cutting` as there), so a long
    recording costs memory for a batch of items, not for the whole decoded file. Items come
    back in time order (start, then end).
    """
    from soundsearch.audio.items import iter_items
    from soundsearch.audio.validate import short_warning

    info, items, warnings = iter_items(
        path, featurizer.sample_rate, item_seconds, min_last_seconds, cutting=cutting, start=start, end=end
    )
    segments: list[tuple[float, float]] = []
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    total = 0
    shortest = None
    for seg in items:
        segments.append((seg.start, seg.end))
        pending.append(seg.signal)
        total += seg.signal.size
        shortest = seg.signal.size if shortest is None else min(shortest, seg.signal.size)
        if len(pending) >= _BATCH_ITEMS:
            chunks.append(featurizer.batch(pending))
            pending = []
    if pending:
        chunks.append(featurizer.batch(pending))
    if shortest is not None and shortest < featurizer.frame_samples:
        warnings.append(short_warning(info.path, shortest, featurizer.sample_rate, featurizer.frame_samples))
    if not chunks:
        raise AudioError(info.path, "no audio samples could be decoded")
    feats = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    # Event items are cut after the windows of their minute: one time order for the store.
    order = sorted(range(len(segments)), key=lambda i: segments[i])
    if order != list(range(len(segments))):
        segments = [segments[i] for i in order]
        feats = feats[np.asarray(order)]
    return FileFeatures(info.path, info, segments, feats, warnings, total / featurizer.sample_rate)


__all__ = [
    "DEFAULT_FEATURIZER",
    "Featurizer",
    "FileFeatures",
    "available_featurizers",
    "featurize_file",
    "featurizer_from_spec",
    "departures",
    "get_featurizer",
    "index_options",
    "item_stats",
    "parse_stats",
    "pool_steps",
    "spec_stats",
]
