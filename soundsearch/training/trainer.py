"""One training phase: batches of pairs from in-memory features, one optimiser step each.

Speed: the normalised features live in one in-memory tensor; a batch is gathered by indexing it
with the pair indices, the tower runs once per distinct item of the batch, and validation embeds
each held-out item once and only runs the pair head per pair.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from soundsearch.errors import TrainingError
from soundsearch.model.network import PresenceNet
from soundsearch.presence import STATES
from soundsearch.training.config import TrainConfig

BatchCallback = Callable[[str, int, int], None]  # (phase, pairs done, pairs in the epoch)


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


class Trainer:
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
