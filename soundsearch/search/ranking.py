"""How results are ordered: the ranking modes, near-duplicates, and the fitted blend weight.

The presence model says which categories a stored item shares with the query; it says little
about whether the item *sounds like* the query. Measured on real libraries, its own order
(level, expected agreement, closeness of tower embeddings) ranked below plain cosine on
whole-item feature statistics wherever the library held other takes of the query's source,
and identical audio in another container ranked 96th. So every ranking carries acoustic
identity:

    acoustic   cosine of unit(standardise(Featurizer.item_stats)), standardised with the
               store's own per-dimension statistics (search.SearchEngine computes it).

Modes (declared once, in RankingMode):

    presence   level desc, expected desc, closeness desc, row: the model's own order, and
               the behaviour of every model file whose header records no ranking.
    blend      (1 - w) * expected / C + w * acoustic desc, row; w from the model header
               meta["ranking"] = {"mode": "blend", "weight": w, ...}, fitted on validation
               items by fit_ranking_weight.
    acoustic   acoustic cosine alone: "sounds like" rather than "contains the same".

Whatever the mode, the query's own items come first, then near-duplicates (acoustic cosine
>= DUPLICATE_COSINE: the same audio re-encoded, trimmed, re-gained, resampled or lightly
noised) by acoustic cosine, then everything else in the mode's order.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundsearch import constants as _constants
from soundsearch.errors import ModelError, SearchError

if TYPE_CHECKING:
    from soundsearch.features import Featurizer
    from soundsearch.model.network import LoadedModel


class RankingMode(str, Enum):
    PRESENCE = "presence"
    BLEND = "blend"
    ACOUSTIC = "acoustic"


MODES: tuple[str, ...] = tuple(m.value for m in RankingMode)
# What each mode orders by, declared once in constants (the CLI shows it without numpy).
MODE_HELP = {m: _constants.MODE_HELP[m.value] for m in RankingMode}

# Acoustic cosine at or above which a stored item counts as a near-duplicate of the query when
# its sound was not compared with the query's (search.fingerprint decides for those it was).
# Measured on the real corpus with the default aisfx features (tests/test_duplicates.py: 20
# originals x 7 altered copies among 100 other recordings, 40 queries, 350 copy items):
#   threshold  copies flagged  other recordings flagged
#   0.95       182 (52%)       8 of 12,190 pairs
#   0.90       292 (83%)       8 (the same related takes)
#   0.85       327 (93%)       8
# 0.90 leaves room for several takes of one source, which real libraries hold and which are
# not copies. aisfx is level-invariant (a -6 dB copy scores 1.00); what falls short is light
# noise over a one-shot's silences (40 dB SNR: down to 0.48) and +-3% speed (down to 0.57).
# With logmel features the same test flagged 75% of copies at 0.95.
from soundsearch.constants import DUPLICATE_COSINE  # noqa: E402  (light: the CLI's help shows it)
# Per-dimension std floor of the acoustic standardisation, as a fraction of the median std:
# a dimension constant across the store (bands above a low sample rate's Nyquist) must not
# blow a query's small deviation there up into the whole vector.
ACOUSTIC_STD_FLOOR = 0.05


@dataclass(frozen=True)
class Ranking:
    mode: RankingMode
    weight: float | None = None  # blend only

    def to_json(self) -> dict:
        return {"mode": self.mode.value, "weight": self.weight}


def parse_mode(mode: str | RankingMode) -> RankingMode:
    try:
        return RankingMode(mode.value if isinstance(mode, RankingMode) else str(mode).strip().lower())
    except ValueError:
        raise SearchError(f"unknown ranking mode {mode!r}: choose one of {', '.join(MODES)}") from None


def _check_weight(weight, where: str) -> float:
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise ModelError(f"{where}: blend weight must be a number in [0, 1], got {weight!r}") from None
    if not 0.0 <= w <= 1.0:
        raise ModelError(f"{where}: blend weight must lie in [0, 1], got {w}")
    return w


def recorded_ranking(model: "LoadedModel") -> Ranking:
    """The ranking a model file records in meta["ranking"]; presence when it records none."""
    entry = (model.meta or {}).get("ranking")
    if entry is None:
        return Ranking(RankingMode.PRESENCE)
    where = f"model '{model.name}'"
    if not isinstance(entry, dict) or entry.get("mode") not in MODES:
        raise ModelError(f"{where}: unreadable ranking entry {entry!r}; mode must be one of {', '.join(MODES)}")
    mode = RankingMode(entry["mode"])
    if mode is RankingMode.BLEND:
        return Ranking(mode, _check_weight(entry.get("weight"), where))
    return Ranking(mode)


def resolve_ranking(model: "LoadedModel", mode: str | RankingMode | None = None) -> Ranking:
    """The model's recorded ranking, or `mode` asked for explicitly (blend with its recorded weight)."""
    recorded = recorded_ranking(model)
    if mode is None:
        return recorded
    wanted = parse_mode(mode)
    if wanted is RankingMode.BLEND:
        if recorded.weight is None:
            raise SearchError(
                f"model '{model.name}' records no fitted blend weight: use --mode presence or acoustic, "
                "or a model trained by this soundsearch (train fits the weight on its held-out recordings)"
            )
        return Ranking(wanted, recorded.weight)
    return Ranking(wanted)


# --------------------------------------------------------------------------------------------
# Acoustic vectors


def acoustic_norm(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and floored std of (N, D') whole-item statistics, float32."""
    s = np.asarray(stats, dtype=np.float64)
    return acoustic_norm_from_sums(s.shape[0], s.sum(0), (s * s).sum(0))


def acoustic_norm_from_sums(count: int, total: np.ndarray, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """acoustic_norm from the count, sum and sum of squares (float64) of the statistics, so a
    store's can be accumulated chunk by chunk."""
    total = np.asarray(total, dtype=np.float64)
    if count == 0:
        return np.zeros(total.shape, np.float32), np.ones(total.shape, np.float32)
    mean = total / count
    std = np.sqrt(np.maximum(np.asarray(squares, dtype=np.float64) / count - mean * mean, 0.0))
    positive = std[std > 0]
    floor = ACOUSTIC_STD_FLOOR * float(np.median(positive)) if positive.size else 1.0
    return mean.astype(np.float32), np.maximum(std, max(floor, 1e-6)).astype(np.float32)


def acoustic_vectors(stats: np.ndarray, mean: np.ndarray, std: np.ndarray, aggregate: bool = False) -> np.ndarray:
    """unit((stats - mean) / std), (N, D') float32; with `aggregate`, one row: the items'
    standardised statistics averaged before normalising (a long query as one)."""
    z = (np.asarray(stats, dtype=np.float32) - mean) / std
    if aggregate:
        z = z.mean(0, keepdims=True)
    return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Ordering


def rank_score(ranking: Ranking, level: np.ndarray, expected: np.ndarray, acoustic: np.ndarray, n_categories: int) -> np.ndarray:
    """The mode's score per item (float64), higher first.

    presence: level + expected / (C + 1), i.e. level first, expected agreement within a level
    (closeness breaks its remaining ties); blend: (1 - w) expected / C + w acoustic; acoustic:
    the acoustic cosine.
    """
    c = float(n_categories)
    if ranking.mode is RankingMode.PRESENCE:
        return np.asarray(level, np.float64) + np.asarray(expected, np.float64) / (c + 1.0)
    acoustic = np.asarray(acoustic, np.float64)
    if ranking.mode is RankingMode.ACOUSTIC:
        return acoustic
    w = float(ranking.weight)
    return (1.0 - w) * np.asarray(expected, np.float64) / c + w * acoustic


def top_by_score(score: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices by score desc, ties by index asc; with `k` the best k in linear time."""
    score = np.asarray(score, dtype=np.float64)
    n = score.shape[0]
    if k is None or k >= n:
        return np.lexsort((np.arange(n), -score))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(score, n - k)[n - k]
    cand = np.flatnonzero(score >= kth)  # ties at the cut-off included, then broken by index
    return cand[np.lexsort((cand, -score[cand]))[:k]]


@dataclass(frozen=True)
class Ordered:
    order: np.ndarray  # positions into the given arrays, best first
    duplicate: np.ndarray  # (N,) bool: near-duplicates of the query (never the query's own items)
    score: np.ndarray  # (N,) float64: the mode's rank score
    contains: np.ndarray | None = None  # (N,) bool: items holding the query's sound (search.contains)


def order_items(
    ranking: Ranking,
    level: np.ndarray,
    expected: np.ndarray,
    closeness: np.ndarray,
    acoustic: np.ndarray,
    n_categories: int,
    k: int | None = None,
    is_query: np.ndarray | None = None,
    duplicate_acoustic: np.ndarray | None = None,
    fingerprint: np.ndarray | None = None,
    contains: np.ndarray | None = None,
) -> Ordered:
    """The one ordering search and eval share: the query's own items (`is_query`) first, then
    its near-duplicates, then the items that hold the query's sound among other sound, then the
    rest by the mode; the best k of it.

    `fingerprint` (N,) holds search.fingerprint.similarity for the items whose sound was
    compared with the query's, nan for the others: those items are near-duplicates when it
    reaches DUPLICATE_FINGERPRINT, whatever their acoustic cosine (another take of the source
    is not a copy; a copy a few percent slower still is). The others are near-duplicates when
    their acoustic cosine reaches DUPLICATE_COSINE; `duplicate_acoustic` (default `acoustic`)
    is that cosine: a long query's best single moment (ScoreMatrix.acoustic_best).
    Near-duplicates are ordered by their fingerprint similarity, else that cosine.

    `contains` (N,) holds search.contains scores where the query's sound was found inside an
    item (at or above CONTAINS_SCORE by construction), nan elsewhere; those items come next,
    best score first."""
    from soundsearch.search.engine import rank
    from soundsearch.search.fingerprint import DUPLICATE_FINGERPRINT

    n = np.asarray(level).shape[0]
    acoustic = np.asarray(acoustic)
    own = np.zeros(n, dtype=bool) if is_query is None else np.asarray(is_query, dtype=bool)
    dup_cos = acoustic if duplicate_acoustic is None else np.asarray(duplicate_acoustic)
    dup_key = np.asarray(dup_cos, dtype=np.float64)
    threshold = np.full(n, DUPLICATE_COSINE)
    if fingerprint is not None:
        fp = np.asarray(fingerprint, dtype=np.float64)
        known = ~np.isnan(fp)
        dup_key = np.where(known, fp, dup_key)
        threshold[known] = DUPLICATE_FINGERPRINT
    dup = (dup_key >= threshold) & ~own
    score = rank_score(ranking, level, expected, acoustic, n_categories)
    first = np.flatnonzero(own)
    first = first[rank(level[first], expected[first], closeness[first])]
    dups = np.flatnonzero(dup)
    dups = dups[top_by_score(dup_key[dups])]
    inside_score = np.full(n, np.nan) if contains is None else np.asarray(contains, dtype=np.float64)
    held = ~np.isnan(inside_score) & ~own & ~dup
    inside = np.flatnonzero(held)
    inside = inside[top_by_score(inside_score[inside])]
    rest = np.flatnonzero(~own & ~dup & ~held)
    left = None if k is None else max(0, k - first.size - dups.size - inside.size)
    if ranking.mode is RankingMode.PRESENCE:
        rest = rest[rank(level[rest], expected[rest], closeness[rest], k=left)]
    else:
        rest = rest[top_by_score(score[rest], k=left)]
    order = np.concatenate([first, dups, inside, rest])
    return Ordered(order if k is None else order[:k], dup, score, held)


# --------------------------------------------------------------------------------------------
# The model file's entry


def ranking_entry(mode: str | RankingMode, weight: float | None = None, note: str | None = None, **extra) -> dict:
    """meta["ranking"] as model files record it; validated."""
    m = parse_mode(mode)
    entry: dict = {"mode": m.value}
    if m is RankingMode.BLEND:
        entry["weight"] = _check_weight(weight, "ranking")
    elif weight is not None:
        raise ModelError(f"a weight belongs to the blend mode only, not to {m.value}")
    if note:
        entry["note"] = str(note)
    entry.update(extra)
    return entry


def set_ranking(model_path: Path | str, mode: str | RankingMode, weight: float | None = None, note: str | None = None, **extra) -> dict:
    """Record the ranking in a model file's header, rewriting the file atomically; returns the entry."""
    from safetensors.torch import load_file, save_file

    from soundsearch.model.checkpoint import _jsonable
    from soundsearch.model.registry import HEADER_KEY, read_header

    path = Path(model_path)
    entry = ranking_entry(mode, weight, note, **extra)
    header = read_header(path)
    header.setdefault("meta", {})["ranking"] = entry
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors' own error types for corrupt data
        raise ModelError(f"{path}: unreadable weights ({exc})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ModelError(f"cannot rewrite {path}: {exc.strerror or exc}") from None
    try:
        save_file(tensors, tmp, metadata={HEADER_KEY: json.dumps(_jsonable(header), sort_keys=True)})
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelError(f"cannot rewrite {path}: {exc.strerror or exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return entry


__all__ = [
    "ACOUSTIC_STD_FLOOR",
    "DUPLICATE_COSINE",
    "MODES",
    "MODE_HELP",
    "Ordered",
    "Ranking",
    "RankingMode",
    "acoustic_norm",
    "acoustic_norm_from_sums",
    "acoustic_vectors",
    "order_items",
    "rank_score",
    "ranking_entry",
    "recorded_ranking",
    "resolve_ranking",
    "set_ranking",
    "top_by_score",
]
