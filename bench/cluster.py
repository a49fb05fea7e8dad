"""Benchmark: what indexing costs per file through `--backend dask`, to size a cluster.

Writes a library of --files recordings of --seconds each (44.1 kHz stereo 16-bit WAV, tones,
sweeps and gated noise), then indexes it twice with the same number of worker processes:
locally (loky, --jobs W) and through a dask cluster (a LocalCluster of W one-thread workers, or
--scheduler's). Both stores must come out byte-identical. Reported:

  local_s, dask_s            wall time of each run (local: workers' start and model loading
                             included; dask: workers started and their featurizer built before)
  worker_cpu_s_per_file      CPU seconds the dask workers spent per file (psutil, all workers)
  coordinator_cpu_s_per_file CPU seconds this process (scan, dispatch, store writes) spent per file
  items_per_file, store_bytes_per_file, feature_bytes_per_file, catalog_bytes_per_file
  per_million                the above scaled to 1,000,000 such files: worker core-hours, disk
                             bytes, and the coordinator's floor in hours (its CPU time alone)

Not a test: run it by hand, e.g.

    python bench/cluster.py --files 60 --workers 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import _base_signal  # noqa: E402  (the same synthetic material as bench/index.py)

SR, CHANNELS = 44100, 2


def make_library(root: Path, n_files: int, seconds: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    base = _base_signal(rng, SR, CHANNELS)
    n = int(seconds * SR)
    for i in range(n_files):
        start = int(rng.integers(0, base.shape[0] - n + 1))
        gain = float(rng.uniform(0.2, 1.5))
        path = root / f"d{i % 10}" / f"f{i:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.clip(base[start : start + n] * gain, -1, 1), SR, subtype="PCM_16")
    return n_files * seconds


def _cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def _contents(store_dir: Path):
    from soundsearch.store import Store

    with Store.open(store_dir) as st:
        return [it._key() for it in st.items()], np.ascontiguousarray(st.features()).tobytes(), st.stats()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of every file (default 10)")
    ap.add_argument("--workers", type=int, default=2, help="local --jobs, and one-thread dask workers (default 2)")
    ap.add_argument("--featurizer", default="aisfx")
    ap.add_argument("--scheduler", default=None, help="use this dask scheduler instead of a LocalCluster")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)

    import distributed

    from soundsearch.features import get_featurizer
    from soundsearch.indexing import index_paths
    from soundsearch.indexing.workers import _worker_featurizer

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="soundsearch-bench-cluster-"))
    cluster = None
    try:
        lib = tmp / "lib"
        audio_s = make_library(lib, args.files, args.seconds)
        log(f"{args.files} files of {args.seconds:g} s written to {lib}")

        t = time.perf_counter()
        index_paths(tmp / "local", [lib], featurizer_name=args.featurizer, jobs=args.workers)
        local_s = time.perf_counter() - t
        log(f"local (loky, --jobs {args.workers}): {local_s:.1f} s")

        if args.scheduler:
            address = args.scheduler
        else:
            cluster = distributed.LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
            )
            address = cluster.scheduler_address
        with distributed.Client(address, set_as_default=False) as client:
            fz = get_featurizer(args.featurizer)
            client.run(_worker_featurizer, fz.spec(), fz.identity)  # one-off costs, left out
            before = sum(client.run(_cpu_seconds).values())
            t, c = time.perf_counter(), time.process_time()
            index_paths(tmp / "dask", [lib], featurizer_name=args.featurizer, scheduler=address)
            dask_s, coord_cpu = time.perf_counter() - t, time.process_time() - c
            worker_cpu = sum(client.run(_cpu_seconds).values()) - before
        log(f"dask ({address}): {dask_s:.1f} s")

        local, remote = _contents(tmp / "local"), _contents(tmp / "dask")
        identical = local[0] == remote[0] and local[1] == remote[1]
        stats = remote[2]
        n = args.files
        feature_bytes = _folder_bytes(tmp / "dask" / "arrays", "*")
        catalog_bytes = _folder_bytes(tmp / "dask", "catalog.sqlite*")
        out = {
            "files": n,
            "seconds_per_file": args.seconds,
            "featurizer": args.featurizer,
            "workers": args.workers,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "audio_s": audio_s,
            "identical_to_local": identical,
            "local_s": round(local_s, 2),
            "dask_s": round(dask_s, 2),
            "worker_cpu_s_per_file": round(worker_cpu / n, 4),
            "coordinator_cpu_s_per_file": round(coord_cpu / n, 4),
            "items_per_file": stats.items / n,
            "store_bytes_per_file": round(stats.bytes_on_disk / n),
            "feature_bytes_per_file": round(feature_bytes / n),
            "catalog_bytes_per_file": round(catalog_bytes / n),
        }
        million = 1_000_000
        out["per_million"] = {
            "worker_core_hours": round(worker_cpu / n * million / 3600, 1),
            "coordinator_floor_hours": round(coord_cpu / n * million / 3600, 1),
            "store_bytes": stats.bytes_on_disk / n * million,
            "audio_bytes": _folder_bytes(lib, "*/*.wav") / n * million,
        }
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
