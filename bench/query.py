"""Benchmark the search engine against the naive approach on a synthetic store.

    python bench/query.py --items 100000 [--json] [--cli] [--cache-dtype bfloat16|float16]

Builds a store of N items (random features written straight into a real feature store, in
10-item files so results carry time ranges) and a model of the paper's architecture with
random weights and random batch-norm statistics, then prints in one run:

- engine_ms: warm latency of SearchEngine.search (the database side already cached);
- naive_ms: the full network on every (query, item) pair, batched, as in the paper
  (LoadedModel.score_pairs, batch 4096);
- same_topk: whether both rankings give the same top K in the same order;
- engine_gflops: the engine's pair-specific FLOPs per query over its latency, next to
  matmul_gflops, this machine's fp32 matrix-product rate measured in the same run: as many
  FLOPs of the engine's main product shape, (640 x 256) x (256 x 128), on the same threads,
  in runs alternating with the engine's; matmul_peak_gflops is the best short burst (torch's
  own threading, that shape, a larger one and a square one);
- scan_dtype: what the exact scan multiplies in. A float32 cache is scanned with bfloat16
  products where the CPU has them natively and numba is installed (SearchEngine.fast_scan),
  then its top re-scored in float32: float32_scan_ms (and _vs_matmul) time the plain float32
  scan, alternating with the fast one;
- with a compact --cache-dtype (bfloat16, float16; search.cache) or a fast scan:
  same_topk_as_float32, how many of --compare-queries searches returned the plain float32
  engine's top K (rows and levels), and rescored_median/max, the items each re-scored
  exactly (search.rerank); same_topk then checks the float32 scoring against the naive run;
- rss_mb (now) and peak_rss_mb; build_s (computing the database side), and with --cli
  cli_cold_s: a fresh `soundsearch query --json` process end to end on this store, for a
  file the store does not hold (decoded and featurized: logmel here, which needs no torch;
  an aisfx store also imports torch and runs its network); cli_cold_indexed_s: the same for
  a file the store holds unchanged ("more like this": its stored items are the query, no
  featurizer, no torch). Both over --cli-repeat fresh processes, minimum and median;
  cli_cold_peak_rss_mb (and _indexed_): the largest peak resident set of those processes.

With --clustered the store's items cluster as a real library's takes do (clustered_items:
N/100 source templates, each item one source, 30% mixed with a second at 0.6, plus a per-item
level offset and per-step noise), and the queries are fresh draws of the same kind; the default
store is i.i.d. noise around per-file offsets, on which a prefilter means nothing.

With --prefilter the model records the shipped default model's ranking (blend, w = 0.75) and
the run adds, over the same queries, for the engine's presence predictor at each
--presence-candidates count (prefilter_<count>_*) and for the acoustic HNSW index at
--candidates (prefilter_acoustic_*; default: the engine's count for it): *_ms, warm
SearchEngine.search through the candidate prefilter (search.prefilter); *_recall_at_10, the
share of the exact engine's top 10 (search(exact=True)) that the prefiltered search returns,
over --recall-queries queries; prefilter_build_s and prefilter_index_mb, the HNSW index's first
build and its file, predictor_build_s and predictor_mb the same for the predictor's matrix.
*_fresh_median_ms and *_fresh_max_ms time --fresh-queries distinct queries one after another
in the warm process, with no exact scan between them (what a store larger than memory meets);
--query-seed draws those and the recall queries afresh. --skip-naive leaves out the naive run,
--skip-hnsw the acoustic HNSW comparison; --skip-exact with --recall-queries 0 leaves a
prefilter-only process (at 1M items the exact scans stream the whole cache through the page
cache, evicting what the prefilter reads), whose peak_rss_mb is then a query process's.

Timings are the minimum over --repeat runs (the median is printed too): on a small shared
machine the minimum is the figure least disturbed by other work. The *_cpu figures count the
CPU seconds the process actually received (all threads), which other processes' load does not
inflate: engine_vs_matmul_cpu compares the engine's FLOPs per CPU second with one core's fp32
matrix-product rate per CPU second, and speedup_cpu the work of naive and engine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from soundsearch.features import get_featurizer
from soundsearch.model.config import ModelConfig
from soundsearch.model.checkpoint import load_model, save_model
from soundsearch.model.network import LoadedModel, PresenceNet
from soundsearch.search.cache import CACHE_DTYPES
from soundsearch.search.engine import SearchEngine, rank
from soundsearch.store import FileEntry, Store
from soundsearch.taxonomy import Taxonomy

ITEMS_PER_FILE = 10
ITEM_SECONDS = 10.0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int) -> tuple[float, float, float, object]:
    """(best wall s, median wall s, best CPU s of this process over all its threads, result)."""
    times, cpu, result = [], [], None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), statistics.median(times), min(cpu), result


def matmul_like_engine(flops: float, workers: int):
    """A run of fp32 products of the engine's main shape totalling `flops`, spread over the
    same worker threads as the engine (torch single-threaded in each): the machine's matmul
    rate under the same conditions, load included."""
    from soundsearch.search.kernel import _run_chunks

    per = 2 * 640 * 256 * 128
    n = max(1, int(flops // per))
    tls = {}

    def chunk(start: int) -> None:
        import threading

        key = threading.get_ident()
        if key not in tls:
            tls[key] = (torch.randn(640, 256), torch.randn(256, 128), torch.empty(640, 128))
        a, b, c = tls[key]
        for _ in range(min(64, n - start)):
            torch.mm(a, b, out=c)

    def run() -> float:
        _run_chunks(chunk, range(0, n, 64), workers)
        return n * per

    return run


def matmul_cpu_gflops(repeat: int = 200) -> float:
    """One core's fp32 rate per CPU second on the engine's main shape (contention-proof)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b, c = torch.randn(640, 256), torch.randn(256, 128), torch.empty(640, 128)
        torch.mm(a, b, out=c)
        c0 = time.process_time()
        for _ in range(repeat):
            torch.mm(a, b, out=c)
        return 2 * 640 * 256 * 128 * repeat / (time.process_time() - c0) / 1e9
    finally:
        torch.set_num_threads(before)


def matmul_gflops(repeat: int = 30) -> float:
    """This machine's fp32 matrix-product rate now (best of the engine's shape and a square one)."""
    best = 0.0
    for m, k, n in ((1024, 256, 128), (4096, 256, 128), (1024, 1024, 1024)):
        a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=c)
        t, _, _, _ = timed(lambda: torch.mm(a, b, out=c), repeat)
        best = max(best, 2 * m * k * n / t / 1e9)
    return best


def make_model(path: Path, identity: str, spec: dict, dim: int, steps: int, seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    config = ModelConfig(steps=steps, dim=dim, n_categories=8)
    net = PresenceNet(config)
    # Random batch-norm statistics, so that folding them into the weights is really tested.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)
    net.eval()
    save_model(path, net, config, Taxonomy.default(), spec, identity,
               np.zeros(dim, np.float32), np.ones(dim, np.float32), {"seed": seed, "note": "random weights (bench)"})
    return load_model(path)


def clustered_items(dim: int, steps: int, n_items: int, seed: int):
    """draw(m) -> (m, steps, dim) items around n_items/100 source templates (see the docstring)."""
    rng = np.random.default_rng(seed)
    sources = max(20, n_items // 100)
    templates = np.random.default_rng(seed + 1000).normal(0, 1.5, (sources, 1, dim)) + np.random.default_rng(
        seed + 2000).normal(0, 1.0, (sources, steps, dim))

    def draw(m: int) -> np.ndarray:
        a, b = rng.integers(0, sources, m), rng.integers(0, sources, m)
        mix = (rng.random(m) < 0.3)[:, None, None] * 0.6
        x = templates[a] + mix * templates[b] + rng.normal(0, 0.4, (m, 1, dim)) + rng.normal(0, 0.5, (m, steps, dim))
        return x.astype(np.float32)

    return draw


def write_query_wav(path: Path) -> Path:
    """The query recording of the --cli figures: 3 s of an amplitude-modulated tone."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(3 * 22050)) / 22050
    sf.write(path, (0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 22050)
    return path


def indexed_query_path(store_dir: Path) -> Path:
    """The one real recording of the synthetic store (its last file), for cli_cold_indexed_s."""
    return store_dir.parent / "library" / "indexed-query.wav"


def _real_entry(path: Path, store: Store) -> FileEntry:
    """A FileEntry for a real file, featurized as `index` would (its size and mtime recorded)."""
    from soundsearch.features import featurize_file

    path = Path(os.path.realpath(path))
    ff = featurize_file(path, store.featurizer(), cutting=store.cutting)
    st = path.stat()
    return FileEntry(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, duration=ff.duration,
                     samplerate=ff.info.samplerate, channels=ff.info.channels, segments=list(ff.segments),
                     features=ff.features)


def make_store(path: Path, n_items: int, seed: int, clustered: bool = False) -> Store:
    fz = get_featurizer("logmel")
    store = Store.open(path, create=True, featurizer=fz, item_seconds=ITEM_SECONDS)
    rng = np.random.default_rng(seed)
    root = path.parent / "library"
    # One real, indexed recording among the synthetic items, the last file (one 3 s item):
    # what a "more like this" query of an indexed file finds in the store.
    real = _real_entry(write_query_wav(indexed_query_path(path)), store)
    synthetic = n_items - real.features.shape[0]
    draw = clustered_items(store.dim, store.steps, n_items, seed) if clustered else None
    with store.writer() as w:
        w.add_roots([root])
        batch: list[FileEntry] = []
        done, f = 0, 0
        while done < synthetic:
            n = min(ITEMS_PER_FILE, synthetic - done)
            # Each file gets its own level and texture, so items differ in more than noise.
            base = rng.normal(0, 1, (1, 1, store.dim)).astype(np.float32)
            feats = (base + rng.normal(0, 1, (n, store.steps, store.dim))).astype(np.float32)
            if draw is not None:
                feats = draw(n)
            segs = [(i * ITEM_SECONDS, (i + 1) * ITEM_SECONDS) for i in range(n)]
            batch.append(FileEntry(path=root / f"d{f // 1000:03d}" / f"rec{f:06d}.wav", size=1, mtime_ns=f,
                                   duration=n * ITEM_SECONDS, samplerate=22050, channels=1,
                                   segments=segs, features=feats))
            done += n
            f += 1
            if len(batch) == 500:
                w.write_files(batch)
                batch = []
        batch.append(real)
        w.write_files(batch)
    return store


def prefilter_figures(fig: dict, engine: SearchEngine, store: Store, query: np.ndarray, args) -> None:
    """prefilter_* figures (see the module docstring) into `fig`: the engine's predictor
    (presence: the predicted blend score over every item) at each --presence-candidates count,
    as prefilter_<count>_*, and the acoustic HNSW index at --candidates as prefilter_acoustic_*,
    over the same queries."""
    from soundsearch.search.prefilter import index_path, predictor_path

    if not args.skip_hnsw:
        t0 = time.perf_counter()
        engine.prefilter().index("acoustic")
        fig["prefilter_build_s"] = round(time.perf_counter() - t0, 2)
        fig["prefilter_built"] = "acoustic" in engine.prefilter().built
        path = index_path(engine.cache_path(), "acoustic")
        fig["prefilter_index_mb"] = round(path.stat().st_size / 2**20, 1) if path.is_file() else None
    t0 = time.perf_counter()
    engine.prefilter().predictor()
    fig["predictor_build_s"] = round(time.perf_counter() - t0, 2)
    path = predictor_path(engine.cache_path())
    fig["predictor_mb"] = round(path.stat().st_size / 2**20, 1) if path.is_file() else None
    counts = [int(c) for c in args.presence_candidates.split(",")] if args.presence_candidates else [None]
    configs = [] if args.skip_hnsw else [("acoustic", "acoustic", args.candidates)]
    configs += [("presence", str(c or "default"), c) for c in counts]
    for predictor, name, count in configs:
        engine.prefilter_predictor = predictor
        kw = {"candidates": count}
        engine.search(query, k=args.k, **kw)  # warm
        best, median, _, res = timed(lambda kw=kw: engine.search(query, k=args.k, **kw), args.repeat)
        key = f"prefilter_{predictor}" if predictor == "acoustic" else f"prefilter_{name}"
        fig[f"{key}_candidates"] = res.candidates
        fig[f"{key}_ms"] = round(best * 1e3, 1)
        fig[f"{key}_median_ms"] = round(median * 1e3, 1)
    qseed = args.seed if args.query_seed is None else args.query_seed
    # Warm process, fresh queries, no exact scan in between (an exact scan leaves the whole
    # cache in the page cache, which a store larger than memory does not have): each
    # prefiltered search reads its own candidates' rows.
    fresh_draw = clustered_items(store.dim, store.steps, args.items, qseed + 4) if args.clustered else None
    frng = np.random.default_rng(qseed + 4)
    fresh = [fresh_draw(1)[0] if fresh_draw is not None else
             (frng.normal(0, 1, (1, store.dim)) + frng.normal(0, 1, (store.steps, store.dim))).astype(np.float32)
             for _ in range(args.fresh_queries)]
    for predictor, name, count in configs:
        engine.prefilter_predictor = predictor
        key = f"prefilter_{predictor}" if predictor == "acoustic" else f"prefilter_{name}"
        took = []
        for q in fresh:
            t0 = time.perf_counter()
            engine.search(q, k=args.k, candidates=count)
            took.append(time.perf_counter() - t0)
        if took:
            fig[f"{key}_fresh_median_ms"] = round(statistics.median(took) * 1e3, 1)
            fig[f"{key}_fresh_max_ms"] = round(max(took) * 1e3, 1)
    draw = clustered_items(store.dim, store.steps, args.items, qseed + 2) if args.clustered else None
    rng = np.random.default_rng(qseed + 2)
    recall: dict[str, list[float]] = {}
    exact_t = []
    for _ in range(args.recall_queries):
        q = draw(1)[0] if draw is not None else (rng.normal(0, 1, (1, store.dim)) + rng.normal(0, 1, (store.steps, store.dim))).astype(np.float32)
        t0 = time.perf_counter()
        want = [r.item.row for r in engine.search(q, k=10, exact=True).results]
        exact_t.append(time.perf_counter() - t0)
        for predictor, name, count in configs:
            engine.prefilter_predictor = predictor
            key = f"prefilter_{predictor}" if predictor == "acoustic" else f"prefilter_{name}"
            got = [r.item.row for r in engine.search(q, k=10, candidates=count).results]
            recall.setdefault(key, []).append(len(set(want) & set(got)) / max(1, len(want)))
    engine.prefilter_predictor = "presence"
    for key, values in recall.items():
        fig[f"{key}_recall_at_10"] = round(float(np.mean(values)), 4)
        fig[f"{key}_recall_min"] = round(float(np.min(values)), 2)
    fig["prefilter_recall_queries"] = args.recall_queries
    if exact_t:
        fig["exact_median_ms_recall_queries"] = round(statistics.median(exact_t) * 1e3, 1)
    fig["rss_mb"] = round(rss_mb(), 1)


# `soundsearch ARGS` run as `python -c _PEAK_SHIM ARGS`, writing its own peak resident set
# (VmHWM, kB) to $BENCH_HWM_FILE at exit. Measured from inside because a child's ru_maxrss
# includes the resident set of the parent it was forked from (this benchmark's, GBs).
_PEAK_SHIM = """
import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_HWM_FILE"], "w") as out:
        out.write(kb)
atexit.register(_hwm)
sys.argv = ["soundsearch", *sys.argv[1:]]
runpy.run_module("soundsearch", run_name="__main__", alter_sys=True)
"""


def cli_figures(fig: dict, store: Store, store_dir: Path, model_path: Path, external: Path, args) -> None:
    """cli_cold_* figures (see the module docstring) into `fig`."""
    indexed = indexed_query_path(store_dir)
    runs = [("cli_cold", external)]
    if store.unchanged_items(indexed):
        runs.append(("cli_cold_indexed", indexed))
    else:  # a store made by an older version of this script (--dir), or the file was touched
        fig["cli_cold_indexed_note"] = f"{indexed} is not in the store unchanged: make the store again"
    for key, wav in runs:
        cmd = [sys.executable, "-m", "soundsearch", "query", str(wav), "--store", str(store_dir),
               "--model", str(model_path), "--json", "-k", str(args.k)]
        cold, cold_cpu = [], []
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = 0.0
        for _ in range(args.cli_repeat):
            with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as hwm:
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", _PEAK_SHIM, *cmd[3:]], stdout=subprocess.DEVNULL,
                                      stderr=err, env={**os.environ, "BENCH_HWM_FILE": hwm.name})
                cold.append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cold_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                before = after
                peak = max(peak, int(Path(hwm.name).read_text() or 0) / 1024)
                if proc.returncode != 0:
                    err.seek(0)
                    fig[f"{key}_error"] = err.read().decode(errors="replace").strip()[-500:]
                    break
        fig[f"{key}_peak_rss_mb"] = round(peak, 1)
        fig[f"{key}_s"] = round(min(cold), 2)
        fig[f"{key}_median_s"] = round(statistics.median(cold), 2)
        fig[f"{key}_runs_s"] = [round(c, 2) for c in cold]
        # CPU seconds of the whole process (all threads): on an idle 2-core machine the
        # wall time is about this minus half the engine's two-thread share.
        fig[f"{key}_cpu_s"] = round(min(cold_cpu), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--naive-repeat", type=int, default=2)
    ap.add_argument("--naive-items", type=int, default=None, help="time the naive run on this many items and scale (for 1M)")
    ap.add_argument("--cache-dtype", default="float32", choices=list(CACHE_DTYPES))
    ap.add_argument("--block-rows", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build store and model (kept); default: a temp dir, removed")
    ap.add_argument("--cli", action="store_true", help="also time cold `soundsearch query` processes")
    ap.add_argument("--cli-repeat", type=int, default=5, help="fresh processes per cold figure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clustered", action="store_true", help="items that cluster, as a real library's do (see above)")
    ap.add_argument("--prefilter", action="store_true", help="also time the candidate prefilter and its recall")
    ap.add_argument("--candidates", type=int, default=None, help="prefilter candidates (default: the engine's)")
    ap.add_argument("--presence-candidates", default=None,
                    help="comma-separated candidate counts for the presence predictor (default: the engine's)")
    ap.add_argument("--skip-naive", action="store_true", help="no naive run (prefilter studies)")
    ap.add_argument("--skip-exact", action="store_true", help="no exact-engine timing (with --recall-queries 0: a prefilter-only process, its speed and resident memory)")
    ap.add_argument("--skip-hnsw", action="store_true", help="no acoustic HNSW comparison (its build takes minutes at 1M)")
    ap.add_argument("--recall-queries", type=int, default=50)
    ap.add_argument("--fresh-queries", type=int, default=20, help="prefilter: distinct queries timed in a row (*_fresh_median_ms)")
    ap.add_argument("--query-seed", type=int, default=None, help="draw the prefilter's recall and fresh queries from this seed (default --seed): report on queries no choice saw")
    ap.add_argument("--compare-queries", type=int, default=20, help="compact cache: queries compared with float32 (0: none, and no float32 cache built: for 1M)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    work = args.dir or Path(tempfile.mkdtemp(prefix="ss-bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    fig: dict = {"items": args.items, "k": args.k, "threads": torch.get_num_threads(), "cache_dtype": args.cache_dtype}
    try:
        store_dir = work / f"store-{args.items}{'-clustered' if args.clustered else ''}"
        t0 = time.perf_counter()
        if (store_dir / "catalog.sqlite").exists():
            store = Store.open(store_dir)
        else:
            store = make_store(store_dir, args.items, args.seed, args.clustered)
        fig["store_build_s"] = round(time.perf_counter() - t0, 2)
        n = store.features().shape[0]
        assert n == args.items, (n, args.items)
        model_path = work / "bench-model.safetensors"
        if model_path.is_file():
            model = load_model(model_path)  # keeps a cache built by an earlier run valid
        else:
            model = make_model(model_path, store.featurizer_identity, store.featurizer_spec, store.dim, store.steps, args.seed)
        if args.prefilter and model.meta.get("ranking") is None:
            from soundsearch.search.ranking import set_ranking

            set_ranking(model_path, "blend", 0.75)  # the shipped default model's ranking
            model = load_model(model_path)
        kwargs = {"cache_dtype": args.cache_dtype}
        from soundsearch.search import fused

        fig["fused_kernel"] = fused.available()  # numba installed: the first pair step in one pass
        if args.block_rows:
            kwargs["block_rows"] = args.block_rows
        engine = SearchEngine(store, model, **kwargs)
        t0 = time.perf_counter()
        engine.prepare()
        fig["build_s"] = round(time.perf_counter() - t0, 2)
        fig["cache_built"] = engine.built_cache
        fig["cache_mb"] = round(engine._cache_path.stat().st_size / 2**20, 1) if engine._cache_path else None

        rng = np.random.default_rng(args.seed + 1)
        query = (rng.normal(0, 1, (1, 1, store.dim)) + rng.normal(0, 1, (store.steps, store.dim))).astype(np.float32)[0]
        query = query.reshape(store.steps, store.dim)
        if args.clustered:
            draw_queries = clustered_items(store.dim, store.steps, args.items, args.seed + 1)
            query = draw_queries(1)[0]

        if not args.skip_exact:  # a prefilter-only process: no exact scan fills the page cache
            engine.search(query, k=args.k, exact=True)  # warm: pages of the cache, allocator, kernels
            flops = engine.flops_per_query()
            mm_run = matmul_like_engine(flops, engine.workers)
            mm_run()
            fast = not engine.compact and engine.scan_dtype(fast=True) != "float32"
            fig["scan_dtype"] = engine.scan_dtype(fast=True)
            # Engine and matmul runs alternate, so both meet the same load on a shared machine;
            # a float32 cache's fast scan alternates with its plain float32 scan too.
            eng_t, eng_c, mm_t, plain_t = [], [], [], []
            res = None
            for _ in range(args.repeat):
                b, _, c, res = timed(lambda: engine.search(query, k=args.k, exact=True), 1)
                eng_t.append(b)
                eng_c.append(c)
                m, _, _, done = timed(mm_run, 1)
                mm_t.append(m)
                if fast:
                    engine.fast_scan = False
                    plain_t.append(timed(lambda: engine.search(query, k=args.k, exact=True), 1)[0])
                    engine.fast_scan = True
            best, median, cpu = min(eng_t), statistics.median(eng_t), min(eng_c)
            mm_same = done / min(mm_t) / 1e9
            mm_peak = matmul_gflops()
            mm_cpu = matmul_cpu_gflops()
            engine_top = [r.item.row for r in res.results]
            fig["engine_ms"] = round(best * 1e3, 1)
            fig["engine_median_ms"] = round(median * 1e3, 1)
            fig["engine_flops_per_query"] = flops
            fig["engine_gflops"] = round(flops / best / 1e9, 1)
            fig["matmul_gflops"] = round(mm_same, 1)
            fig["engine_vs_matmul"] = round(fig["engine_gflops"] / fig["matmul_gflops"], 3)
            fig["matmul_peak_gflops"] = round(mm_peak, 1)
            # The same ratio per CPU second actually received: what the figures would be on an
            # idle machine, since other processes' load stretches wall time but not CPU time.
            fig["engine_cpu_s"] = round(cpu, 3)
            fig["engine_gflops_per_cpu_s"] = round(flops / cpu / 1e9, 1)
            fig["matmul_gflops_per_cpu_s"] = round(mm_cpu, 1)
            fig["engine_vs_matmul_cpu"] = round(fig["engine_gflops_per_cpu_s"] / fig["matmul_gflops_per_cpu_s"], 3)
            if fast:
                fig["float32_scan_ms"] = round(min(plain_t) * 1e3, 1)
                fig["float32_scan_vs_matmul"] = round(flops / min(plain_t) / 1e9 / fig["matmul_gflops"], 3)
            fig["rss_mb"] = round(rss_mb(), 1)
        if (engine.compact or engine.scan_dtype(fast=True) != "float32") and args.compare_queries > 0:
            # The compact or fast scan's search against the plain float32 engine's (its cache
            # built here if missing, untimed), over fresh queries; and how many items it
            # re-scored exactly.
            f32 = SearchEngine(store, model)
            f32.fast_scan = False
            f32.prepare()
            agree, rescored = [], []
            qrng = np.random.default_rng(args.seed + 3)
            for i in range(args.compare_queries):
                qq = query if i == 0 else (qrng.normal(0, 1, (1, store.dim)) + qrng.normal(0, 1, (store.steps, store.dim))).astype(np.float32)
                got = [(r.item.row, r.level) for r in engine.search(qq, k=args.k, exact=True).results]
                rescored.append(engine.last_rescored)
                agree.append(got == [(r.item.row, r.level) for r in f32.search(qq, k=args.k, exact=True).results])
            fig["same_topk_as_float32"] = f"{sum(agree)}/{len(agree)}"
            fig["rescored_median"] = int(np.median(rescored))
            fig["rescored_max"] = int(np.max(rescored))
            del f32  # after rss_mb: its pages are not this engine's
        if args.prefilter:
            prefilter_figures(fig, engine, store, query, args)

        if not args.skip_naive:
            # --naive-items M: the naive run (minutes at a million items) covers the first M items
            # only; its time is scaled to all N, and the top-K comparison is made on those M.
            m_items = min(n, args.naive_items or n)
            feats = store.features()[:m_items]
            nbest, nmedian, ncpu, naive = timed(lambda: model.score_pairs(query, feats, batch=4096), args.naive_repeat)
            scale = n / m_items
            fig["naive_items"] = m_items
            fig["naive_ms"] = round(nbest * scale * 1e3, 1)
            fig["naive_median_ms"] = round(nmedian * scale * 1e3, 1)
            fig["naive_cpu_s"] = round(ncpu * scale, 3)
            fig["speedup"] = round(nbest * scale / best, 2)
            fig["speedup_cpu"] = round(ncpu * scale / cpu, 2)
            # Closeness for the naive ranking's last tie-break, from the towers directly (untimed).
            with torch.no_grad():
                pooled = []
                for s in range(0, m_items, 8192):
                    h = model.net.embed(torch.from_numpy(model.normalise(feats[s : s + 8192]))).mean(1)
                    pooled.append(torch.nn.functional.normalize(h, dim=1))
                qh = model.net.embed(torch.from_numpy(model.normalise(query[None]))).mean(1)
                close = (torch.cat(pooled) @ torch.nn.functional.normalize(qh, dim=1)[0]).numpy()
            naive_top = rank(naive.level, naive.expected, close, k=args.k).tolist()
            # (From a compact cache: its float32 re-scoring, what the search's top is made of.)
            full = engine.score_all(query, probs=True, rows=np.arange(m_items), recompute=engine.compact)
            # The naive side is ranked by presence: so is the engine's, whatever the model records.
            engine_top = rank(full.level[0], full.expected[0], full.closeness[0], k=args.k).tolist()
            fig["same_topk"] = engine_top == naive_top
            fig["max_abs_prob_diff"] = float(np.abs(full.probs[0] - naive.probs).max())
            fig["level_agreement"] = float((full.level[0] == naive.level).mean())
        fig["peak_rss_mb"] = round(peak_rss_mb(), 1)

        if args.cli:
            cli_figures(fig, store, store_dir, model.path, write_query_wav(work / "query.wav"), args)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(fig))
    else:
        for key, value in fig.items():
            print(f"{key:>24}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
