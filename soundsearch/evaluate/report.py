"""What an evaluation reports: per system, per-query AP_s@K; per query group, mAP_s@K."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from soundsearch import metrics

GROUPS = ("single", "multi", "none")
GROUP_TITLES = {
    "single": "single-label queries",
    "multi": "multi-label queries",
    "none": "queries with no category",
}
RANDOM = "random"
COSINE_MEAN = "cosine (mean)"
COSINE_STATS = "cosine (mean+std+max)"
COSINE_ITEM = "cosine (whole-item stats)"
COSINES = (COSINE_MEAN, COSINE_STATS, COSINE_ITEM)


@dataclass
class SystemResult:
    name: str
    kind: str  # "model", "variant", "random", "cosine"
    details: dict
    # threshold -> (Q, len(ks)) per-query AP_s@K over all queries
    per_query: dict[int, np.ndarray]
    seconds: float = 0.0


@dataclass
class EvalReport:
    dataset: dict
    ks: tuple[int, ...]
    thresholds: tuple[int, ...]
    seed: int
    groups: dict[str, np.ndarray]  # group -> query indices
    database_size: int
    systems: list[SystemResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Single-label queries by their category: thin categories show up instead of vanishing
    # into the average.
    single_by_category: dict[str, np.ndarray] = field(default_factory=dict)

    def map(self, system: SystemResult | str, group: str, threshold: int) -> np.ndarray:
        """mAP_s@K (len(ks),) of one system over one query group; NaN for an empty group."""
        sysres = self.system(system) if isinstance(system, str) else system
        idx = self.groups[group]
        return metrics.mean_ap(sysres.per_query[threshold][idx])

    def system(self, name: str) -> SystemResult:
        for s in self.systems:
            if s.name == name:
                return s
        raise KeyError(name)

    def nonempty_groups(self) -> list[str]:
        return [g for g in GROUPS if len(self.groups[g])]

    def to_json(self) -> dict:
        results: dict = {}
        for g in GROUPS:
            if not len(self.groups[g]):
                continue
            results[g] = {}
            for s in self.thresholds:
                results[g][str(s)] = {
                    sysres.name: {str(k): _round(v) for k, v in zip(self.ks, self.map(sysres, g, s))}
                    for sysres in self.systems
                }
        by_cat: dict = {}
        for cat, idx in self.single_by_category.items():
            by_cat[cat] = {"queries": int(len(idx))}
            for s in self.thresholds:
                by_cat[cat][str(s)] = {
                    sysres.name: {
                        str(k): _round(v) for k, v in zip(self.ks, metrics.mean_ap(sysres.per_query[s][idx]))
                    }
                    for sysres in self.systems
                }
        return {
            "dataset": self.dataset,
            "queries": {g: int(len(self.groups[g])) for g in GROUPS},
            "database_size": int(self.database_size),
            "ks": list(self.ks),
            "thresholds": list(self.thresholds),
            "seed": self.seed,
            "random_baseline": "exact expectation over uniformly random rankings",
            "systems": [
                {"name": s.name, "kind": s.kind, **s.details, "seconds": round(s.seconds, 3)} for s in self.systems
            ],
            "map": results,
            "single_by_category": by_cat,
            "notes": list(self.notes),
        }


def _round(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)
