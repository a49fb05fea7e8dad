"""Labelled datasets for training and evaluation: SONYC-UST and a user's own labels CSV.

A dataset is a list of recordings with a 0/1 label vector each over a taxonomy, split into
`train` (the database / training set) and `test` (the queries), as in the paper. Features are
computed through a cache store so that training and every evaluation reuse them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from soundsearch.errors import DatasetError
from soundsearch.taxonomy import Taxonomy

SPLITS = ("train", "test", "validate")


@dataclass(frozen=True)
class Example:
    path: Path
    labels: np.ndarray  # (C,) uint8
    split: str


@dataclass
class LabelledDataset:
    name: str
    root: Path
    taxonomy: Taxonomy
    train: list[Example]
    test: list[Example]
    missing: list[Path]
    info: dict = field(default_factory=dict)
    # Held apart from both: SONYC-UST v2's validate split, or CSV rows marked `validate` when a
    # test split exists. Training may use it to pick epochs; evaluation ignores it.
    validate: list[Example] = field(default_factory=list)

    def labels(self, split: str) -> np.ndarray:
        examples = getattr(self, split)
        c = len(self.taxonomy)
        if not examples:
            return np.zeros((0, c), dtype=np.uint8)
        return np.stack([e.labels for e in examples]).astype(np.uint8)

    def summary(self) -> dict:
        """Counts a person (or a model card) wants to see: per split, per category."""
        out: dict = {"name": self.name, "root": str(self.root), "categories": list(self.taxonomy)}
        for split in SPLITS:
            lab = self.labels(split)
            out[split] = {
                "recordings": int(lab.shape[0]),
                "per_category": {c: int(n) for c, n in zip(self.taxonomy, lab.sum(0).tolist())},
            }
        out["missing"] = len(self.missing)
        return out


@dataclass
class DatasetFeatures:
    train_feats: np.ndarray  # (N_items, T, D) float32
    train_labels: np.ndarray  # (N_items, C) uint8
    test_feats: np.ndarray
    test_labels: np.ndarray
    train_items: list  # ItemRecord per row, from the cache store
    test_items: list
    # Row of each item's source recording within dataset.train / dataset.test.
    train_example: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_example: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    failed: list = field(default_factory=list)  # (path, reason) the featurizer could not read


def load_dataset(
    spec: str | Path,
    data_dir: Path | None = None,
    seed: int = 0,
    *,
    taxonomy: Taxonomy | None = None,
    download: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> LabelledDataset:
    """Load "sonyc-ust" (from `data_dir`, fetched first with download=True) or a labels CSV.

    `taxonomy` fixes the categories a CSV's `labels` column may use (default SONYC-UST coarse);
    a CSV with one 0/1 column per category defines its own taxonomy.
    """
    name = str(spec)
    if name.lower() in ("sonyc-ust", "sonyc_ust", "sonyc"):
        from soundsearch.datasets import sonyc_ust
        from soundsearch.paths import default_data_dir

        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir("sonyc-ust")
        if download:
            from soundsearch.datasets.download import download_sonyc_ust

            download_sonyc_ust(root, on_progress=on_progress)
        return sonyc_ust.load(root)
    path = Path(name).expanduser()
    if path.suffix.lower() in (".csv", ".tsv") or path.is_file():
        if download:
            raise DatasetError("--download only applies to sonyc-ust; a CSV dataset is your own files")
        from soundsearch.datasets import csv as csv_labels

        return csv_labels.load(path, seed=seed, taxonomy=taxonomy)
    raise DatasetError(
        f"unknown dataset {name!r}: give 'sonyc-ust' or the path of a labels CSV "
        "(a 'path' column plus one 0/1 column per category, or a 'labels' column)"
    )


def check_trainable(dataset: LabelledDataset, min_per_state: int = 2) -> None:
    """Refuse a training split on which some category lacks positives or negatives.

    Pairs need, per category, recordings that have it and recordings that lack it; with fewer
    than two of either, "both" or "neither" pairs cannot be formed.
    """
    lab = dataset.labels("train")
    if lab.shape[0] == 0:
        raise DatasetError(f"{dataset.name}: the training split is empty")
    problems = []
    for c, name in enumerate(dataset.taxonomy):
        pos = int(lab[:, c].sum())
        neg = int(lab.shape[0] - pos)
        if pos < min_per_state or neg < min_per_state:
            problems.append(f"{name} ({pos} with, {neg} without)")
    if problems:
        raise DatasetError(
            f"{dataset.name}: every category needs at least {min_per_state} training recordings with it "
            f"and {min_per_state} without it; not so for: " + "; ".join(problems)
        )


def feature_cache_dir(
    featurizer,
    dataset: LabelledDataset | None = None,
    base: Path | None = None,
    item_seconds: float = 10.0,
) -> Path:
    """The cache store folder for one dataset's features by one featurizer (and item length).

    SONYC-UST keeps it beside its data (<data dir>/feature-cache/...); a CSV dataset under the
    per-user data folder, keyed by the CSV's location. One store per dataset keeps a search
    over the cache (which ranks every stored item) from wading through other datasets' items.
    """
    from soundsearch.paths import default_data_dir

    key = f"{featurizer.identity}|item_seconds={float(item_seconds)!r}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    leaf = f"{featurizer.name}-{digest}"
    if base is None:
        if dataset is not None and dataset.name == "sonyc-ust":
            return Path(dataset.root) / "feature-cache" / leaf
        base = default_data_dir("feature-cache")
    else:
        base = Path(base)
    if dataset is not None:
        source = str(dataset.info.get("source", dataset.root))
        tag = hashlib.sha256(source.encode()).hexdigest()[:10]
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(dataset.name).stem)[:40]
        return base / f"{stem}-{tag}" / leaf
    return base / leaf


def dataset_features(
    dataset: LabelledDataset,
    featurizer,
    cache_store_dir: Path | None = None,
    jobs: int | None = None,
    on_progress=None,
    item_seconds: float = 10.0,
) -> DatasetFeatures:
    """Features of every train/test recording, computed once through a cache Store.

    A recording longer than `item_seconds` becomes several items, each inheriting the file's
    labels. Files the featurizer cannot read are skipped and listed in `failed`.
    """
    from soundsearch.indexing import index_paths
    from soundsearch.store import Store

    store_dir = (
        Path(cache_store_dir)
        if cache_store_dir is not None
        else feature_cache_dir(featurizer, dataset=dataset, item_seconds=item_seconds)
    )
    wanted = [e.path for e in dataset.train] + [e.path for e in dataset.test]
    report = index_paths(
        store_dir,
        wanted,
        featurizer_name=featurizer.name,
        featurizer_params=dict(featurizer.params),
        jobs=jobs,
        on_progress=on_progress,
        item_seconds=item_seconds,
        # A new cache cuts consecutive windows: finer items cost featurizing time and add
        # nothing eval can count (it counts each recording once, evaluate/recordings.py). A
        # user's own store may cut finer; its items are used as they are.
        **({} if (store_dir / "catalog.sqlite").exists() else {"item_hop": item_seconds, "event_items": 0}),
    )
    failed = list(report.failed) + list(report.still_failed)
    with Store.open(store_dir, featurizer=featurizer) as store:
        by_path: dict[Path, list[int]] = {}
        table = store.item_table()
        # Resolved once per file, not once per item.
        for path, rows in zip(table.paths, table.rows_by_file()):
            key, mine = _key(Path(path)), rows.tolist()
            by_path[key] = sorted(by_path[key] + mine) if key in by_path else mine
        items = store.items()
        feats = store.features()
        c = len(dataset.taxonomy)
        tr_f, tr_l, tr_i, tr_s = _gather(dataset.train, by_path, items, feats, c)
        te_f, te_l, te_i, te_s = _gather(dataset.test, by_path, items, feats, c)
    if tr_f.shape[0] == 0:
        raise DatasetError(f"{dataset.name}: none of the training recordings could be featurized")
    return DatasetFeatures(tr_f, tr_l, te_f, te_l, tr_i, te_i, tr_s, te_s, failed)


def _gather(examples: list[Example], by_path: dict[Path, list[int]], items, feats, n_categories: int):
    """The stored items of `examples`: features, labels (each item inherits its file's), the
    items, and each item's example index (a file cut into several items, overlapping ones
    included, gives several)."""
    rows, labels, recs, src = [], [], [], []
    for ei, ex in enumerate(examples):
        mine = by_path.get(_key(ex.path), [])
        for row in mine:
            rows.append(row)
            labels.append(ex.labels)
            recs.append(items[row])
            src.append(ei)
    if rows:
        f = np.asarray(feats[np.asarray(rows)], dtype=np.float32)
        lab = np.stack(labels).astype(np.uint8)
    else:
        f = np.zeros((0,) + tuple(feats.shape[1:]), dtype=np.float32)
        lab = np.zeros((0, n_categories), dtype=np.uint8)
    return f, lab, recs, np.asarray(src, dtype=np.int64)


def _key(path: Path) -> Path:
    # The store keeps absolute resolved paths; datasets may name files through symlinks.
    try:
        return Path(path).resolve()
    except OSError:
        return Path(path).absolute()


__all__ = [
    "Example",
    "LabelledDataset",
    "DatasetFeatures",
    "load_dataset",
    "dataset_features",
    "check_trainable",
    "feature_cache_dir",
]
