"""--require, --exclude and --min-level: which stored items a search may return, and what each
filter removes on its own (so a filter that removes nothing or everything can say why)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from soundsearch.errors import SearchError
from soundsearch.presence import BOTH

if TYPE_CHECKING:
    from soundsearch.taxonomy import Taxonomy


@dataclass(frozen=True)
class Filters:
    require: list[str]
    exclude: list[str]
    min_level: int | None
    require_idx: list[int]
    exclude_idx: list[int]

    def as_dict(self) -> dict:
        return {"require": self.require, "exclude": self.exclude, "min_level": self.min_level}


def _category_indices(names: Sequence[str], taxonomy: Taxonomy, model_name: str) -> list[int]:
    unknown = [name for name in names if name not in taxonomy]
    if unknown:
        raise SearchError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
            f"the model '{model_name}' knows: {', '.join(taxonomy.categories)}"
        )
    return [taxonomy.index(name) for name in names]


def check_filters(
    require: Iterable[str], exclude: Iterable[str], min_level: int | None, taxonomy: Taxonomy, model_name: str
) -> Filters:
    """The filters, checked against the model's categories (SearchError naming what is wrong)."""
    require, exclude = list(require), list(exclude)
    req_idx = _category_indices(require, taxonomy, model_name)
    exc_idx = _category_indices(exclude, taxonomy, model_name)
    both = sorted(set(require) & set(exclude))
    if both:
        raise SearchError(f"a category cannot be both required and excluded: {', '.join(both)}")
    c = len(taxonomy)
    if min_level is not None and not 0 <= min_level <= c:
        raise SearchError(f"--min-level must be between 0 and {c}, not {min_level}")
    return Filters(require, exclude, min_level, req_idx, exc_idx)


def apply_filters(
    filters: Filters, states: np.ndarray, level: np.ndarray, is_self: np.ndarray, include_self: bool
) -> tuple[np.ndarray, dict, int]:
    """(items kept, what each filter removes of the items that are not the query's own, the
    query's own items that pass the filters). With include_self=False those are not kept."""
    n = level.shape[0]
    keep = np.ones(n, dtype=bool)
    effects: dict = {"require": {}, "exclude": {}, "min_level": None, "others": int(n - is_self.sum())}
    for name, j in zip(filters.require, filters.require_idx):
        mask = states[:, j] == BOTH
        effects["require"][name] = int(np.count_nonzero(~mask & ~is_self))
        keep &= mask
    for name, j in zip(filters.exclude, filters.exclude_idx):
        mask = states[:, j] != BOTH
        effects["exclude"][name] = int(np.count_nonzero(~mask & ~is_self))
        keep &= mask
    if filters.min_level is not None:
        mask = level >= filters.min_level
        effects["min_level"] = int(np.count_nonzero(~mask & ~is_self))
        keep &= mask
    n_self = int(np.count_nonzero(keep & is_self))
    if not include_self:
        keep &= ~is_self
    return keep, effects, n_self
