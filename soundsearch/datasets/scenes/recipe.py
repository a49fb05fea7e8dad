"""The corpus and the recipe: which recordings are usable, how they split into training and
held-out recordings, and every parameter that decides the scenes."""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundsearch.errors import DatasetError

BACKGROUND = "background"
SPLITS = ("train", "test")
CONFIDENCE_ORDER = {"low": 0, "medium": 1, "high": 2}
WEIGHTINGS = ("sqrt", "uniform", "proportional")
RECIPE_VERSION = 1


@dataclass(frozen=True)
class SceneRecipe:
    """Everything that decides the scenes; with the corpus, it reproduces them exactly."""

    n_train: int = 3000
    n_test: int = 300
    seed: int = 0
    duration: float = 10.0
    sample_rate: int = 22050
    # Probability of 1, 2, 3 events in a scene (urban-sound datasets are mostly single-event).
    event_count_probs: tuple[float, ...] = (0.6, 0.3, 0.1)
    # Event-to-background ratio in dB (active-part RMS of the event over the background RMS).
    ebr_db: tuple[float, float] = (0.0, 20.0)
    # Background RMS level in dBFS: scenes vary in overall level as user libraries do.
    background_db: tuple[float, float] = (-40.0, -25.0)
    heldout_fraction: float = 0.3
    min_confidence: str = "low"
    category_weighting: str = "sqrt"
    fade_seconds: float = 0.01

    def validate(self) -> None:
        if self.n_train < 0 or self.n_test < 0:
            raise DatasetError("scene counts must be >= 0")
        if self.duration <= 0 or self.sample_rate <= 0:
            raise DatasetError("duration and sample rate must be positive")
        probs = self.event_count_probs
        if not probs or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise DatasetError(f"event_count_probs must be non-negative and sum to 1, got {probs}")
        for name, (lo, hi) in (("ebr_db", self.ebr_db), ("background_db", self.background_db)):
            if lo > hi:
                raise DatasetError(f"{name}: low {lo} is above high {hi}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise DatasetError("heldout_fraction must be strictly between 0 and 1")
        if self.min_confidence not in CONFIDENCE_ORDER:
            raise DatasetError(f"min_confidence must be one of {sorted(CONFIDENCE_ORDER)}")
        if self.category_weighting not in WEIGHTINGS:
            raise DatasetError(f"category_weighting must be one of {WEIGHTINGS}")


@dataclass(frozen=True)
class Source:
    """One corpus recording: its file, primary category and full label set (category + also)."""

    file: str
    path: Path
    category: str
    labels: tuple[str, ...]
    confidence: str


def _categories() -> tuple[str, ...]:
    from soundsearch.taxonomy import Taxonomy

    return tuple(Taxonomy.default().categories)


def read_manifest(corpus: Path, categories: Sequence[str], min_confidence: str = "low") -> list[Source]:
    """The usable recordings of a corpus folder (manifest.csv + audio files)."""
    manifest = Path(corpus) / "manifest.csv"
    if not manifest.is_file():
        raise DatasetError(f"no manifest.csv in {corpus}: point --corpus at the shared corpus folder")
    known = set(categories) | {BACKGROUND}
    floor = CONFIDENCE_ORDER[min_confidence]
    sources: list[Source] = []
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing_cols = {"file", "category"} - set(reader.fieldnames or ())
        if missing_cols:
            raise DatasetError(f"{manifest}: missing column(s) {sorted(missing_cols)}")
        for row in reader:
            category = (row.get("category") or "").strip()
            if category not in known:
                raise DatasetError(f"{manifest}: unknown category {category!r} for {row['file']}")
            confidence = (row.get("confidence") or "high").strip() or "high"
            if CONFIDENCE_ORDER.get(confidence, 2) < floor:
                continue
            also = tuple(a.strip() for a in (row.get("also") or "").split(";") if a.strip())
            unknown = [a for a in also if a not in categories]
            if unknown:
                raise DatasetError(f"{manifest}: unknown 'also' label(s) {unknown} for {row['file']}")
            path = Path(corpus) / row["file"]
            if not path.is_file():
                raise DatasetError(f"{manifest}: listed file is missing: {path}")
            labels = () if category == BACKGROUND else tuple(dict.fromkeys((category, *also)))
            sources.append(Source(row["file"], path, category, labels, confidence))
    if not any(s.category == BACKGROUND for s in sources):
        raise DatasetError(f"{manifest}: no '{BACKGROUND}' recordings to mix events onto")
    if not any(s.category != BACKGROUND for s in sources):
        raise DatasetError(f"{manifest}: no labelled event recordings")
    return sources


def split_sources(sources: Sequence[Source], heldout_fraction: float, seed: int) -> dict[str, list[Source]]:
    """Split recordings into train / held-out, per category (backgrounds included).

    A category with one recording keeps it for training; with two or more, each side gets at
    least one. The split depends only on the seed and the manifest, not on scene counts.
    """
    by_cat: dict[str, list[Source]] = {}
    for s in sorted(sources, key=lambda s: s.file):
        by_cat.setdefault(s.category, []).append(s)
    out: dict[str, list[Source]] = {"train": [], "test": []}
    for cat in sorted(by_cat):
        group = by_cat[cat]
        # Per-category stream, so adding a recording to one category leaves the others' split alone.
        digest = int.from_bytes(hashlib.sha256(cat.encode()).digest()[:4], "little")
        rng = np.random.default_rng([seed, 1, digest])
        order = rng.permutation(len(group))
        n = len(group)
        n_test = 0 if n < 2 else min(n - 1, max(1, round(n * heldout_fraction)))
        test_idx = set(order[:n_test].tolist())
        for i, s in enumerate(group):
            out["test" if i in test_idx else "train"].append(s)
    return out
