"""The candidate prefilter on real recordings: recall of the exact top 10 with the shipped model.

    .venv/bin/python bench/prefilter_real.py --dir build/prefilter-real [--json]

bench/query.py measures the prefilter at a million items, but on synthetic features and a
random-weight model. Here the library is made of the real recordings of ../shared/corpus,
indexed by `soundsearch index` with the default featurizer (aisfx) and searched with the
shipped default model (models/default.safetensors, blend ranking), in a sound designer's shape:

    scenes      --scenes 10 s scenes mixed by bench/quality.py's recipe B (unlike training's)
    one-shots   every event recording as it is (0.3-20 s), plus --takes variants of each
                (another gain, a trimmed start, +-3% speed, a little noise): several takes
                of one source, as libraries hold them

Queries are files the store does not hold: --queries fresh recipe-B scenes and as many fresh
takes of randomly chosen one-shots (--query-seed draws another set, for figures no choice saw). Per query, the exact search (every item scored) against
the prefiltered one (search.prefilter: the predicted blend score over every item, then the
model on the best `count`), for each --counts. Printed: recall_<count>, the share of the exact
top 10 the prefiltered search returns, mean over queries and worst query, per query kind.

The store is small next to bench/query.py's (a few thousand items: featurizing costs ~0.2 CPU
seconds per 10 s), so the counts are given as shares of it: at a million items the engine's
1,000 candidates are 0.1%; what this measures is whether the predictor orders real items as the
model does, at 1-10% of the store.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import CATS, recipe_b_scenes  # noqa: E402

from soundsearch.datasets import scenes as sc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def take(sig: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Another take of a one-shot: gain, trimmed start, +-3% speed, faint noise."""
    import soxr

    speed = rng.uniform(0.97, 1.03)
    out = soxr.resample(sig.astype(np.float32), sr, int(round(sr / speed))).astype(np.float32)
    trim = int(rng.uniform(0, 0.05) * out.size)
    out = out[trim:]
    peak = float(np.max(np.abs(out))) or 1e-9
    out = out * np.float32(10 ** (rng.uniform(-12, 0) / 20) / peak * 0.9)
    out += rng.normal(0, 10 ** (-60 / 20), out.size).astype(np.float32)
    return out


def write(path: Path, sig: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(sig, -1, 1), sr, subtype="PCM_16")


def make_audio(corpus: Path, root: Path, sr: int, args) -> dict[str, list[Path]]:
    sources = sc.read_manifest(corpus, CATS)
    audio = sc._AudioCache(sr)
    events = [s for s in sources if s.category != sc.BACKGROUND]
    rng = np.random.default_rng(args.seed)
    lib, queries = root / "library", root / f"queries-{args.query_seed}"
    kinds: dict[str, list[Path]] = {"scene": [], "one-shot": []}
    if not (lib / ".done").is_file():
        signals, _ = recipe_b_scenes(sources, args.scenes, args.seed, sr, audio)
        for i, sig in enumerate(signals):
            write(lib / "scenes" / f"scene-{i:05d}.wav", sig, sr)
        for s in events:
            sig = audio.get(s.path)
            stem = Path(s.file).stem
            write(lib / "shots" / f"{stem}.wav", sig, sr)
            for j in range(args.takes):
                write(lib / "shots" / f"{stem}-take{j + 1}.wav", take(sig, sr, rng), sr)
        (lib / ".done").write_text("")
    if not (queries / ".done").is_file():
        signals, _ = recipe_b_scenes(sources, args.queries, args.query_seed + 1, sr, audio)
        for i, sig in enumerate(signals):
            write(queries / f"scene-{i:03d}.wav", sig, sr)
        qrng = np.random.default_rng(args.query_seed + 2)
        for i, k in enumerate(qrng.choice(len(events), size=args.queries, replace=False)):
            s = events[int(k)]
            write(queries / f"shot-{i:03d}-{Path(s.file).stem}.wav", take(audio.get(s.path), sr, qrng), sr)
        (queries / ".done").write_text("")
    for p in sorted(queries.glob("*.wav")):
        kinds["scene" if p.name.startswith("scene-") else "one-shot"].append(p)
    return kinds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    ap.add_argument("--dir", type=Path, default=REPO / "build" / "prefilter-real")
    ap.add_argument("--model", type=Path, default=REPO / "models" / "default.safetensors")
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--takes", type=int, default=3)
    ap.add_argument("--queries", type=int, default=40, help="of each kind")
    ap.add_argument("--counts", default="0.01,0.03,0.1", help="candidates, as shares of the store")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--query-seed", type=int, default=None, help="draw the queries afresh (default --seed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.query_seed is None:
        args.query_seed = args.seed
    if not (args.corpus / "manifest.csv").is_file():
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 2

    from soundsearch.model.checkpoint import load_model
    from soundsearch.search.engine import SearchEngine
    from soundsearch.search.query import query_features
    from soundsearch.store import Store

    from soundsearch.features import featurizer_from_spec

    model = load_model(args.model)
    fz = featurizer_from_spec(model.featurizer_spec)
    fig: dict = {"featurizer": fz.name}
    t0 = time.perf_counter()
    kinds = make_audio(args.corpus, args.dir, fz.sample_rate, args)
    fig["audio_s"] = round(time.perf_counter() - t0, 1)
    store_dir = args.dir / "store"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "soundsearch", "index", str(args.dir / "library"), "--store", str(store_dir),
                    "--featurizer", fz.name, "--jobs", str(args.jobs), "--quiet"], check=True)
    fig["index_s"] = round(time.perf_counter() - t0, 1)
    store = Store.open(store_dir)
    engine = SearchEngine(store, model)
    engine.prepare()
    n = engine.n_items
    fig["items"] = n
    counts = [max(11, int(round(float(c) * n))) for c in args.counts.split(",")]
    fig["counts"] = counts
    recall: dict[str, dict[int, list[float]]] = {}
    for kind, paths in kinds.items():
        for path in paths:
            feats = query_features(store, path).feats
            want = [r.item.row for r in engine.search(feats, k=10, exact=True).results]
            for count in counts:
                got = [r.item.row for r in engine.search(feats, k=10, candidates=count).results]
                recall.setdefault(kind, {}).setdefault(count, []).append(len(set(want) & set(got)) / max(1, len(want)))
    for kind, per in recall.items():
        for count, values in per.items():
            fig[f"{kind}_recall_{count}"] = round(float(np.mean(values)), 3)
            fig[f"{kind}_recall_{count}_min"] = round(float(np.min(values)), 2)
            fig[f"{kind}_queries"] = len(values)
    store.close()
    if args.json:
        print(json.dumps(fig))
    else:
        for key, value in fig.items():
            print(f"{key:>28}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
