"""Training the presence network from feature arrays: the paper's recipe, seeded.

1. Hold out `val_fraction` of the recordings (split by recording, so no pair crosses the split).
2. Standardise features per value with statistics of the training recordings.
3. Balanced pairs (soundsearch.training.pairs) within each side; train with RMSprop (lr 1e-3, batch 128)
   and pick the number of epochs by validation loss, with early stopping (patience).
4. Refit on all recordings for that many epochs (skipped with refit=False, which keeps the
   best held-out-selected weights).

Speed: the normalised features live in one in-memory tensor; a batch is gathered by indexing it
with the pair indices, the tower runs once per distinct item of the batch, and validation embeds
each held-out item once and only runs the pair head per pair.
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
from torch.nn import functional as F

from soundsearch.errors import DatasetError, TrainingError
from soundsearch.model.checkpoint import library_versions
from soundsearch.model.network import LoadedModel, PresenceNet
from soundsearch.training.pairs import make_pairs, summarise_pairs
from soundsearch.presence import STATES
from soundsearch.taxonomy import Taxonomy
from soundsearch.training.config import TrainConfig

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
BatchCallback = Callable[[str, int, int], None]  # (phase, pairs done, pairs in the epoch)


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


def _check_inputs(feats: np.ndarray, labels: np.ndarray, taxonomy: Taxonomy) -> None:
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


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, foreach=True)


def _targets(labels: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C) state indices for index pairs, from a (N, C) bool label tensor."""
    la, lb = labels[a], labels[b]
    # both -> 0, neither -> 1, differs -> 2 (presence.STATES order)
    return torch.where(la & lb, 0, torch.where(~la & ~lb, 1, 2))


class _Trainer:
    """One training phase over a fixed set of items and pairs."""

    def __init__(self, net: PresenceNet, feats: torch.Tensor, labels: torch.Tensor, pairs: np.ndarray,
                 cfg: TrainConfig, generator: torch.Generator, epochs: int | None = None):
        self.net, self.feats, self.labels, self.cfg, self.gen = net, feats, labels, cfg, generator
        self.pairs = torch.from_numpy(np.ascontiguousarray(pairs)).long()
        params = list(net.parameters())
        self.tagger: torch.nn.Linear | None = None
        if cfg.tag_weight > 0:
            self.tagger = torch.nn.Linear(2 * net.embed_width, labels.shape[1])
            params += list(self.tagger.parameters())
        self.opt = _make_optimizer(params, cfg)
        self.state_weights = torch.tensor(cfg.state_weights, dtype=torch.float32)
        self.weighted = any(w != 1.0 for w in cfg.state_weights)
        self.epochs = epochs or cfg.epochs or cfg.max_epochs
        self.done_epochs = 0
        self.last_pairs = len(self.pairs)  # pairs trained on in the last epoch

    def _set_lr(self, fraction: float) -> None:
        """Cosine schedule position `fraction` in [0, 1] of the phase's planned epochs."""
        if self.cfg.lr_schedule == "cosine":
            lr = self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))
            for group in self.opt.param_groups:
                group["lr"] = lr

    def _augment(self, x: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixing (union of labels) and Gaussian noise on a batch of standardised items."""
        cfg = self.cfg
        if cfg.mix_prob > 0:
            n = x.shape[0]
            chosen = torch.rand(n, generator=self.gen) < cfg.mix_prob
            other = torch.randint(0, self.feats.shape[0], (n,), generator=self.gen)
            x = torch.where(chosen[:, None, None], torch.maximum(x, self.feats[other]), x)
            lab = torch.where(chosen[:, None], lab | self.labels[other], lab)
        if cfg.input_noise:
            x = x + cfg.input_noise * torch.randn(x.shape, generator=self.gen)
        return x, lab

    def _step(self, loss: torch.Tensor) -> float:
        """One optimiser step on `loss`; its value, refusing a diverged run."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError("training diverged (loss is not finite): try a smaller --lr")
        return value

    def _loss(self, logp: torch.Tensor, target: torch.Tensor, h: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        flat_p, flat_t = logp.reshape(-1, len(STATES)), target.reshape(-1)
        loss = F.nll_loss(flat_p, flat_t, weight=self.state_weights) if self.weighted else F.nll_loss(flat_p, flat_t)
        if self.tagger is not None:
            logits = self.tagger(torch.cat([h.mean(1), h.amax(1)], dim=-1))
            loss = loss + self.cfg.tag_weight * F.binary_cross_entropy_with_logits(logits, lab.float())
        return loss

    def _item_epoch(self, phase: str, on_batch: BatchCallback | None, limit: int | None) -> float:
        """batching="items": batches of items, balanced pairs drawn among each batch's items."""
        net, cfg = self.net, self.cfg
        n_items = self.feats.shape[0]
        size = min(cfg.batch_items, n_items)
        order = torch.randperm(n_items, generator=self.gen)
        if limit is not None:
            order = order[: max(size, min(limit, n_items))]
        steps = max(1, len(order) // size)
        total, seen = 0.0, 0
        for k in range(steps):
            self._set_lr((self.done_epochs + k / steps) / self.epochs)
            rows = order[k * size : (k + 1) * size]
            x, lab = self._augment(self.feats[rows], self.labels[rows])
            h = net.embed(x)
            pa, pb = net.project(h)
            ia, ib = _batch_pairs(lab, cfg.batch_size, self.gen, cfg.pair_balance)
            logp = net.pair_log_probs((pa[ia], pb[ia]), (pa[ib], pb[ib]))
            loss = self._loss(logp, _targets(lab, ia, ib), h, lab)
            value = self._step(loss)
            total += value
            seen += len(rows)
            if on_batch is not None:
                on_batch(phase, seen, len(order))
        self.done_epochs += 1
        self.last_pairs = steps * cfg.batch_size
        return total / steps

    def _blocked_order(self) -> tuple[torch.Tensor, list[int]]:
        """Pair order and batch bounds grouping pairs by the (random) blocks of their items.

        Items fall into random blocks sized so that the pairs between two blocks (a cell) make
        about one batch; a batch is one cell (a large one split evenly, small ones pooled), so
        it touches ~2 blocks of items. Cells come in random order, pairs within a cell too,
        and the blocks change every epoch.
        """
        n_items, n_pairs, bsz = self.feats.shape[0], len(self.pairs), self.cfg.batch_size
        n_blocks = max(1, min(n_items, round(math.sqrt(2.0 * n_pairs / bsz))))
        size = math.ceil(n_items / n_blocks)
        block = torch.empty(n_items, dtype=torch.long)
        block[torch.randperm(n_items, generator=self.gen)] = torch.arange(n_items) // size
        ba, bb = block[self.pairs[:, 0]], block[self.pairs[:, 1]]
        nb = int(block.max()) + 1
        cell = torch.minimum(ba, bb) * nb + torch.maximum(ba, bb)
        cell_rank = torch.randperm(nb * nb, generator=self.gen)[cell]
        key = cell_rank * n_pairs + torch.randperm(n_pairs, generator=self.gen)
        order = torch.argsort(key)
        ranks = cell_rank[order]
        change = (torch.nonzero(ranks[1:] != ranks[:-1]).flatten() + 1).tolist()
        bounds = [0]
        for s, e in zip([0] + change, change + [n_pairs]):
            length = e - s
            if length >= bsz // 2:
                if bounds[-1] != s:
                    bounds.append(s)  # close the pool of small cells before this one
                k = max(1, round(length / bsz))  # batches of ~0.7 to ~1.5 x batch_size
                bounds.extend(s + (length * i) // k for i in range(1, k))
                bounds.append(e)
            elif e - bounds[-1] >= bsz // 2:
                bounds.append(e)
        if bounds[-1] != n_pairs:
            bounds.append(n_pairs)
        return order, bounds

    def _batches(self, limit: int | None) -> tuple[torch.Tensor, list[int]]:
        n = len(self.pairs)
        if self.cfg.batching == "blocked":
            order, bounds = self._blocked_order()
        else:
            order = torch.randperm(n, generator=self.gen)
            bounds = list(range(0, n, self.cfg.batch_size)) + [n]
        if limit is not None and limit < n:
            bounds = [b for b in bounds if b < limit] + [limit]
            order = order[:limit]
        return order, bounds

    def epoch(self, phase: str, on_batch: BatchCallback | None, limit: int | None = None) -> float:
        """One pass over the pairs (or the first `limit` of this epoch's order, for benchmarks)."""
        net, cfg = self.net, self.cfg
        net.train()
        if self.tagger is not None:
            self.tagger.train()
        if cfg.batching == "items":
            return self._item_epoch(phase, on_batch, limit)
        order, bounds = self._batches(limit)
        n = len(order)
        total, seen = 0.0, 0
        every = max(1, 20000 // cfg.batch_size)
        for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            idx = self.pairs[order[start:stop]]
            bsz = idx.shape[0]
            if bsz < 2 and seen:
                break  # a lone pair gives degenerate batch statistics; it is seen next epoch
            a, b = idx[:, 0], idx[:, 1]
            # Run the item-only tower once per distinct item of the batch.
            uniq, inv = torch.unique(torch.cat([a, b]), return_inverse=True)
            self._set_lr((self.done_epochs + start / max(n, 1)) / self.epochs)
            x, lab = self._augment(self.feats[uniq], self.labels[uniq])
            h = net.embed(x)
            pa, pb = net.project(h)
            ia, ib = inv[:bsz], inv[bsz:]
            logp = net.pair_log_probs((pa[ia], pb[ia]), (pa[ib], pb[ib]))
            # Targets from the (possibly mixed) labels of the batch's items.
            target = _targets(lab, ia, ib)
            loss = self._loss(logp, target, h, lab)
            value = self._step(loss)
            total += value * bsz
            seen += bsz
            if on_batch is not None and (k + 1) % every == 0:
                on_batch(phase, seen, n)
        if on_batch is not None:
            on_batch(phase, n, n)
        self.done_epochs += 1
        self.last_pairs = n
        return total / max(seen, 1)


def _batch_pairs(labels: torch.Tensor, n_pairs: int, gen: torch.Generator,
                 balance: str = "partner") -> tuple[torch.Tensor, torch.Tensor]:
    """`n_pairs` (first, second) index pairs among a batch's items, balanced as the paper's pairs.

    Each pair picks a random first item and category, then a partner in the same situation for
    that category (both hold it or both lack it) or in the opposite one, with equal odds; a
    random partner when the batch has none in the wanted situation. Never an item with itself
    unless the batch has one item. With balance="category" the first item also holds the
    pair's category with odds 1/2 (when the batch has such an item), so a rare category gets
    as many "both" pairs as a common one instead of few in proportion to its frequency.
    """
    b, c = labels.shape
    if balance == "category":
        cat = torch.randint(0, c, (n_pairs,), generator=gen)
        holder = torch.rand(n_pairs, generator=gen) < 0.5
        fits = labels[:, cat].T == holder[:, None]
        first = (torch.rand(n_pairs, b, generator=gen) + 2.0 * fits).argmax(1)
    else:
        first = torch.randint(0, b, (n_pairs,), generator=gen)
        cat = torch.randint(0, c, (n_pairs,), generator=gen)
    same = torch.rand(n_pairs, generator=gen) < 0.5
    holds = labels[:, cat].T  # (n_pairs, b): does each candidate hold the pair's category
    wanted = (holds == labels[first, cat][:, None]) == same[:, None]
    score = torch.rand(n_pairs, b, generator=gen) + 2.0 * wanted
    if b > 1:
        score[torch.arange(n_pairs), first] = -1.0
    return first, score.argmax(1)


@torch.inference_mode()
def evaluate_pairs(net: PresenceNet, feats: torch.Tensor, labels: torch.Tensor, pairs: np.ndarray,
                   chunk: int = 8192) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss, per-category correct counts and per-category majority counts on pairs."""
    net.eval()
    pa, pb = net.project(net.embed(feats))
    p = torch.from_numpy(np.ascontiguousarray(pairs)).long()
    c = labels.shape[1]
    loss_sum = 0.0
    correct = torch.zeros(c, dtype=torch.long)
    state_counts = torch.zeros(c, len(STATES), dtype=torch.long)
    for start in range(0, len(p), chunk):
        a, b = p[start : start + chunk, 0], p[start : start + chunk, 1]
        logp = net.pair_log_probs((pa[a], pb[a]), (pa[b], pb[b]))
        target = _targets(labels, a, b)
        loss_sum += float(F.nll_loss(logp.reshape(-1, 3), target.reshape(-1), reduction="sum"))
        correct += (logp.argmax(-1) == target).sum(0)
        state_counts += F.one_hot(target, len(STATES)).sum(0)
    n = max(len(p), 1)
    return loss_sum / (n * c), correct.numpy() / n, state_counts.max(1).values.numpy() / n


def _fit_ranking(state, model_cfg, taxonomy, featurizer_spec, featurizer_identity, mean, std,
                 f_va, y_va, source: str) -> dict:
    """meta["ranking"]: the blend weight fitted on the validation items with the model trained
    without them (the select phase), or presence with the reason when it cannot be fitted."""
    from soundsearch.errors import SoundsearchError
    from soundsearch.features import featurizer_from_spec
    from soundsearch.ranking import RankingMode, fit_ranking_weight, ranking_entry

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
    feats = np.asarray(train_feats, dtype=np.float32)
    labels = np.asarray(train_labels)
    _check_inputs(feats, labels, taxonomy)
    labels = labels.astype(np.uint8)
    n, steps, dim = feats.shape
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if groups.shape != (n,):
        raise DatasetError(f"groups must name the recording of each of the {n} items")
    model_cfg = cfg.model_config(steps, dim, len(taxonomy))
    started = time.perf_counter()
    history: list[EpochInfo] = []

    external = val_feats is not None
    if external:
        f_va = np.asarray(val_feats, dtype=np.float32)
        y_va = np.asarray(val_labels) if val_labels is not None else None
        if y_va is None or f_va.ndim != 3 or f_va.shape[1:] != feats.shape[1:] or y_va.shape != (len(f_va), labels.shape[1]):
            raise DatasetError("validation features/labels do not match the training ones in shape")
        if not np.isin(y_va, (0, 1)).all() or not np.isfinite(f_va).all():
            raise DatasetError("validation labels must be 0/1 and features finite")
        y_va = y_va.astype(np.uint8)
        g_va = np.arange(len(f_va)) if val_groups is None else np.asarray(val_groups)
        f_tr, y_tr, g_tr = feats, labels, groups
        refit = False
    else:
        held = split_holdout(labels, groups, cfg.val_fraction, cfg.seed)
        f_tr, y_tr, g_tr = feats[~held], labels[~held], groups[~held]
        f_va, y_va, g_va = feats[held], labels[held], groups[held]
        refit = cfg.refit

    with _torch_settings(cfg.threads):
        mean, std = norm_stats(f_tr)
        x_tr = torch.from_numpy((f_tr - mean) / std)
        x_va = torch.from_numpy((f_va - mean) / std)
        l_tr = torch.from_numpy(y_tr.astype(bool))
        l_va = torch.from_numpy(y_va.astype(bool))
        pairs_tr = make_pairs(y_tr, cfg.pairs_per_side, seed=cfg.seed, scheme=cfg.pair_scheme)
        pairs_va = make_pairs(y_va, cfg.pairs_per_side, seed=cfg.seed + 1, scheme=cfg.pair_scheme)
        if len(pairs_tr) == 0 or len(pairs_va) == 0:
            raise DatasetError("no training pairs could be formed: too few recordings")

        # Phase 1: train on the kept recordings, validate on the held-out ones.
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        net = PresenceNet(model_cfg)
        planned = cfg.epochs or cfg.max_epochs
        trainer = _Trainer(net, x_tr, l_tr, pairs_tr, cfg, gen, epochs=planned)
        best_loss, best_epoch, best_state, best_val = math.inf, 0, None, None
        for epoch in range(1, planned + 1):
            t0 = time.perf_counter()
            train_loss = trainer.epoch("select", on_batch)
            dt = time.perf_counter() - t0
            val_loss, per_cat, majority = evaluate_pairs(net, x_va, l_va, pairs_va)
            improved = val_loss < best_loss
            if improved or cfg.epochs is not None:
                best_loss, best_epoch = val_loss, epoch
                best_state = copy.deepcopy(net.state_dict())
                best_val = (val_loss, per_cat, majority)
            info = EpochInfo("select", epoch, planned, train_loss, val_loss, float(per_cat.mean()),
                             dt, trainer.last_pairs / max(dt, 1e-9), best=improved)
            history.append(info)
            if on_epoch is not None:
                on_epoch(info)
            if cfg.epochs is None and epoch - best_epoch >= cfg.patience:
                break
        assert best_state is not None and best_val is not None
        val_loss, per_cat, majority = best_val
        validation = Validation(
            loss=float(val_loss), accuracy=float(per_cat.mean()), majority=float(majority.mean()),
            per_category=[float(v) for v in per_cat], pairs=int(len(pairs_va)),
            recordings=int(len(np.unique(g_va))),
        )
        chosen = best_epoch
        ranking = _fit_ranking(best_state, model_cfg, taxonomy, featurizer_spec, featurizer_identity,
                               mean, std, f_va, y_va, "validation split" if external else "holdout")

        if refit:
            # Phase 2: the same recipe on every recording for the chosen number of epochs.
            mean, std = norm_stats(feats)
            x_all = torch.from_numpy((feats - mean) / std)
            l_all = torch.from_numpy(labels.astype(bool))
            pairs_final = make_pairs(labels, cfg.pairs_per_side, seed=cfg.seed, scheme=cfg.pair_scheme)
            torch.manual_seed(cfg.seed)
            gen = torch.Generator().manual_seed(cfg.seed)
            net = PresenceNet(model_cfg)
            trainer = _Trainer(net, x_all, l_all, pairs_final, cfg, gen, epochs=chosen)
            for epoch in range(1, chosen + 1):
                t0 = time.perf_counter()
                train_loss = trainer.epoch("refit", on_batch)
                dt = time.perf_counter() - t0
                info = EpochInfo("refit", epoch, chosen, train_loss, None, None, dt,
                                 trainer.last_pairs / max(dt, 1e-9))
                history.append(info)
                if on_epoch is not None:
                    on_epoch(info)
        else:
            net.load_state_dict(best_state)
            pairs_final = pairs_tr
        net.eval()

    seconds = time.perf_counter() - started
    trained_pairs = sum(h.pairs_per_s * h.seconds for h in history)
    train_seconds = sum(h.seconds for h in history)
    pair_summary = summarise_pairs(pairs_final, labels if refit else y_tr)
    data = dict(data_summary or {})
    data.update({
        "items": int(n),
        "recordings": int(len(np.unique(groups))),
        "positives": [int(v) for v in labels.sum(0)],
        "pairs": pair_summary.to_json(),
        "validation_recordings": validation.recordings,
        "validation_pairs": validation.pairs,
    })
    report = TrainReport(
        epochs=chosen, refit=refit, history=history, validation=validation,
        train_pairs=int(len(pairs_final)), recordings=data["recordings"], items=int(n),
        seconds=seconds, pairs_per_s=trained_pairs / max(train_seconds, 1e-9),
        positives=data["positives"], data=data,
    )
    meta = {
        "seed": cfg.seed,
        "epochs": chosen,
        "refit": refit,
        "validation": validation.to_json() | {
            "source": "validation split" if external else f"{cfg.val_fraction:.0%} of the training recordings held out",
            "note": "model before refit" if refit else "the model as saved",
        },
        "data": data,
        "recipe": cfg.to_json(),
        "history": [h.to_json() for h in history],
        "training_seconds": round(seconds, 3),
        "ranking": ranking,
        "versions": library_versions(),
    }
    model = LoadedModel(
        net=net, config=model_cfg, taxonomy=taxonomy, featurizer_spec=dict(featurizer_spec),
        featurizer_identity=featurizer_identity, norm_mean=mean, norm_std=std, meta=meta,
    )
    return TrainResult(model=model, report=report)
