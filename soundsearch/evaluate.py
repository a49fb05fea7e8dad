"""The paper's evaluation protocol: mAP_s@K of query-by-example retrieval, with baselines.

Queries are the dataset's test recordings, the database its training recordings (items, when
long recordings are cut). Queries are grouped by how many categories they hold: single-label,
multi-label, and none (reported on its own rather than dropped). Every system is one ranking of
the database per query; the random baseline is the exact expectation over random rankings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from soundsearch import metrics
from soundsearch.errors import DatasetError, ModelError

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

# The paper's variants: Siamese or not x one model or per-category x attention or not.
VARIANTS: tuple[tuple[bool, bool, bool], ...] = tuple(
    (siamese, per_category, attention)
    for siamese in (True, False)
    for per_category in (False, True)
    for attention in (True, False)
)

Status = Callable[[str], None]


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


# ------------------------------------------------------------------ building blocks


def query_groups(query_labels: np.ndarray) -> dict[str, np.ndarray]:
    n = np.asarray(query_labels).sum(axis=1)
    return {
        "single": np.flatnonzero(n == 1),
        "multi": np.flatnonzero(n >= 2),
        "none": np.flatnonzero(n == 0),
    }


def top_order(scores: np.ndarray, top: int) -> np.ndarray:
    """Rows of the `top` highest scores per query, best first; ties keep database order."""
    scores = np.asarray(scores)
    n = scores.shape[1]
    top = min(top, n)
    if top >= n or top * 4 > n:
        return np.argsort(-scores, axis=1, kind="stable")[:, :top]
    out = np.empty((scores.shape[0], top), dtype=np.int64)
    # Everything tied with the top-th score is a candidate, so ties at the cut-off are broken
    # by row exactly as a full stable sort would.
    kth = -np.partition(-scores, top - 1, axis=1)[:, top - 1]
    for q in range(scores.shape[0]):
        cand = np.flatnonzero(scores[q] >= kth[q])
        out[q] = cand[np.argsort(-scores[q, cand], kind="stable")[:top]]
    return out


def pooled(feats: np.ndarray, mean: np.ndarray, std: np.ndarray, stats: Sequence[str] = ("mean",)) -> np.ndarray:
    """Standardise (N, T, D) features per dimension, then summarise over T into one vector."""
    z = (np.asarray(feats, dtype=np.float32) - mean) / std
    parts = []
    for s in stats:
        if s == "mean":
            parts.append(z.mean(axis=1))
        elif s == "std":
            parts.append(z.std(axis=1))
        elif s == "max":
            parts.append(z.max(axis=1))
        else:
            raise ValueError(f"unknown statistic {s!r}")
    return np.concatenate(parts, axis=1)


def cosine_scores(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return unit(queries) @ unit(database).T


def feature_norm(db_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension statistics over every frame of the database (the training side)."""
    flat = np.asarray(db_feats, dtype=np.float64).reshape(-1, db_feats.shape[-1])
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def score_per_query(agree: np.ndarray, order: np.ndarray, thresholds, ks) -> dict[int, np.ndarray]:
    return {int(s): metrics.ap_at_k(agree, order, int(s), ks) for s in thresholds}


def random_per_query(agree: np.ndarray, thresholds, ks) -> dict[int, np.ndarray]:
    return {int(s): metrics.random_ap(agree, int(s), ks) for s in thresholds}


def model_order(model, store, db_rows: np.ndarray, query_feats: np.ndarray, top: int, mode=None) -> np.ndarray:
    """The model's ranking of the database rows `db_rows` (store rows) for each query.

    Goes through the search engine's `score_all` and ranking.order_items with the model's
    recorded ranking mode (or `mode`), the code path `query` uses, so eval measures what users
    get. Returns positions into `db_rows`, best first.

    The acoustic standardisation is the whole store's, as `query` uses it; with a store that
    holds the queries too, that includes them.
    """
    from soundsearch.search.ranking import order_items, resolve_ranking
    from soundsearch.search.engine import SearchEngine

    ranking = resolve_ranking(model, mode)
    # A throwaway model (a --variants one) gains nothing from an on-disk database cache.
    engine = SearchEngine(store, model, persist=model.path is not None)
    scores = engine.score_all(np.asarray(query_feats, dtype=np.float32), rows=np.asarray(db_rows))
    top = min(top, len(db_rows))
    c = len(model.taxonomy)
    return np.stack(
        [
            order_items(ranking, scores.level[q], scores.expected[q], scores.closeness[q], scores.acoustic[q], c, k=top).order
            for q in range(scores.level.shape[0])
        ]
    )


def item_stats_scores(featurizer, query_feats: np.ndarray, db_feats: np.ndarray) -> np.ndarray:
    """Cosine of whole-item statistics (Featurizer.item_stats), standardised on the database
    side: the acoustic similarity the ranking modes use, as a baseline of its own."""
    from soundsearch.search.ranking import acoustic_norm, acoustic_vectors

    d = featurizer.item_stats(db_feats)
    mean, std = acoustic_norm(d)
    return acoustic_vectors(featurizer.item_stats(query_feats), mean, std) @ acoustic_vectors(d, mean, std).T


# ------------------------------------------------------------------ the whole protocol


def parse_ints(values: Sequence[str] | Sequence[int] | None, what: str) -> tuple[int, ...] | None:
    """Accept 1 5 10 as well as "1,5,10" (from the command line)."""
    if not values:
        return None
    out: list[int] = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            try:
                n = int(part)
            except ValueError:
                raise DatasetError(f"{what}: {part!r} is not a whole number") from None
            out.append(n)
    return tuple(dict.fromkeys(out))


def evaluate(
    dataset_spec: str = "sonyc-ust",
    data_dir: Path | None = None,
    models: Sequence[str] | None = None,
    variants: bool = False,
    ks: Sequence[int] | None = None,
    thresholds: Sequence[int] | None = None,
    seed: int = 0,
    jobs: int | None = None,
    download: bool = False,
    featurizer: str | None = None,
    variant_epochs: int | None = None,
    variant_config=None,
    cache_dir: Path | None = None,
    store_dir: Path | None = None,
    mode: str | None = None,
    on_status: Status | None = None,
    on_progress=None,
    on_download=None,
) -> EvalReport:
    """Run the protocol: load the dataset and models, featurize (cached), rank, score.

    With `store_dir`, the features come from that store (the user's own index): recordings it
    already holds are only stat'ed, the rest are indexed into it with the store's featurizer.
    Models rank by their recorded ranking mode unless `mode` (ranking.MODES) says otherwise.
    """
    from soundsearch.datasets import dataset_features, load_dataset
    from soundsearch.features import featurizer_from_spec, get_featurizer
    from soundsearch.model.checkpoint import load_model
    from soundsearch.model.registry import resolve_model

    say = on_status or (lambda _m: None)
    loaded = []
    names = list(models or [])
    if not names and not variants:
        names = [None]  # the shipped default
    for name in names:
        path = resolve_model(name)
        loaded.append(load_model(path))
    from soundsearch.search.ranking import resolve_ranking

    rankings = [resolve_ranking(m, mode) for m in loaded]  # a bad mode fails before any work

    taxonomy = loaded[0].taxonomy if loaded else None
    dataset = load_dataset(
        dataset_spec, data_dir=data_dir, seed=seed, taxonomy=taxonomy, download=download, on_progress=on_download
    )
    for m in loaded:
        _check_taxonomy(m, dataset)
    say(f"dataset {dataset.name}: {len(dataset.train)} database recordings, {len(dataset.test)} queries")
    if dataset.missing:
        shown = ", ".join(str(p) for p in dataset.missing[:5])
        more = f" and {len(dataset.missing) - 5} more" if len(dataset.missing) > 5 else ""
        say(f"{len(dataset.missing)} listed files are missing and were skipped: {shown}{more}")

    if loaded:
        fz = featurizer_from_spec(loaded[0].featurizer_spec)
    else:
        fz = get_featurizer(featurizer)
    for m in loaded[1:]:
        if m.featurizer_identity != loaded[0].featurizer_identity:
            raise ModelError(
                f"models '{loaded[0].name}' and '{m.name}' use different features "
                f"({loaded[0].featurizer_identity} vs {m.featurizer_identity}): evaluate them in separate runs"
            )
    for m in loaded:
        m.check_featurizer(fz.identity)

    from soundsearch.datasets import feature_cache_dir

    cache = Path(store_dir) if store_dir is not None else feature_cache_dir(fz, dataset=dataset, base=cache_dir)
    feats = dataset_features(dataset, fz, cache_store_dir=cache, jobs=jobs, on_progress=on_progress)
    if feats.failed:
        shown = "; ".join(f"{p}: {why}" for p, why in feats.failed[:5])
        say(f"{len(feats.failed)} files could not be read and were skipped: {shown}")
    if feats.test_feats.shape[0] == 0:
        raise DatasetError(f"{dataset.name}: none of the query recordings could be featurized")

    ks = tuple(ks) if ks else metrics.DEFAULT_KS
    c = len(dataset.taxonomy)
    thresholds = tuple(thresholds) if thresholds else (c, c - 1) if c > 1 else (c,)
    bad = [s for s in thresholds if not 1 <= s <= c]
    if bad:
        raise DatasetError(f"thresholds must lie between 1 and the number of categories ({c}); got {bad}")
    if any(k < 1 for k in ks):
        raise DatasetError(f"K values must be positive; got {list(ks)}")
    top = max(ks)

    agree = metrics.agreement(feats.test_labels, feats.train_labels)
    report = EvalReport(
        dataset={
            **dataset.summary(),
            "info": dataset.info,
            "featurizer": fz.identity,
            "query_items": int(feats.test_feats.shape[0]),
            "database_items": int(feats.train_feats.shape[0]),
            "unreadable": [str(p) for p, _ in feats.failed][:20],
        },
        ks=ks,
        thresholds=tuple(int(s) for s in thresholds),
        seed=seed,
        groups=query_groups(feats.test_labels),
        database_size=int(feats.train_feats.shape[0]),
    )
    single = report.groups["single"]
    for ci, cat in enumerate(dataset.taxonomy):
        idx = single[feats.test_labels[single, ci] == 1]
        if len(idx):
            report.single_by_category[cat] = idx

    def add(name, kind, details, order, t0):
        # Systems are keyed by name in the JSON: two models both called "default" (a user one
        # and a shipped one), or a model called "random", must not overwrite each other.
        taken = {x.name for x in report.systems} | ({RANDOM, *COSINES} if kind != "cosine" else set())
        base, i = name, 2
        while name in taken:
            name, i = f"{base} ({i})", i + 1
        report.systems.append(
            SystemResult(name, kind, details, score_per_query(agree, order, thresholds, ks), time.perf_counter() - t0)
        )

    from soundsearch.store import Store

    db_rows = np.asarray([it.row for it in feats.train_items], dtype=np.int64)
    with Store.open(cache, featurizer=fz) as store:
        for m, ranking in zip(loaded, rankings):
            say(f"ranking with model '{m.name}' ({ranking.mode.value})")
            t0 = time.perf_counter()
            order = model_order(m, store, db_rows, feats.test_feats, top, mode=ranking.mode)
            add(m.name, "model", _model_details(m) | {"ranking": ranking.to_json()}, order, t0)

        if variants:
            for m, fit_seconds in _train_variants(dataset, feats, fz, seed, variant_epochs, say, variant_config):
                t0 = time.perf_counter()
                order = model_order(m, store, db_rows, feats.test_feats, top)
                details = _model_details(m)
                details["train_seconds"] = round(fit_seconds, 2)
                add(f"variant {m.config.variant}", "variant", details, order, t0)

    t0 = time.perf_counter()
    report.systems.append(
        SystemResult(RANDOM, "random", {"method": "exact expectation"}, random_per_query(agree, thresholds, ks), 0.0)
    )
    report.systems[-1].seconds = time.perf_counter() - t0

    mean, std = feature_norm(feats.train_feats)
    for name, stats in ((COSINE_MEAN, ("mean",)), (COSINE_STATS, ("mean", "std", "max"))):
        t0 = time.perf_counter()
        q = pooled(feats.test_feats, mean, std, stats)
        d = pooled(feats.train_feats, mean, std, stats)
        order = top_order(cosine_scores(q, d), top)
        add(name, "cosine", {"pooling": "+".join(stats), "featurizer": fz.identity}, order, t0)
    t0 = time.perf_counter()
    order = top_order(item_stats_scores(fz, feats.test_feats, feats.train_feats), top)
    add(COSINE_ITEM, "cosine", {"pooling": "item_stats, standardised on the database", "featurizer": fz.identity}, order, t0)

    if len(report.groups["none"]):
        report.notes.append(
            f"{len(report.groups['none'])} queries hold no category; they are scored as their own group"
        )
    empty = [cat for cat, n in zip(dataset.taxonomy, feats.train_labels.sum(0).tolist()) if n == 0]
    if empty:
        report.notes.append(f"no database item holds: {', '.join(empty)}")
    return report


def _check_taxonomy(model, dataset) -> None:
    if tuple(model.taxonomy) != tuple(dataset.taxonomy):
        raise ModelError(
            f"model '{model.name}' knows the categories {', '.join(model.taxonomy)}, but the dataset "
            f"{dataset.name} has {', '.join(dataset.taxonomy)}: train a model on this dataset "
            f"(soundsearch train --dataset ...) or evaluate with --variants"
        )


def _model_details(m) -> dict:
    meta = m.meta or {}
    return {
        "path": str(m.path) if m.path is not None else None,
        "variant": m.config.variant,
        "featurizer": m.featurizer_identity,
        "seed": meta.get("seed"),
        "created": meta.get("created"),
    }


def _train_variants(dataset, feats, fz, seed, epochs, say, base_config=None):
    """Train each of the paper's variants on the training split with one seed."""
    from dataclasses import replace

    from soundsearch.datasets import check_trainable
    from soundsearch.training.config import TrainConfig
    from soundsearch.training.pipeline import train_on_features

    check_trainable(dataset)
    base = base_config or TrainConfig(seed=seed)
    if epochs is not None:
        base = replace(base, epochs=epochs)
    for siamese, per_category, attention in VARIANTS:
        cfg = replace(base, siamese=siamese, per_category=per_category, attention=attention)
        t0 = time.perf_counter()
        result = train_on_features(dataset, feats, fz, cfg)
        seconds = time.perf_counter() - t0
        say(f"trained variant {result.model.config.variant} in {seconds:.1f} s")
        yield result.model, seconds


# ------------------------------------------------------------------ the paper's Fig. 3


def plot_report(report: EvalReport, path: Path) -> Path:
    """mAP vs K, one panel per query group x threshold, one line per system (Fig. 3 layout)."""
    from soundsearch.errors import SoundsearchError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SoundsearchError(
            "--plot needs matplotlib, which is not installed: pip install 'soundsearch[plot]'"
        ) from None
    groups = [g for g in ("single", "multi") if len(report.groups[g])] or report.nonempty_groups()
    rows, cols = len(groups), len(report.thresholds)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharex=True)
    styles = ["o-", "s-", "^-", "D-", "v-", "P-", "X-", "*-", "h-", "<-", ">-"]
    # K values evenly spaced, as in the paper's figure: 1, 5, 10 stay readable next to 100.
    xs = list(range(len(report.ks)))
    for r, g in enumerate(groups):
        for c, s in enumerate(report.thresholds):
            ax = axes[r][c]
            for i, sysres in enumerate(report.systems):
                y = report.map(sysres, g, s)
                if sysres.kind == "random":
                    ax.plot(xs, y, "k--", label=sysres.name, linewidth=1.2)
                else:
                    ax.plot(xs, y, styles[i % len(styles)], label=sysres.name, markersize=4, linewidth=1.4)
            ax.set_title(f"{GROUP_TITLES[g]} ({len(report.groups[g])}), s = {s}", fontsize=10)
            ax.set_xticks(xs, [str(k) for k in report.ks])
            ax.set_ylim(-0.02, 1.03)  # lines at exactly 0 or 1 stay visible
            ax.grid(alpha=0.3)
            if r == rows - 1:
                ax.set_xlabel("K")
            if c == 0:
                ax.set_ylabel(f"mAP$_s$@K")
    handles, labels = axes[0][0].get_legend_handles_labels()
    name = report.dataset.get("name", "")
    fig.suptitle(f"mAP$_s$@K on {name}: database of {report.database_size} items", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    # Below the panels, outside the axes; bbox_inches="tight" grows the figure to hold it.
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2 if cols < 3 else 3,
               fontsize=8, frameon=False)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as exc:
        raise SoundsearchError(f"cannot write the plot to {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path
