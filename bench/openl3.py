"""Benchmark the torch OpenL3 featurizer on this machine's CPU (or GPU when there is one).

    python bench/openl3.py [--windows 16] [--repeat 3] [--input-repr mel256 mel128] [--json]
    OPENL3_TF_PYTHON=/path/to/tf-venv/bin/python python bench/openl3.py   # + the reference

Prints, in one run, for each input representation:

- frames_per_s: 1 s analysis windows embedded per second (front-end + network, batch of
  --windows, inference mode, BN folded), i.e. seconds of audio per second at hop 1.0 s;
- conv_gflops: the eight convolutions' FLOPs (2 x multiply-adds) per window times frames_per_s,
  next to matmul_gflops, this machine's fp32 matrix-product rate measured by bench/query.py's
  matmul_gflops (best of three shapes, torch's own threads) in runs alternating with the
  network's, and their ratio (the front-end's FFTs are left out of the FLOPs, so the ratio
  understates the convolutions a little);
- with OPENL3_TF_PYTHON pointing at a Python that has openl3 0.4.2 and TensorFlow (see
  tests/data/openl3/make_goldens.py for that environment): the same windows through openl3's
  Keras model (its kapre front-end) with `model.predict`, and torch's speed-up over it.

Random weights: the speed of the network does not depend on their values. Timings are the
minimum over --repeat runs (the least disturbed figure on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from query import matmul_gflops  # noqa: E402

from soundsearch.features import openl3 as O  # noqa: E402
from soundsearch.features import openl3_weights as W  # noqa: E402


def random_weights(seed: int = 0) -> W.AudioWeights:
    rng = np.random.default_rng(seed)

    def bn(c: int) -> dict[str, np.ndarray]:
        return {
            "gamma": rng.uniform(0.5, 1.5, c).astype(np.float32), "beta": rng.normal(0, 0.2, c).astype(np.float32),
            "moving_mean": rng.normal(0, 0.3, c).astype(np.float32), "moving_variance": rng.uniform(0.3, 2, c).astype(np.float32),
        }

    convs = [
        {"kernel": rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype(np.float32), "bias": np.zeros(cout, np.float32)}
        for cin, cout in W.CONV_CHANNELS
    ]
    return W.AudioWeights(bn(1), convs, [bn(c) for _, c in W.CONV_CHANNELS[:-1]], [])


def bench_torch(input_repr: str, wins: np.ndarray, repeat: int) -> tuple[float, float]:
    """(best frames/s, best matmul GFLOP/s), the two measured in alternation so that both meet
    the same load on a shared machine."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    front = O.build_frontend(input_repr, O.DEFAULT_FRONTEND).to(device)
    net = O.build_network(random_weights(), input_repr, 512).to(device)
    chunk = O._CUDA_CHUNK if device.type == "cuda" else O._CPU_CHUNK
    x = torch.from_numpy(wins)

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, x.shape[0], chunk):
                net(front(x[i : i + chunk].to(device))).cpu()

    run()  # warm-up: allocator, oneDNN kernels
    best, mm = float("inf"), 0.0
    for _ in range(repeat):
        mm = max(mm, matmul_gflops(repeat=10))
        best = min(best, _time(run))
    return wins.shape[0] / best, mm


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


TF_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, tempfile, os, warnings
    import numpy as np
    warnings.simplefilter("ignore")
    from openl3 import models
    input_repr, n, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    bare = models.AUDIO_MODELS[input_repr](include_frontend=False)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, f"openl3_audio_{input_repr}_env.h5")
        bare.save_weights(p)  # its own random initialisation: speed does not depend on values
        m = models.load_audio_embedding_model_from_path(p, input_repr, 512, frontend="kapre")
    x = np.random.default_rng(0).standard_normal((n, 1, 48000)).astype(np.float32) * 0.1
    m.predict(x, batch_size=8, verbose=0)
    best = 1e9
    for _ in range(repeat):
        t0 = time.perf_counter(); m.predict(x, batch_size=8, verbose=0); best = min(best, time.perf_counter() - t0)
    print(json.dumps({"frames_per_s": n / best}))
    """
)


def bench_tf(python: str, input_repr: str, n: int, repeat: int) -> float | None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([python, "-c", TF_SCRIPT, input_repr, str(n), str(repeat)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"reference run failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["frames_per_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=16, help="1 s windows per timed run (default 16)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--input-repr", nargs="+", default=["mel256", "mel128"], choices=list(O.N_MELS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    wins = (np.random.default_rng(0).standard_normal((args.windows, O.WINDOW)) * 0.1).astype(np.float32)
    tf_python = os.environ.get("OPENL3_TF_PYTHON")
    result: dict = {
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "reprs": {},
    }
    for ir in args.input_repr:
        fps, mm = bench_torch(ir, wins, args.repeat)
        gflops = O.conv_flops(ir) * fps / 1e9
        row = {
            "matmul_gflops": round(mm, 1),
            "frames_per_s": round(fps, 2),
            "conv_gflop_per_frame": round(O.conv_flops(ir) / 1e9, 2),
            "conv_gflops": round(gflops, 1),
            "conv_vs_matmul": round(gflops / mm, 2),
        }
        if tf_python:
            tf_fps = bench_tf(tf_python, ir, args.windows, args.repeat)
            if tf_fps is not None:
                row["tf_frames_per_s"] = round(tf_fps, 2)
                row["speedup_vs_tf"] = round(fps / tf_fps, 2)
        result["reprs"][ir] = row
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"device {result['device']}; load average {result['load_avg_1min']}")
    for ir, row in result["reprs"].items():
        line = (
            f"{ir}: {row['frames_per_s']} frames/s (1 s windows), conv stack {row['conv_gflop_per_frame']} GFLOP/frame "
            f"-> {row['conv_gflops']} GFLOP/s = {row['conv_vs_matmul']:.0%} of matmul's {row['matmul_gflops']} (fp32, same run)"
        )
        if "tf_frames_per_s" in row:
            line += f"; openl3/TF {row['tf_frames_per_s']} frames/s -> torch x{row['speedup_vs_tf']}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
