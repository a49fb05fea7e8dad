"""The blend weight of ranking.RankingMode.BLEND, fitted on validation items.

The blend ranks by (1 - w) * expected agreement / C + w * acoustic cosine (search.ranking). No
single w is best everywhere: acoustic closeness helps where the library holds other takes of the
query's source, the model where it does not. So w is chosen per model on its validation items
(leave-one-out retrieval, mean mAP@10 over the four cells) and recorded in the model file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from soundsearch.errors import DatasetError
from soundsearch.search.ranking import Ranking, RankingMode, _check_weight, order_items

if TYPE_CHECKING:
    from soundsearch.features import Featurizer
    from soundsearch.model.network import LoadedModel

# Blend weights tried by fit_ranking_weight.
WEIGHT_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
# The retrieval depth the weight is fitted for: mAP@10, the figure users see first.
FIT_K = 10


@dataclass
class WeightFit:
    weight: float  # the best w of the grid
    items: int  # validation items used
    # w -> mean of mAP@10 over the four cells; w -> {"single s=C": ..., ...}
    figures: dict[float, float] = field(default_factory=dict)
    cells: dict[float, dict[str, float]] = field(default_factory=dict)

    def grid_json(self) -> dict:
        return {f"{w:.2f}": round(v, 6) for w, v in self.figures.items()}


class MemoryStore:
    """Just enough of a Store for SearchEngine over features held in memory (never cached)."""

    def __init__(self, feats: np.ndarray, featurizer: "Featurizer"):
        self._feats = np.ascontiguousarray(feats, dtype=np.float32)
        self._fz = featurizer
        self.featurizer_identity = featurizer.identity
        self.path = Path("(memory)")

    def features(self) -> np.ndarray:
        return self._feats

    def fingerprint(self) -> str:
        return f"memory-{id(self._feats)}"

    def featurizer(self) -> "Featurizer":
        return self._fz


def fit_ranking_weight(
    model: "LoadedModel",
    feats: np.ndarray,
    labels: np.ndarray,
    featurizer: "Featurizer",
    grid: Sequence[float] = WEIGHT_GRID,
) -> WeightFit:
    """The blend weight w maximising mAP@10 on validation items, leave-one-out.

    Each validation item queries all the others (its own row left out); the figure per w is
    the mean of mAP@10 over single- and multi-label queries x thresholds s = C and C - 1
    (cells with no query are left out of the mean). The acoustic standardisation uses all
    validation items, the query's included, as a store's would. Ties go to the smaller w.
    """
    from soundsearch import metrics
    from soundsearch.evaluate import query_groups
    from soundsearch.search.engine import SearchEngine

    x = np.asarray(feats, dtype=np.float32)
    y = np.asarray(labels)
    n = x.shape[0]
    if n < 3 or y.shape[0] != n:
        raise DatasetError(f"fitting the blend weight needs at least 3 labelled validation items, got {n}")
    weights = [_check_weight(w, "grid") for w in grid]
    if not weights:
        raise DatasetError("the blend weight grid is empty")
    c = len(model.taxonomy)
    engine = SearchEngine(MemoryStore(x, featurizer), model, persist=False)
    scores = engine.score_all(x)
    agree = metrics.agreement(y, y)
    groups = query_groups(y)
    cells = [(g, s) for g in ("single", "multi") for s in ((c, c - 1) if c > 1 else (c,)) if len(groups[g])]
    if not cells:
        raise DatasetError("no validation item holds a category: cannot fit the blend weight")
    top = min(FIT_K, n - 1)
    fit = WeightFit(weight=weights[0], items=n)
    best = -np.inf
    own = np.eye(n, dtype=bool)
    for w in weights:
        ranking = Ranking(RankingMode.BLEND, w)
        order = np.empty((n, top), dtype=np.int64)
        for q in range(n):
            others = np.flatnonzero(~own[q])
            got = order_items(ranking, scores.level[q, others], scores.expected[q, others],
                              scores.closeness[q, others], scores.acoustic[q, others], c, k=top)
            order[q] = others[got.order]
        per = {s: metrics.ap_at_k(agree, order, s, (FIT_K,))[:, 0] for s in {s for _, s in cells}}
        figs = {f"{g} s={s}": float(metrics.mean_ap(per[s][groups[g]][:, None])[0]) for g, s in cells}
        value = float(np.mean(list(figs.values())))
        fit.figures[w], fit.cells[w] = value, figs
        if value > best + 1e-12:
            best, fit.weight = value, w
    return fit


__all__ = ["FIT_K", "MemoryStore", "WEIGHT_GRID", "WeightFit", "fit_ranking_weight"]
