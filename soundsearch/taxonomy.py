"""The ordered list of sound categories a model predicts presence states for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

# SONYC-UST coarse taxonomy (DCASE 2019 task 5), in the order of its annotation columns
# 1_engine ... 8_dog, which is also the order the paper reports them in.
SONYC_UST_COARSE: tuple[str, ...] = (
    "engine",
    "machinery-impact",
    "non-machinery-impact",
    "powered-saw",
    "alert-signal",
    "music",
    "human-voice",
    "dog",
)


@dataclass(frozen=True)
class Taxonomy:
    """Category names in a fixed order; label vectors and model outputs follow this order."""

    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        cats = tuple(str(c).strip() for c in self.categories)
        if not cats:
            raise ValueError("a taxonomy needs at least one category")
        if any(not c for c in cats):
            raise ValueError("category names must not be empty")
        dupes = sorted({c for c in cats if cats.count(c) > 1})
        if dupes:
            raise ValueError(f"duplicate category names: {', '.join(dupes)}")
        object.__setattr__(self, "categories", cats)

    @classmethod
    def default(cls) -> "Taxonomy":
        return cls(SONYC_UST_COARSE)

    def __len__(self) -> int:
        return len(self.categories)

    def __iter__(self):
        return iter(self.categories)

    def __contains__(self, name: object) -> bool:
        return name in self.categories

    def index(self, name: str) -> int:
        try:
            return self.categories.index(name)
        except ValueError:
            raise KeyError(
                f"unknown category {name!r}; known: {', '.join(self.categories)}"
            ) from None

    def labels(self, names: Iterable[str]) -> np.ndarray:
        """A (C,) uint8 0/1 vector with the named categories present."""
        out = np.zeros(len(self), dtype=np.uint8)
        for name in names:
            out[self.index(name)] = 1
        return out

    def names(self, labels: Sequence[int] | np.ndarray) -> list[str]:
        """The names of the categories present in a (C,) 0/1 vector."""
        labels = np.asarray(labels)
        if labels.shape != (len(self),):
            raise ValueError(f"expected {len(self)} labels, got shape {labels.shape}")
        return [c for c, v in zip(self.categories, labels) if v]

    def to_json(self) -> list[str]:
        return list(self.categories)

    @classmethod
    def from_json(cls, data: Sequence[str]) -> "Taxonomy":
        return cls(tuple(data))
