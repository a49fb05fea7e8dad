"""Benchmark: the eval protocol at the paper's size (426 queries x 2,351 database items, C = 8).

Times what `soundsearch eval` does once features are cached: the model's ranking through the
search engine (score_all + rank), the exact random baseline, both cosine baselines, and every
AP_s@K. For scale, it also times brute-force pair scoring (LoadedModel.score_pairs, the
network run on every pair) on a sample of queries and extrapolates.

    python bench/eval.py [--queries 426] [--items 2351] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from soundsearch import metrics
from soundsearch.evaluate import cosine_scores, feature_norm, model_order, pooled, top_order
from soundsearch.features import get_featurizer
from soundsearch.model.config import ModelConfig
from soundsearch.model.checkpoint import load_model, save_model
from soundsearch.model.network import PresenceNet
from soundsearch.store import FileEntry, Store
from soundsearch.taxonomy import Taxonomy

KS = metrics.DEFAULT_KS
PREVALENCE = np.array([0.45, 0.1, 0.2, 0.05, 0.15, 0.1, 0.45, 0.08])  # roughly SONYC-UST's


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=426)
    ap.add_argument("--items", type=int, default=2351)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--brute-queries", type=int, default=8, help="queries scored pair by pair for comparison")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    fz = get_featurizer("logmel")
    n_total = args.items + args.queries
    feats = rng.normal(0, 1, (n_total, fz.steps, fz.dim)).astype(np.float32)
    labels = (rng.random((n_total, 8)) < PREVALENCE).astype(np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        cfg = ModelConfig(steps=fz.steps, dim=fz.dim, n_categories=8)
        net = PresenceNet(cfg).eval()
        save_model(tmp / "m.safetensors", net, cfg, Taxonomy.default(), fz.spec(), fz.identity,
                   np.zeros(fz.dim, np.float32), np.ones(fz.dim, np.float32), {"seed": 0})
        model = load_model(tmp / "m.safetensors")
        store = Store.open(tmp / "store", create=True, featurizer=fz, item_seconds=10.0)
        with store.writer() as w:
            w.add_roots([tmp / "lib"])
            w.write_files([
                FileEntry(path=tmp / "lib" / f"r{i:05d}.wav", size=1, mtime_ns=i, duration=10.0, samplerate=22050,
                          channels=1, segments=[(0.0, 10.0)], features=feats[i:i + 1])
                for i in range(n_total)
            ])
        store.close()
        store = Store.open(tmp / "store")
        db_rows = np.arange(args.items)
        q_feats = feats[args.items:]
        agree = metrics.agreement(labels[args.items:], labels[: args.items])
        out = {"queries": args.queries, "items": args.items, "threads": args.threads}

        t0 = time.perf_counter()
        order = model_order(model, store, db_rows, q_feats, max(KS))
        out["model_rank_s"] = time.perf_counter() - t0  # includes building the database-side cache
        t0, c0 = time.perf_counter(), time.process_time()
        order = model_order(model, store, db_rows, q_feats, max(KS))
        out["model_rank_cached_s"] = time.perf_counter() - t0
        # CPU seconds over all threads: on a shared, busy machine wall time mostly measures the queue.
        out["model_rank_cached_cpu_s"] = time.process_time() - c0

        t0 = time.perf_counter()
        for s in (8, 7):
            metrics.ap_at_k(agree, order, s, KS)
        out["ap_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for s in (8, 7):
            metrics.random_ap(agree, s, KS)
        out["random_exact_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        mean, std = feature_norm(feats[: args.items])
        for stats in (("mean",), ("mean", "std", "max")):
            sc = cosine_scores(pooled(q_feats, mean, std, stats), pooled(feats[: args.items], mean, std, stats))
            top_order(sc, max(KS))
        out["cosine_both_s"] = time.perf_counter() - t0

        nb = min(args.brute_queries, args.queries)
        t0, c0 = time.perf_counter(), time.process_time()
        for q in range(nb):
            model.score_pairs(q_feats[q], feats[: args.items])
        out["brute_force_est_s"] = (time.perf_counter() - t0) / max(nb, 1) * args.queries
        out["brute_force_est_cpu_s"] = (time.process_time() - c0) / max(nb, 1) * args.queries
        out["total_s"] = out["model_rank_s"] + out["ap_s"] + out["random_exact_s"] + out["cosine_both_s"]
        out["speedup_vs_brute_force"] = out["brute_force_est_s"] / out["model_rank_cached_s"]
        out["speedup_vs_brute_force_cpu"] = out["brute_force_est_cpu_s"] / out["model_rank_cached_cpu_s"]
        store.close()

    if args.json:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    else:
        print(f"eval at {args.queries} queries x {args.items} items, {args.threads} torch threads")
        print(f"  model ranking (engine, first run incl. database cache): {out['model_rank_s']:.2f} s")
        print(f"  model ranking (engine, cache warm):                     {out['model_rank_cached_s']:.2f} s"
              f" ({out['model_rank_cached_cpu_s']:.2f} s CPU)")
        print(f"  AP_s@K, s in (8, 7), 6 K:                               {out['ap_s']:.3f} s")
        print(f"  exact random baseline:                                  {out['random_exact_s']:.3f} s")
        print(f"  both cosine baselines:                                  {out['cosine_both_s']:.3f} s")
        print(f"  total:                                                  {out['total_s']:.2f} s")
        print(f"  brute-force pair scoring (est. from {nb} queries):      {out['brute_force_est_s']:.1f} s"
              f" ({out['brute_force_est_cpu_s']:.1f} s CPU)")
        print(f"  -> engine {out['speedup_vs_brute_force']:.1f}x faster by wall time, "
              f"{out['speedup_vs_brute_force_cpu']:.1f}x by CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
