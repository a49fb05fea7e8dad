"""The whole protocol: load the dataset and models, featurize (cached), rank, score.

Queries are the dataset's test recordings, the database its training recordings. Every system
ranks the database's items per query item (systems.py); each recording is counted once, at its
best item and with its items' scores averaged (recordings.py), so a store that cuts long
recordings finer cannot inflate a figure. The report (report.py) groups the queries by how many
categories they hold.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from soundsearch import metrics
from soundsearch.errors import DatasetError, ModelError
from soundsearch.evaluate.recordings import Recordings
from soundsearch.evaluate.report import COSINE_ITEM, COSINE_MEAN, COSINE_STATS, COSINES, RANDOM, EvalReport, SystemResult
from soundsearch.evaluate.systems import (
    cosine_scores,
    feature_norm,
    item_stats_scores,
    model_order,
    pooled,
    query_groups,
    random_per_query,
    score_per_query,
    top_order,
)

# The paper's variants: Siamese or not x one model or per-category x attention or not.
VARIANTS: tuple[tuple[bool, bool, bool], ...] = tuple(
    (siamese, per_category, attention)
    for siamese in (True, False)
    for per_category in (False, True)
    for attention in (True, False)
)

Status = Callable[[str], None]


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
    from soundsearch.store import Store

    say = on_status or (lambda _m: None)
    loaded, rankings = _load_models(models, variants, mode)
    dataset = _load_dataset(dataset_spec, data_dir, seed, loaded, download, on_download, say)
    fz = _featurizer(loaded, featurizer)
    cache, feats = _features(dataset, fz, store_dir, cache_dir, jobs, on_progress, say)
    ks, thresholds = _cut_offs(ks, thresholds, len(dataset.taxonomy))
    top = max(ks)

    rec = Recordings(feats.test_example, feats.train_example, feats.test_labels, feats.train_labels)
    agree = rec.agreement()
    report = _new_report(dataset, fz, feats, ks, thresholds, seed, rec)
    ranked = rec.items_to_rank(top)
    db_rows = np.asarray([it.row for it in feats.train_items], dtype=np.int64)
    with Store.open(cache, featurizer=fz) as store:
        for m, ranking in zip(loaded, rankings):
            say(f"ranking with model '{m.name}' ({ranking.mode.value})")
            t0 = time.perf_counter()
            order = model_order(m, store, db_rows, feats.test_feats, ranked, mode=ranking.mode)
            _add(report, agree, m.name, "model", _model_details(m) | {"ranking": ranking.to_json()}, order, t0, rec)

        if variants:
            for m, fit_seconds in _train_variants(dataset, feats, fz, seed, variant_epochs, say, variant_config):
                t0 = time.perf_counter()
                order = model_order(m, store, db_rows, feats.test_feats, ranked)
                details = _model_details(m)
                details["train_seconds"] = round(fit_seconds, 2)
                _add(report, agree, f"variant {m.config.variant}", "variant", details, order, t0, rec)
    _add_baselines(report, agree, feats, fz, rec)
    _add_notes(report, dataset, feats)
    return report


def _load_models(models: Sequence[str] | None, variants: bool, mode: str | None) -> tuple[list, list]:
    """The models asked for (the shipped default when none, unless only variants are) and their
    ranking modes; a bad mode fails before any work."""
    from soundsearch.model.checkpoint import load_model
    from soundsearch.model.registry import resolve_model

    loaded = []
    names = list(models or [])
    if not names and not variants:
        names = [None]  # the shipped default
    for name in names:
        path = resolve_model(name)
        loaded.append(load_model(path))
    from soundsearch.search.ranking import resolve_ranking

    rankings = [resolve_ranking(m, mode) for m in loaded]  # a bad mode fails before any work
    return loaded, rankings


def _load_dataset(dataset_spec: str, data_dir, seed: int, loaded: list, download: bool, on_download, say: Status):
    """The dataset, in the models' categories, whose taxonomy they must share."""
    from soundsearch.datasets import load_dataset

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
    return dataset


def _featurizer(loaded: list, featurizer: str | None):
    """The models' featurizer (they must share one), else the one named."""
    from soundsearch.features import featurizer_from_spec, get_featurizer

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
    return fz


def _features(dataset, fz, store_dir: Path | None, cache_dir: Path | None, jobs, on_progress, say: Status):
    """(the store the features are in, the dataset's features); raises when no query has any."""
    from soundsearch.datasets import dataset_features, feature_cache_dir

    cache = Path(store_dir) if store_dir is not None else feature_cache_dir(fz, dataset=dataset, base=cache_dir)
    feats = dataset_features(dataset, fz, cache_store_dir=cache, jobs=jobs, on_progress=on_progress)
    if feats.failed:
        shown = "; ".join(f"{p}: {why}" for p, why in feats.failed[:5])
        say(f"{len(feats.failed)} files could not be read and were skipped: {shown}")
    if feats.test_feats.shape[0] == 0:
        raise DatasetError(f"{dataset.name}: none of the query recordings could be featurized")
    return cache, feats


def _cut_offs(ks: Sequence[int] | None, thresholds: Sequence[int] | None, c: int) -> tuple[tuple, tuple]:
    """(K values, thresholds s), defaulting to metrics.DEFAULT_KS and (C, C - 1); checked."""
    ks = tuple(ks) if ks else metrics.DEFAULT_KS
    thresholds = tuple(thresholds) if thresholds else (c, c - 1) if c > 1 else (c,)
    bad = [s for s in thresholds if not 1 <= s <= c]
    if bad:
        raise DatasetError(f"thresholds must lie between 1 and the number of categories ({c}); got {bad}")
    if any(k < 1 for k in ks):
        raise DatasetError(f"K values must be positive; got {list(ks)}")
    return ks, thresholds


def _new_report(dataset, fz, feats, ks: tuple, thresholds: tuple, seed: int, rec: Recordings) -> EvalReport:
    report = EvalReport(
        dataset={
            **dataset.summary(),
            "info": dataset.info,
            "featurizer": fz.identity,
            "query_items": int(feats.test_feats.shape[0]),
            "database_items": int(feats.train_feats.shape[0]),
            "query_recordings": rec.n_queries,
            "database_recordings": rec.n_database,
            "unreadable": [str(p) for p, _ in feats.failed][:20],
        },
        ks=ks,
        thresholds=tuple(int(s) for s in thresholds),
        seed=seed,
        groups=query_groups(rec.q_labels),
        database_size=rec.n_database,
    )
    single = report.groups["single"]
    for ci, cat in enumerate(dataset.taxonomy):
        idx = single[rec.q_labels[single, ci] == 1]
        if len(idx):
            report.single_by_category[cat] = idx
    return report


def _add(report: EvalReport, agree: np.ndarray, name: str, kind: str, details: dict, order: np.ndarray, t0: float,
         rec: Recordings) -> None:
    """Score a system's ranking `order` of database items per query item (started at
    perf_counter t0) into the report, counting recordings (recordings.py)."""
    # Systems are keyed by name in the JSON: two models both called "default" (a user one
    # and a shipped one), or a model called "random", must not overwrite each other.
    taken = {x.name for x in report.systems} | ({RANDOM, *COSINES} if kind != "cosine" else set())
    base, i = name, 2
    while name in taken:
        name, i = f"{base} ({i})", i + 1
    report.systems.append(
        SystemResult(
            name, kind, details,
            rec.per_recording(score_per_query(agree, rec.rank_recordings(order, max(report.ks)), report.thresholds, report.ks)),
            time.perf_counter() - t0,
        )
    )


def _add_baselines(report: EvalReport, agree: np.ndarray, feats, fz, rec: Recordings) -> None:
    """The exact random baseline (over the database's recordings) and the cosine baselines."""
    thresholds, ks = report.thresholds, report.ks
    top = rec.items_to_rank(max(ks))
    t0 = time.perf_counter()
    report.systems.append(
        SystemResult(RANDOM, "random", {"method": "exact expectation"},
                     rec.per_recording(random_per_query(agree, thresholds, ks)), 0.0)
    )
    report.systems[-1].seconds = time.perf_counter() - t0

    mean, std = feature_norm(feats.train_feats)
    for name, stats in ((COSINE_MEAN, ("mean",)), (COSINE_STATS, ("mean", "std", "max"))):
        t0 = time.perf_counter()
        q = pooled(feats.test_feats, mean, std, stats)
        d = pooled(feats.train_feats, mean, std, stats)
        order = top_order(cosine_scores(q, d), top)
        _add(report, agree, name, "cosine", {"pooling": "+".join(stats), "featurizer": fz.identity}, order, t0, rec)
    t0 = time.perf_counter()
    order = top_order(item_stats_scores(fz, feats.test_feats, feats.train_feats), top)
    details = {"pooling": "item_stats, standardised on the database", "featurizer": fz.identity}
    _add(report, agree, COSINE_ITEM, "cosine", details, order, t0, rec)


def _add_notes(report: EvalReport, dataset, feats) -> None:
    if len(report.groups["none"]):
        report.notes.append(
            f"{len(report.groups['none'])} queries hold no category; they are scored as their own group"
        )
    empty = [cat for cat, n in zip(dataset.taxonomy, feats.train_labels.sum(0).tolist()) if n == 0]
    if empty:
        report.notes.append(f"no database item holds: {', '.join(empty)}")


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
