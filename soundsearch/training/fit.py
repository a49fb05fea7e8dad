"""Training the presence network from feature arrays: the paper's recipe, seeded.

1. Hold out `val_fraction` of the recordings (split by recording, so no pair crosses the split).
2. Standardise features per value with statistics of the training recordings.
3. Balanced pairs (soundsearch.training.pairs) within each side; train with RMSprop (lr 1e-3, batch 128)
   and pick the number of epochs by validation loss, with early stopping (patience).
4. Refit on all recordings for that many epochs (skipped with refit=False, which keeps the
   best held-out-selected weights).

The batches and steps of one phase are soundsearch.training.trainer's.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from soundsearch.errors import DatasetError
from soundsearch.model.checkpoint import library_versions
from soundsearch.model.network import LoadedModel, PresenceNet
from soundsearch.taxonomy import Taxonomy
from soundsearch.training.config import TrainConfig
from soundsearch.training.pairs import make_pairs, summarise_pairs
from soundsearch.training.trainer import BatchCallback, Trainer, evaluate_pairs

@dataclass
class EpochInfo:
    phase: str  # "select" (held-out validation) or "refit" (all recordings)
    epoch: int  # 1-based
    epochs: int  # planned: max_epochs while selecting, the chosen count when refitting
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    pairs_per_s: float
    best: bool = False

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Validation:
    loss: float
    accuracy: float  # presence-state accuracy over (pair, category)
    majority: float  # accuracy of always predicting each category's most common state
    per_category: list[float]
    pairs: int
    recordings: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TrainReport:
    epochs: int
    refit: bool
    history: list[EpochInfo]
    validation: Validation
    train_pairs: int
    recordings: int
    items: int
    seconds: float
    pairs_per_s: float
    positives: list[int]  # training items holding each category
    data: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    model: LoadedModel
    report: TrainReport


EpochCallback = Callable[[EpochInfo], None]


@contextmanager
def _torch_settings(threads: int | None) -> Iterator[None]:
    """Deterministic kernels and a thread count for the run, restored afterwards."""
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.set_num_threads(old_threads)


def norm_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-value mean and std over items and steps; constant values get std 1."""
    flat = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
    mean = flat.mean(0)
    std = flat.std(0)
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _checked_training(train_feats, train_labels, groups, taxonomy: Taxonomy):
    """The training arrays as float32 features, uint8 labels and each item's recording, checked."""
    feats = np.asarray(train_feats, dtype=np.float32)
    labels = np.asarray(train_labels)
    if feats.ndim != 3:
        raise DatasetError(f"features must be (items, steps, dim), got shape {feats.shape}")
    if labels.ndim != 2 or labels.shape[0] != feats.shape[0]:
        raise DatasetError(f"labels must be (items, categories) for {feats.shape[0]} items, got {labels.shape}")
    if labels.shape[1] != len(taxonomy):
        raise DatasetError(f"labels have {labels.shape[1]} categories, the taxonomy {len(taxonomy)}")
    if not np.isin(labels, (0, 1)).all():
        raise DatasetError("labels must be 0/1")
    if not np.isfinite(feats).all():
        raise DatasetError("features contain NaN or infinite values")
    pos = labels.sum(0)
    neg = labels.shape[0] - pos
    bad = [f"{c} ({int(p)} with, {int(n)} without)" for c, p, n in zip(taxonomy, pos, neg) if p < 2 or n < 2]
    if bad:
        raise DatasetError(
            "every category needs at least 2 training recordings with it and 2 without; "
            f"not so for: {', '.join(bad)}"
        )
    n = feats.shape[0]
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if groups.shape != (n,):
        raise DatasetError(f"groups must name the recording of each of the {n} items")
    return feats, labels.astype(np.uint8), groups


def split_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out items: whole recordings (groups), about `fraction` of them.

    Recordings are taken in a seeded random order, skipping any whose removal would leave the
    training side with fewer than 2 recordings with, or without, some category.
    """
    uniq, inverse = np.unique(groups, return_inverse=True)
    g = len(uniq)
    # a recording's labels: the union over its items (normally identical)
    glabels = np.zeros((g, labels.shape[1]), dtype=np.int64)
    np.maximum.at(glabels, inverse, labels.astype(np.int64))
    want = max(2, int(round(fraction * g)))
    pos_left = glabels.sum(0)
    neg_left = g - pos_left
    chosen = np.zeros(g, dtype=bool)
    rng = np.random.default_rng(seed)
    taken = 0
    for r in rng.permutation(g):
        if taken >= want:
            break
        lab = glabels[r]
        if np.any(pos_left - lab < 2) or np.any(neg_left - (1 - lab) < 2):
            continue
        chosen[r] = True
        pos_left -= lab
        neg_left -= 1 - lab
        taken += 1
    if taken < 2:
        raise DatasetError(
            "too few recordings to hold some out for validation while keeping every category "
            "in training: add recordings or pass a fixed number of epochs with no refit"
        )
    return chosen[inverse]


def _fit_ranking(state, model_cfg, taxonomy, featurizer_spec, featurizer_identity, mean, std,
                 f_va, y_va, source: str) -> dict:
    """meta["ranking"]: the blend weight fitted on the validation items with the model trained
    without them (the select phase), or presence with the reason when it cannot be fitted."""
    from soundsearch.errors import SoundsearchError
    from soundsearch.features import featurizer_from_spec
    from soundsearch.search.blend_weight import fit_ranking_weight
    from soundsearch.search.ranking import RankingMode, ranking_entry

    net = PresenceNet(model_cfg)
    net.load_state_dict(state)
    net.eval()
    model = LoadedModel(net=net, config=model_cfg, taxonomy=taxonomy, featurizer_spec=dict(featurizer_spec),
                        featurizer_identity=featurizer_identity, norm_mean=mean, norm_std=std)
    try:
        fitted = fit_ranking_weight(model, f_va, y_va, featurizer_from_spec(featurizer_spec))
    except SoundsearchError as exc:
        return ranking_entry(RankingMode.PRESENCE, note=f"no blend weight fitted: {exc}")
    return ranking_entry(
        RankingMode.BLEND, fitted.weight, fitted_on=f"{fitted.items} {source} items",
        grid=fitted.grid_json(), metric="mean mAP@10 over single/multi-label x s=C,C-1, leave-one-out",
    )


@dataclass
class _Side:
    """One side of a run: standardised features, bool labels and balanced pairs."""
    x: torch.Tensor
    labels: torch.Tensor
    pairs: np.ndarray
    y: np.ndarray  # the 0/1 labels the pairs were made from


def _side(feats: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray, cfg: TrainConfig, seed: int) -> _Side:
    return _Side(
        x=torch.from_numpy((feats - mean) / std), labels=torch.from_numpy(labels.astype(bool)),
        pairs=make_pairs(labels, cfg.pairs_per_side, seed=seed, scheme=cfg.pair_scheme), y=labels,
    )


@dataclass
class _Best:
    """The selected epoch of a validated phase: its weights and validation figures."""
    epoch: int = 0
    loss: float = math.inf
    state: dict | None = None
    per_category: np.ndarray | None = None
    majority: np.ndarray | None = None


def _run_phase(phase: str, model_cfg, cfg: TrainConfig, train: _Side, epochs: int, history: list[EpochInfo],
               on_epoch: EpochCallback | None, on_batch: BatchCallback | None,
               val: _Side | None = None) -> tuple[PresenceNet, _Best]:
    """One loop for both phases, from a freshly seeded network.

    With `val` ("select") every epoch is validated, the best weights are kept and, when the
    recipe leaves the epochs to validation, training stops after `patience` epochs without a
    better loss; without it ("refit") exactly `epochs` epochs are trained.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = PresenceNet(model_cfg)
    trainer = Trainer(net, train.x, train.labels, train.pairs, cfg, gen, epochs=epochs)
    best = _Best()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss = trainer.epoch(phase, on_batch)
        dt = time.perf_counter() - t0
        val_loss = val_accuracy = None
        improved = False
        if val is not None:
            val_loss, per_cat, majority = evaluate_pairs(net, val.x, val.labels, val.pairs)
            val_accuracy = float(per_cat.mean())
            improved = val_loss < best.loss
            if improved or cfg.epochs is not None:
                best = _Best(epoch, val_loss, copy.deepcopy(net.state_dict()), per_cat, majority)
        info = EpochInfo(phase, epoch, epochs, train_loss, val_loss, val_accuracy, dt,
                         trainer.last_pairs / max(dt, 1e-9), best=improved)
        history.append(info)
        if on_epoch is not None:
            on_epoch(info)
        if val is not None and cfg.epochs is None and epoch - best.epoch >= cfg.patience:
            break
    return net, best


def _checked_validation(val_feats, val_labels, val_groups, feats: np.ndarray, labels: np.ndarray):
    """A dataset's own validation split, checked against the training arrays."""
    f_va = np.asarray(val_feats, dtype=np.float32)
    y_va = np.asarray(val_labels) if val_labels is not None else None
    if y_va is None or f_va.ndim != 3 or f_va.shape[1:] != feats.shape[1:] or y_va.shape != (len(f_va), labels.shape[1]):
        raise DatasetError("validation features/labels do not match the training ones in shape")
    if not np.isin(y_va, (0, 1)).all() or not np.isfinite(f_va).all():
        raise DatasetError("validation labels must be 0/1 and features finite")
    g_va = np.arange(len(f_va)) if val_groups is None else np.asarray(val_groups)
    return f_va, y_va.astype(np.uint8), g_va


def fit(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    taxonomy: Taxonomy,
    featurizer_spec: dict,
    featurizer_identity: str,
    config: TrainConfig | None = None,
    on_epoch: EpochCallback | None = None,
    groups: np.ndarray | None = None,
    on_batch: BatchCallback | None = None,
    data_summary: dict | None = None,
    val_feats: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    val_groups: np.ndarray | None = None,
) -> TrainResult:
    """Train a presence network on raw (N, T, D) features and (N, C) 0/1 labels.

    `groups` names each item's recording (items cut from one long file share it), so the
    held-out split never separates a recording's items; default: every item its own recording.
    With `val_feats`/`val_labels` (a dataset's own validation split) those pick the epochs
    instead of a random held-out part, and the selected weights are kept: a refit would train
    on exactly the same recordings again.
    """
    cfg = config or TrainConfig()
    feats, labels, groups = _checked_training(train_feats, train_labels, groups, taxonomy)
    model_cfg = cfg.model_config(feats.shape[1], feats.shape[2], len(taxonomy))
    started = time.perf_counter()
    history: list[EpochInfo] = []

    external = val_feats is not None
    (f_tr, y_tr), (f_va, y_va, g_va), refit = _train_and_validation(
        feats, labels, groups, cfg, val_feats, val_labels, val_groups)

    with _torch_settings(cfg.threads):
        mean, std = norm_stats(f_tr)
        train = _side(f_tr, y_tr, mean, std, cfg, cfg.seed)
        val = _side(f_va, y_va, mean, std, cfg, cfg.seed + 1)
        if len(train.pairs) == 0 or len(val.pairs) == 0:
            raise DatasetError("no training pairs could be formed: too few recordings")
        net, best, validation = _select(model_cfg, cfg, train, val, g_va, history, on_epoch, on_batch)
        ranking = _fit_ranking(best.state, model_cfg, taxonomy, featurizer_spec, featurizer_identity,
                               mean, std, f_va, y_va, "validation split" if external else "holdout")
        if refit:
            # Phase 2: the same recipe on every recording for the chosen number of epochs.
            mean, std = norm_stats(feats)
            train = _side(feats, labels, mean, std, cfg, cfg.seed)
            net, _ = _run_phase("refit", model_cfg, cfg, train, best.epoch, history, on_epoch, on_batch)
        else:
            net.load_state_dict(best.state)
        net.eval()

    data = _data(data_summary, groups, labels, train, validation)
    report = _report(best.epoch, refit, history, validation, len(train.pairs), data, time.perf_counter() - started)
    source = "validation split" if external else f"{cfg.val_fraction:.0%} of the training recordings held out"
    meta = _meta(cfg, report, source, ranking)
    model = LoadedModel(
        net=net, config=model_cfg, taxonomy=taxonomy, featurizer_spec=dict(featurizer_spec),
        featurizer_identity=featurizer_identity, norm_mean=mean, norm_std=std, meta=meta,
    )
    return TrainResult(model=model, report=report)


def _train_and_validation(feats, labels, groups, cfg: TrainConfig, val_feats, val_labels, val_groups):
    """(train features, labels), (validation features, labels, recordings), and whether to refit:
    a dataset's own validation split when given (no refit), else a held-out part of training."""
    if val_feats is not None:
        return (feats, labels), _checked_validation(val_feats, val_labels, val_groups, feats, labels), False
    held = split_holdout(labels, groups, cfg.val_fraction, cfg.seed)
    return (feats[~held], labels[~held]), (feats[held], labels[held], groups[held]), cfg.refit


def _select(model_cfg, cfg: TrainConfig, train: _Side, val: _Side, val_groups: np.ndarray,
            history: list[EpochInfo], on_epoch: EpochCallback | None,
            on_batch: BatchCallback | None) -> tuple[PresenceNet, _Best, Validation]:
    """Phase 1: train on the kept recordings, validate on the held-out ones; the network, the
    selected epoch and its validation figures."""
    net, best = _run_phase("select", model_cfg, cfg, train, cfg.epochs or cfg.max_epochs, history,
                           on_epoch, on_batch, val=val)
    assert best.state is not None and best.per_category is not None and best.majority is not None
    validation = Validation(
        loss=float(best.loss), accuracy=float(best.per_category.mean()), majority=float(best.majority.mean()),
        per_category=[float(v) for v in best.per_category], pairs=int(len(val.pairs)),
        recordings=int(len(np.unique(val_groups))),
    )
    return net, best, validation


def _report(epochs: int, refit: bool, history: list[EpochInfo], validation: Validation, train_pairs: int,
            data: dict, seconds: float) -> TrainReport:
    trained_pairs = sum(h.pairs_per_s * h.seconds for h in history)
    train_seconds = sum(h.seconds for h in history)
    return TrainReport(
        epochs=epochs, refit=refit, history=history, validation=validation,
        train_pairs=int(train_pairs), recordings=data["recordings"], items=data["items"],
        seconds=seconds, pairs_per_s=trained_pairs / max(train_seconds, 1e-9),
        positives=data["positives"], data=data,
    )


def _data(summary: dict | None, groups: np.ndarray, labels: np.ndarray, train: _Side, validation: Validation) -> dict:
    """meta["data"]: the caller's summary of the dataset plus what the run trained on."""
    data = dict(summary or {})
    data.update({
        "items": int(len(labels)),
        "recordings": int(len(np.unique(groups))),
        "positives": [int(v) for v in labels.sum(0)],
        "pairs": summarise_pairs(train.pairs, train.y).to_json(),
        "validation_recordings": validation.recordings,
        "validation_pairs": validation.pairs,
    })
    return data


def _meta(cfg: TrainConfig, report: TrainReport, source: str, ranking: dict) -> dict:
    return {
        "seed": cfg.seed,
        "epochs": report.epochs,
        "refit": report.refit,
        "validation": report.validation.to_json() | {
            "source": source,
            "note": "model before refit" if report.refit else "the model as saved",
        },
        "data": report.data,
        "recipe": cfg.to_json(),
        "history": [h.to_json() for h in report.history],
        "training_seconds": round(report.seconds, 3),
        "ranking": ranking,
        "versions": library_versions(),
    }
