"""Training on a labelled dataset: load, check, featurize (cached), fit, with one data summary.

`soundsearch train` (train_on_dataset) and `evaluate --variants` (train_on_features, on the
features it already holds) both train through here, so a model's meta["data"] reads the same
whichever of them trained it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from soundsearch.errors import DatasetError
from soundsearch.training.config import TrainConfig


@dataclass
class DatasetTraining:
    dataset: object  # datasets.LabelledDataset
    features: object  # datasets.DatasetFeatures: train split and, with val_split, the validate split as `test`
    result: object  # training.fit.TrainResult


def data_summary(dataset, featurizer, features) -> dict:
    """meta["data"]'s description of where the training data came from."""
    return {
        "dataset": dataset.name,
        "featurizer": featurizer.spec(),
        "split_info": dataset.info.get("split"),
        "missing": len(dataset.missing),
        "failed": len(features.failed),
    }


def train_on_features(dataset, features, featurizer, config: TrainConfig, *, val_split: bool = False,
                      on_epoch=None, on_batch=None):
    """Fit on a dataset's featurized train split; with `val_split`, `features.test_*` hold the
    dataset's validate split, which then chooses the epochs. Returns a training.fit.TrainResult."""
    from soundsearch.training.fit import fit

    return fit(
        features.train_feats, features.train_labels, dataset.taxonomy, featurizer.spec(), featurizer.identity,
        config, on_epoch=on_epoch, on_batch=on_batch, groups=features.train_example,
        data_summary=data_summary(dataset, featurizer, features),
        val_feats=features.test_feats if val_split else None,
        val_labels=features.test_labels if val_split else None,
        val_groups=features.test_example if val_split else None,
    )


def train_on_dataset(
    spec: str | Path,
    featurizer,
    config: TrainConfig,
    *,
    data_dir: Path | None = None,
    download: bool = False,
    val_split: bool = False,
    jobs: int | None = None,
    on_dataset: Callable[[object], None] | None = None,
    on_feature_progress=None,
    on_features: Callable[[object], None] | None = None,
    on_epoch=None,
    on_batch=None,
) -> DatasetTraining:
    """Load the dataset `spec`, check it can be trained on, featurize what training needs (through
    the dataset's feature cache) and fit. `on_dataset` sees the loaded dataset before featurizing,
    `on_features` the features before fitting."""
    from soundsearch.datasets import check_trainable, dataset_features, load_dataset

    data = load_dataset(spec, data_dir=data_dir, seed=config.seed, download=download)
    check_trainable(data)
    if val_split and len(data.validate) < 2:
        raise DatasetError(f"{data.name}: --val-split needs a validate split of at least 2 recordings; it has {len(data.validate)}")
    if on_dataset is not None:
        on_dataset(data)
    # Only what training needs: the train split and, with val_split, the validate split.
    wanted = dataclasses.replace(data, test=list(data.validate) if val_split else [])
    feats = dataset_features(wanted, featurizer, jobs=jobs, on_progress=on_feature_progress)
    if on_features is not None:
        on_features(feats)
    result = train_on_features(data, feats, featurizer, config, val_split=val_split, on_epoch=on_epoch, on_batch=on_batch)
    return DatasetTraining(dataset=data, features=feats, result=result)
