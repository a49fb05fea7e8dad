"""Training throughput of the presence network on synthetic paper-sized features (not a test).

Paper size: 2,351 training recordings of T=10 x D=128 frame embeddings, 8 categories with
SONYC-UST-like prevalences, balanced pairs as soundsearch.training.pairs makes them. Times pair
sampling, then a warm-up and `--pairs` training pairs through the real training loop
(soundsearch.training.trainer.Trainer: gather by index, tower once per distinct item, RMSprop step), and
reports pairs/s and the time a full epoch would take. Also prints the arithmetic: FLOPs per
pair and this machine's measured fp32 matmul rate, so the figure can be judged against physics.

    python bench/train.py [--threads 2] [--pairs 20000] [--batch-size 128] [--variant default]
                          [--batching random|blocked] [--json]
"""

from __future__ import annotations

import argparse
import os
import json
import sys
import time

import numpy as np
import torch

from soundsearch.model.config import ModelConfig
from soundsearch.model.network import PresenceNet
from soundsearch.training.pairs import make_pairs
from soundsearch.training.fit import norm_stats
from soundsearch.training.trainer import Trainer
from soundsearch.training.config import TrainConfig

# Rough SONYC-UST v2 coarse prevalences in the train split (crowd "any annotator" labels).
PREVALENCE = np.array([0.62, 0.18, 0.25, 0.08, 0.33, 0.13, 0.47, 0.08])

VARIANTS = {
    "default": {},
    "no-siamese": {"siamese": False},
    "per-category": {"per_category": True},
    "no-attention": {"attention": False},
}


def matmul_gflops(threads: int, seconds: float = 1.0) -> float:
    a = torch.randn(2560, 256)
    b = torch.randn(256, 256)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2560 * 256 * 256 * n / (time.perf_counter() - t0) / 1e9


def train_flops(cfg: ModelConfig) -> tuple[float, float]:
    """(per distinct item, per pair) training FLOPs: multiply-adds x2, x3 for forward + backward."""
    t, g = cfg.steps, cfg.groups
    macs_item = 0
    fin = cfg.input_dim
    if cfg.siamese:
        for units in cfg.tower:
            macs_item += fin * units * g
            fin = units
    macs_item += 2 * fin * cfg.head[0] * g
    macs_pair = 0
    for a, b in zip(cfg.head[:-1], cfg.head[1:]):
        macs_pair += a * b * g
    macs_pair += cfg.head[-1] * (3 + int(cfg.attention)) * cfg.outputs_per_group * g
    return 6.0 * t * macs_item, 6.0 * t * macs_pair


def distinct_items_per_pair(trainer: Trainer, pairs_timed: int, batch: int) -> float:
    """Distinct items the tower runs on per pair, in batches as the trainer forms them."""
    gen_state = trainer.gen.get_state()
    order, bounds = trainer._batches(pairs_timed)
    trainer.gen.set_state(gen_state)
    p = trainer.pairs[order]
    n = sum(len(torch.unique(p[a:b])) for a, b in zip(bounds[:-1], bounds[1:]))
    return n / max(len(p), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recordings", type=int, default=2351)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=20000, help="training pairs to time")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    ap.add_argument("--batching", choices=["random", "blocked"], default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    labels = (rng.random((args.recordings, len(PREVALENCE))) < PREVALENCE).astype(np.uint8)
    feats = rng.normal(size=(args.recordings, args.steps, args.dim)).astype(np.float32)

    t0 = time.perf_counter()
    pairs = make_pairs(labels, seed=args.seed)
    pair_seconds = time.perf_counter() - t0

    cfg = TrainConfig(seed=args.seed, batch_size=args.batch_size, batching=args.batching, **VARIANTS[args.variant])
    mcfg = cfg.model_config(args.steps, args.dim, len(PREVALENCE))
    mean, std = norm_stats(feats)
    x = torch.from_numpy((feats - mean) / std)
    lab = torch.from_numpy(labels.astype(bool))
    torch.manual_seed(args.seed)
    net = PresenceNet(mcfg)
    gen = torch.Generator().manual_seed(args.seed)
    trainer = Trainer(net, x, lab, pairs, cfg, gen)
    trainer.epoch("warm", None, limit=20 * args.batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.epoch("bench", None, limit=args.pairs)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    done = min(args.pairs, len(pairs))
    pps = done / dt
    per_item, per_pair = train_flops(mcfg)
    items_per_pair = distinct_items_per_pair(trainer, done, args.batch_size)
    flops = per_item * items_per_pair + per_pair
    peak = matmul_gflops(args.threads)
    result = {
        "variant": args.variant,
        "batching": args.batching,
        "recordings": args.recordings,
        "steps": args.steps,
        "dim": args.dim,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "pairs": int(len(pairs)),
        "pair_sampling_s": round(pair_seconds, 4),
        "timed_pairs": int(done),
        "pairs_per_s": round(pps, 1),
        # The machine is shared: CPU seconds show the work itself, wall time adds queueing.
        "cpu_s": round(cpu, 3),
        "wall_s": round(dt, 3),
        "pairs_per_cpu_s": round(done / max(cpu, 1e-9), 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "epoch_s": round(len(pairs) / pps, 2),
        "distinct_items_per_pair": round(items_per_pair, 3),
        "train_gflop_per_pair": round(flops / 1e9, 5),
        "train_gflops": round(pps * flops / 1e9, 2),
        "matmul_gflops": round(peak, 2),
        "pairs_per_s_at_matmul_peak": round(peak * 1e9 / flops, 1),
        "target_pairs_per_s": 100000,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"variant {args.variant}, {args.recordings} recordings x ({args.steps}, {args.dim}), "
              f"{args.threads} threads, batch {args.batch_size}")
        print(f"pairs: {len(pairs):,} (sampled in {pair_seconds * 1000:.0f} ms)")
        print(f"training: {pps:,.0f} pairs/s wall, {done / max(cpu, 1e-9):,.0f} pairs per CPU second "
              f"(load average {os.getloadavg()[0]:.1f}) -> {len(pairs) / pps:,.1f} s per epoch "
              f"({pps / 100000:.3f} x the 100k pairs/s target)")
        print(f"work: {items_per_pair:.2f} tower runs per pair, {flops / 1e6:.2f} MFLOP per pair (forward + backward) -> {pps * flops / 1e9:.1f} GFLOP/s; "
              f"measured fp32 matmul {peak:.1f} GFLOP/s -> at most {peak * 1e9 / flops:,.0f} pairs/s "
              f"at this batch size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
