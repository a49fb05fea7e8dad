"""Benchmark: featurizing speed of logmel vs a plain librosa pipeline, and an unchanged re-index.

Generates a library of synthetic files (mixed lengths, sample rates, channel counts and
formats) in a temporary folder, then measures, on one core (jobs=1, BLAS limited to one thread):

  logmel_x_realtime_per_core   audio seconds per wall second: decode + mono + resample +
                               item split + logmel, through soundsearch.features.featurize_file
  librosa_x_realtime_per_core  the same files through librosa.load(sr=22050) +
                               librosa.feature.melspectrogram + librosa.power_to_db
  reindex_unchanged_s          wall time of soundsearch.indexing.index_paths on the library
                               a second time, when nothing changed (left out if unavailable)
  reindex_many_unchanged_s     with --reindex-files N: the same for N tiny files (the cost of
                               an unchanged re-index does not depend on audio length)
  aisfx_x_realtime_per_core    with --aisfx: the first --aisfx-files files through the aisfx
                               featurizer (torch on one thread), with aisfx_conv_gflops, the
                               conv stack's counted FLOPs over the time spent in it, beside
                               matmul_gflops, torch's fp32 matrix-product rate on one thread
                               measured in the same run (bench/query.py's measurement), and
                               aisfx_s_per_10s_item

Both pipelines read the same files from a warm page cache, are warmed up on a few files so
one-off import and JIT costs are not counted, and run interleaved file by file so a busy
machine slows both alike; CPU-time figures are printed beside the wall-time ones. Not a test: run it by hand,

    python bench/index.py --files 300
    python bench/index.py --json --reindex-files 10000
    python bench/index.py --files 8 --aisfx --skip-librosa --skip-reindex
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)
CHANNELS = (1, 1, 1, 2, 2, 2, 4, 6)
# (extension, format, subtype, share)
FORMATS = (
    ("wav", "WAV", "PCM_16", 0.55),
    ("flac", "FLAC", "PCM_16", 0.2),
    ("wav", "WAV", "PCM_24", 0.1),
    ("wav", "WAV", "FLOAT", 0.1),
    ("aiff", "AIFF", "PCM_16", 0.05),
)
MAX_SECONDS = 30.0
MIN_SECONDS = 0.5


def _base_signal(rng: np.random.Generator, sr: int, channels: int) -> np.ndarray:
    """30 s of tones, a chirp and gated noise; files are random slices of it (cheap to make)."""
    n = int(MAX_SECONDS * sr)
    t = np.arange(n, dtype=np.float64) / sr
    out = np.empty((n, channels), np.float32)
    for c in range(channels):
        f0 = rng.uniform(80, min(4000, sr / 4))
        tone = 0.2 * np.sin(2 * np.pi * f0 * t)
        sweep = 0.1 * np.sin(2 * np.pi * (50 * t + (sr / 5 - 50) * t**2 / (2 * MAX_SECONDS)))
        gate = (np.arange(n) // (sr // rng.integers(2, 9))) % 2
        noise = 0.1 * rng.standard_normal(n) * gate
        out[:, c] = (tone + sweep + noise).astype(np.float32)
    return out


def generate_library(root: Path, n_files: int, seed: int = 0) -> tuple[list[Path], float]:
    """Write the library (or reuse one this function wrote before with the same size and seed)."""
    manifest = root / ".bench-library.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("files") == n_files and m.get("seed") == seed and all((root / p).is_file() for p in m["paths"]):
            return [root / p for p in m["paths"]], float(m["audio_s"])
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    bases: dict[tuple[int, int], np.ndarray] = {}
    shares = np.array([f[3] for f in FORMATS])
    paths, total = [], 0.0
    for i in range(n_files):
        sr = int(rng.choice(RATES))
        ch = int(rng.choice(CHANNELS))
        seconds = float(rng.uniform(MIN_SECONDS, MAX_SECONDS))
        ext, fmt, subtype, _ = FORMATS[int(rng.choice(len(FORMATS), p=shares / shares.sum()))]
        key = (sr, ch)
        if key not in bases:
            bases[key] = _base_signal(rng, sr, ch)
        base = bases[key]
        n = max(1, int(seconds * sr))
        start = int(rng.integers(0, base.shape[0] - n + 1))
        gain = float(rng.uniform(0.2, 1.5))
        path = root / f"d{i % 20:02d}" / f"f{i:05d}_{sr}_{ch}ch.{ext}"
        path.parent.mkdir(exist_ok=True)
        sf.write(str(path), np.clip(base[start : start + n] * gain, -1, 1), sr, subtype=subtype, format=fmt)
        paths.append(path)
        total += n / sr
    rel = [str(p.relative_to(root)) for p in paths]
    manifest.write_text(json.dumps({"files": n_files, "seed": seed, "audio_s": total, "paths": rel}))
    return paths, total


def _warm_cache(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def _logmel_pipeline():
    from soundsearch.features import featurize_file, get_featurizer

    fz = get_featurizer("logmel")
    return lambda p: featurize_file(p, fz).duration


def _librosa_pipeline():
    import librosa

    def one(p: Path) -> float:
        y, sr = librosa.load(p, sr=22050, mono=True)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=4096, hop_length=2048, n_mels=128, power=2.0)
        librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
        return y.size / sr

    return one


def run_pipelines(paths: list[Path], pipelines: dict) -> dict[str, dict[str, float]]:
    """Time each pipeline over all files, interleaved file by file.

    Interleaving (and swapping which goes first on every file) means a machine shared with
    other work slows both pipelines alike, so their ratio stays fair; CPU time is reported
    beside wall time for the same reason.
    """
    names = list(pipelines)
    for name in names:
        for p in paths[:5]:
            pipelines[name](p)  # warm-up: lazy imports, JIT, first-call caches
    acc = {n: {"audio_s": 0.0, "wall_s": 0.0, "cpu_s": 0.0} for n in names}
    for i, p in enumerate(paths):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            w0, c0 = time.perf_counter(), time.process_time()
            secs = pipelines[name](p)
            acc[name]["wall_s"] += time.perf_counter() - w0
            acc[name]["cpu_s"] += time.process_time() - c0
            acc[name]["audio_s"] += secs
    return acc


def bench_reindex(lib: Path, store: Path) -> dict:
    try:
        from soundsearch.indexing import index_paths
    except ImportError as e:
        return {"reindex_unchanged_s": None, "reindex_note": f"soundsearch.indexing unavailable ({e})"}
    t0 = time.perf_counter()
    first = index_paths(store, [lib], jobs=1)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = index_paths(store, [lib], jobs=1)
    again_s = time.perf_counter() - t0
    return {
        "index_first_run_s": round(first_s, 3),
        "index_first_run_added": first.added,
        "index_first_run_failed": len(first.failed),
        "reindex_unchanged_s": round(again_s, 3),
        "reindex_unchanged_files": again.unchanged,
        "reindex_unchanged_added_or_updated": again.added + again.updated,
    }


def bench_reindex_many(root: Path, store: Path, n_files: int) -> dict:
    """Index n_files tiny files, then time the unchanged re-index: the cost of a large library
    that did not change is stat-ing and catalog look-ups, whatever the audio lengths."""
    try:
        from soundsearch.indexing import index_paths
    except ImportError as e:
        return {"reindex_many_note": f"soundsearch.indexing unavailable ({e})"}
    x = (0.1 * np.sin(2 * np.pi * 440 * np.arange(1600) / 8000)).astype(np.float32)
    for i in range(n_files):
        p = root / f"d{i // 500:03d}" / f"s{i:06d}.wav"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(p), x, 8000, subtype="PCM_16")
    t0 = time.perf_counter()
    index_paths(store, [root], jobs=1)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = index_paths(store, [root], jobs=1)
    return {
        "reindex_many_files": n_files,
        "reindex_many_first_run_s": round(first, 2),
        "reindex_many_unchanged_s": round(time.perf_counter() - t0, 3),
        "reindex_many_unchanged_files": again.unchanged,
    }


def bench_aisfx(paths: list[Path], n_files: int) -> dict:
    """aisfx on one core: real-time factor, and the conv stack's achieved rate next to matmul's.

    FLOPs are counted from the block shapes (AiSFX.conv_flops, checked against torch's
    FlopCounterMode on one block here); only time inside the network counts for the GFLOP/s.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from query import matmul_cpu_gflops, matmul_gflops  # bench/query.py, beside this file
    from soundsearch.errors import FeaturizerError
    from soundsearch.features import featurize_file, get_featurizer

    try:
        fz = get_featurizer("aisfx").for_indexing()
    except FeaturizerError as e:
        return {"aisfx_note": str(e)}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        block = np.random.default_rng(0).random((1, 100, 96), dtype=np.float32)
        with FlopCounterMode(display=False) as counter:
            fz.embed(block)
        conv_total = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
        net = {"flops": 0.0, "wall_s": 0.0}
        embed = fz.embed

        def timed_embed(blocks: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            out = embed(blocks)
            net["wall_s"] += time.perf_counter() - t0
            net["flops"] += fz.conv_flops(blocks.shape[1]) * blocks.shape[0]
            return out

        fz.embed = timed_embed  # type: ignore[method-assign]
        for p in paths[:2]:
            featurize_file(p, fz)  # warm-up: oneDNN kernel selection, first-call caches
        net["flops"] = net["wall_s"] = 0.0
        audio = wall = cpu = 0.0
        for p in paths[:n_files]:
            w0, c0 = time.perf_counter(), time.process_time()
            audio += featurize_file(p, fz).duration
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
        net_flops, net_wall = net["flops"], net["wall_s"]  # the files' share, before the item runs
        item = (0.1 * np.random.default_rng(1).standard_normal(10 * fz.sample_rate)).astype(np.float32)
        item_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fz(item)
            item_times.append(time.perf_counter() - t0)
        mm = matmul_gflops()
        mm_cpu = matmul_cpu_gflops()
    finally:
        torch.set_num_threads(before)
    return {
        "aisfx_files": min(n_files, len(paths)),
        "aisfx_audio_s": round(audio, 1),
        "aisfx_x_realtime_per_core": round(audio / wall, 2),
        "aisfx_x_realtime_per_cpu_second": round(audio / cpu, 2),
        "aisfx_s_per_10s_item": round(min(item_times), 3),
        "aisfx_gflop_per_block_counted": round(fz.conv_flops(100) / 1e9, 3),
        "aisfx_gflop_per_block_torch": round(conv_total / 1e9, 3),
        "aisfx_network_share": round(net_wall / wall, 3),
        "aisfx_conv_gflops": round(net_flops / net_wall / 1e9, 1),
        "matmul_gflops": round(mm, 1),
        "matmul_cpu_gflops": round(mm_cpu, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000, help="library size (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="generate the library here and keep it (reused when size and seed match)")
    ap.add_argument("--skip-librosa", action="store_true", help="leave out the librosa pipeline")
    ap.add_argument("--skip-reindex", action="store_true", help="leave out the index/re-index figures")
    ap.add_argument(
        "--reindex-files",
        type=int,
        default=0,
        help="also time an unchanged re-index of this many tiny files (e.g. 10000; off by default)",
    )
    ap.add_argument("--aisfx", action="store_true", help="also time the aisfx featurizer (needs its weights)")
    ap.add_argument("--aisfx-files", type=int, default=8, help="files featurized by aisfx (default 8; ~100x logmel's cost)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a dev extra; without it BLAS may use more than one core
        threadpool_limits = None

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="soundsearch-bench-") as tmp:
        lib = (args.dir or Path(tmp) / "library").absolute()
        log(f"generating {args.files} files in {lib} ...")
        t0 = time.perf_counter()
        paths, audio_s = generate_library(lib, args.files, args.seed)
        gen_s = time.perf_counter() - t0
        _warm_cache(paths)
        result: dict = {
            "files": len(paths),
            "audio_hours": round(audio_s / 3600, 3),
            "generate_s": round(gen_s, 1),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        limits = threadpool_limits(1) if threadpool_limits else None
        try:
            pipelines = {"logmel": _logmel_pipeline()}
            if not args.skip_librosa:
                try:
                    pipelines["librosa"] = _librosa_pipeline()
                except ImportError:
                    result["librosa_x_realtime_per_core"] = None
            log(f"featurizing with {' and '.join(pipelines)} on one core, interleaved ...")
            acc = run_pipelines(paths, pipelines)
            for name, a in acc.items():
                result[f"{name}_x_realtime_per_core"] = round(a["audio_s"] / a["wall_s"], 1)
                result[f"{name}_x_realtime_per_cpu_second"] = round(a["audio_s"] / a["cpu_s"], 1)
                result[f"{name}_wall_s"] = round(a["wall_s"], 2)
            if "librosa" in acc:
                result["speedup_vs_librosa"] = round(acc["librosa"]["wall_s"] / acc["logmel"]["wall_s"], 2)
                result["speedup_vs_librosa_cpu"] = round(acc["librosa"]["cpu_s"] / acc["logmel"]["cpu_s"], 2)
            if not args.skip_reindex:
                log("index, then unchanged re-index (jobs=1) ...")
                result.update(bench_reindex(lib, Path(tmp) / "store"))
            if args.aisfx:
                log(f"aisfx on one core, {args.aisfx_files} files ...")
                result.update(bench_aisfx(paths, args.aisfx_files))
            if args.reindex_files > 0:
                log(f"index and unchanged re-index of {args.reindex_files} tiny files (jobs=1) ...")
                result.update(bench_reindex_many(Path(tmp) / "many", Path(tmp) / "store-many", args.reindex_files))
        finally:
            if limits is not None:
                limits.unregister() if hasattr(limits, "unregister") else limits.__exit__(None, None, None)

    if args.json:
        print(json.dumps(result))
    else:
        print(f"library: {result['files']} files, {result['audio_hours']} h of audio (generated in {result['generate_s']} s)")
        for name in ("logmel", "librosa"):
            if result.get(f"{name}_x_realtime_per_core"):
                print(
                    f"{name + ':':9}{result[f'{name}_x_realtime_per_core']}x real time per core "
                    f"({result[f'{name}_wall_s']} s wall; {result[f'{name}_x_realtime_per_cpu_second']}x per CPU second)"
                )
        if result.get("speedup_vs_librosa"):
            print(
                f"ratio:   logmel is {result['speedup_vs_librosa']}x the librosa pipeline "
                f"({result['speedup_vs_librosa_cpu']}x by CPU time)"
            )
        if "reindex_unchanged_s" in result:
            if result["reindex_unchanged_s"] is None:
                print(f"re-index: not measured ({result.get('reindex_note')})")
            else:
                print(
                    f"index (first run, jobs=1): {result['index_first_run_s']} s; "
                    f"unchanged re-index of {result['reindex_unchanged_files']} files: {result['reindex_unchanged_s']} s"
                )
        if "aisfx_x_realtime_per_core" in result:
            print(
                f"aisfx:   {result['aisfx_x_realtime_per_core']}x real time per core "
                f"({result['aisfx_x_realtime_per_cpu_second']}x per CPU second; "
                f"{result['aisfx_s_per_10s_item']} s per 10 s item; network {100 * result['aisfx_network_share']:.0f}% of the time)"
            )
            print(
                f"         conv stack {result['aisfx_conv_gflops']} GFLOP/s on one thread vs matmul "
                f"{result['matmul_gflops']} GFLOP/s ({result['matmul_cpu_gflops']} per CPU second); "
                f"{result['aisfx_gflop_per_block_counted']} GFLOP per block counted, "
                f"{result['aisfx_gflop_per_block_torch']} by torch's counter"
            )
        elif "aisfx_note" in result:
            print(f"aisfx:   not measured ({result['aisfx_note']})")
        if "reindex_many_unchanged_s" in result:
            print(
                f"unchanged re-index of {result['reindex_many_files']} tiny files: "
                f"{result['reindex_many_unchanged_s']} s (first index {result['reindex_many_first_run_s']} s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
