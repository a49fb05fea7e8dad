"""Benchmark finding a moment inside long recordings: today's consecutive windows vs finer items.

    python bench/moments.py [--featurizer logmel|aisfx] [--recordings 6] [--minutes 3] [--json]

Builds long recordings (several minutes) from real ambiences of ../shared/corpus (category
`background`), inserts one-shots of every other category at known times and at several
event-to-background ratios, and indexes them, with other one-shots of the corpus as distractors,
into one temporary store per item cutting (audio.Cutting: item_hop, event_items). Queries are
the inserted sounds themselves and other recordings of the same sources (same category and
subtype in the manifest, a different file). A query is found at top-N when one of the first N
results is the right long recording with a time range overlapping the inserted event.

Reports per cutting: found@1 and found@5 (all queries, and by query kind and ratio), items,
feature-array bytes and query time per hour of long audio, and whether a byte-identical copy of
a long recording (outside the library) finds its original first. In-process (index_paths into
temporary stores, SearchEngine.search), a few minutes with logmel on two cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "corpus"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")

SR = 22050
RATIOS_DB = (6.0, 0.0, -6.0)  # event RMS over background RMS
BACKGROUND_DBFS = -30.0
MODELS = {"logmel": "logmel-scenes-v1", "aisfx": "default"}
# name: (item_hop, event_items, located); item_seconds is 10 throughout. `located`: whether the
# search also looks for the query's own sound inside long recordings (search.contains); without
# it, a result is found by its items alone, as before contains.py existed.
CUTTINGS = {
    "today: 10 s consecutive": (10.0, 0, False),
    "hop 5 s + 6 events/min": (5.0, 6, False),
    "10 s consecutive + located": (10.0, 0, True),
    "default: hop 5 s + 6 events/min + located": (5.0, 6, True),
}


def read(path: Path) -> np.ndarray:
    import soxr

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(1)
    return soxr.resample(x, sr, SR).astype(np.float32) if sr != SR else x


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)


def build(work: Path, n_rec: int, minutes: float, n_distract: int, seed: int) -> dict:
    rows = list(csv.DictReader(open(CORPUS / "manifest.csv")))
    rng = np.random.default_rng(seed)
    backgrounds = [r for r in rows if r["category"] == "background" and float(r["duration_s"]) >= 8]
    oneshots = [r for r in rows if r["category"] != "background" and 0.2 <= float(r["duration_s"]) <= 6]
    by_source: dict[tuple[str, str], list[dict]] = {}
    for r in oneshots:
        by_source.setdefault((r["category"], r["subtype"]), []).append(r)
    # Events: round-robin over categories, preferring sources with another take (a second query).
    cats = sorted({r["category"] for r in oneshots})
    pools = {c: [r for r in rng.permutation(np.array(oneshots, dtype=object)).tolist() if r["category"] == c] for c in cats}
    for c in cats:
        pools[c].sort(key=lambda r: -len(by_source[(r["category"], r["subtype"])]))
    per_rec = 5
    events_wanted = n_rec * per_rec
    chosen: list[dict] = []
    used: set[str] = set()
    while len(chosen) < events_wanted and any(pools.values()):
        for c in cats:
            if pools[c] and len(chosen) < events_wanted:
                r = pools[c].pop(0)
                if r["file"] not in used:
                    chosen.append(r)
                    used.add(r["file"])
    lib = work / "library"
    (lib / "long").mkdir(parents=True)
    (lib / "oneshots").mkdir(parents=True)
    length = int(minutes * 60 * SR)
    events = []
    for i in range(n_rec):
        parts, n = [], 0
        while n < length:
            b = read(CORPUS / backgrounds[int(rng.integers(len(backgrounds)))]["file"])
            b *= 10 ** (BACKGROUND_DBFS / 20) / rms(b)
            parts.append(b)
            n += b.size
        bg = np.concatenate(parts)[:length]
        x = bg.copy()
        mine = chosen[i * per_rec : (i + 1) * per_rec]
        slots = np.sort(rng.choice(np.arange(10, int(minutes * 60) - 15, 20), size=len(mine), replace=False))
        for j, (r, t0) in enumerate(zip(mine, slots)):
            t = float(t0 + rng.uniform(0, 9))
            e = read(CORPUS / r["file"])
            ratio = RATIOS_DB[(i * per_rec + j) % len(RATIOS_DB)]
            a = int(t * SR)
            seg = bg[a : a + e.size]
            e = e[: seg.size] * (rms(seg) * 10 ** (ratio / 20) / rms(e[: seg.size]))
            x[a : a + e.size] += e
            events.append({"rec": i, "start": t, "end": t + e.size / SR, "ratio": ratio, "row": r})
        peak = float(np.abs(x).max())
        if peak > 0.99:
            x *= 0.99 / peak
        sf.write(str(lib / "long" / f"session-{i:02d}.wav"), x, SR, subtype="PCM_16")
    # Queries: the inserted sound itself, and another take of the same source when there is one.
    queries = []
    for ev in events:
        r = ev["row"]
        queries.append({"kind": "inserted", "file": CORPUS / r["file"], **ev})
        others = [o for o in by_source[(r["category"], r["subtype"])] if o["file"] not in used]
        if others:
            o = others[0]
            used.add(o["file"])
            queries.append({"kind": "other take", "file": CORPUS / o["file"], **ev})
    rest = [r for r in oneshots if r["file"] not in used]
    for r in rng.permutation(np.array(rest, dtype=object)).tolist()[:n_distract]:
        shutil.copy(CORPUS / r["file"], lib / "oneshots" / Path(r["file"]).name)
    return {"lib": lib, "events": events, "queries": queries, "long_hours": n_rec * minutes / 60}


def run_cutting(name: str, hop: float, ev: int, located: bool, data: dict, work: Path, featurizer: str, jobs: int) -> dict:
    from soundsearch.indexing import index_paths
    from soundsearch.model.checkpoint import load_model
    from soundsearch.model.registry import resolve_model
    from soundsearch.search.engine import SearchEngine
    from soundsearch.store import Store

    store_dir = work / f"store-{hop:g}-{ev}"
    t0 = time.perf_counter()
    # A second cutting with the same items reuses the store: index_paths finds nothing to do.
    index_paths(store_dir, [data["lib"]], featurizer_name=featurizer, jobs=jobs, item_seconds=10.0, item_hop=hop, event_items=ev)
    index_s = time.perf_counter() - t0
    long_dir = str(data["lib"] / "long")
    with Store.open(store_dir) as st:
        items = st.items()
        long_items = [it for it in items if str(it.path).startswith(long_dir)]
        row_bytes = int(np.prod(st.features().shape[1:])) * 4
        engine = SearchEngine(st, load_model(resolve_model(MODELS[featurizer])), persist=False).prepare()
        if not located:
            engine.locate = lambda *_: None  # items only: how search worked before contains.py
        found1, found5, times, per, wrong_claims = [], [], [], [], []
        for q in data["queries"]:
            t1 = time.perf_counter()
            res = engine.search(q["file"], k=5)
            times.append(time.perf_counter() - t1)
            target = data["lib"] / "long" / f"session-{q['rec']:02d}.wav"
            # A result's moment is where the query's sound was located inside it when it was
            # (search.contains), else the item's own range.
            hits = [
                r.rank for r in res.results
                if r.item.path.name == target.name and r.moment[0] < q["end"] and r.moment[1] > q["start"]
            ]
            wrong_claims.append(sum(
                1 for r in res.results
                if r.contains is not None and not (r.item.path.name == target.name and r.located[0] < q["end"] and r.located[1] > q["start"])
            ))
            found1.append(bool(hits and hits[0] == 1))
            found5.append(bool(hits))
            per.append((q["kind"], q["ratio"], q["row"]["category"], found1[-1], found5[-1]))
        copy = work / "outside" / "copy-of-session-00.wav"
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(data["lib"] / "long" / "session-00.wav", copy)
        res = engine.search(copy, k=5)
        copy_rank = next((r.rank for r in res.results if r.item.path.name == "session-00.wav"), None)
        from soundsearch.search.prints import PRINTS_DIR, warm

        warm(st)
        print_bytes = sum(f.stat().st_size for f in (store_dir / PRINTS_DIR).glob("*.npy"))
    hours = data["long_hours"]

    def frac(sel):
        sel = list(sel)
        return round(sum(sel) / len(sel), 3) if sel else None

    return {
        "cutting": name,
        "item_hop": hop,
        "event_items": ev,
        "found@1": frac(found1),
        "found@5": frac(found5),
        "by_kind": {k: {"found@1": frac(p[3] for p in per if p[0] == k), "found@5": frac(p[4] for p in per if p[0] == k)}
                    for k in ("inserted", "other take")},
        "by_ratio_db": {f"{r:+g}": frac(p[4] for p in per if p[1] == r) for r in RATIOS_DB},
        "by_category@5": {c: frac(p[4] for p in per if p[2] == c) for c in sorted({p[2] for p in per})},
        "found5": found5,
        "items_per_hour": round(len(long_items) / hours),
        "feature_mb_per_hour": round(len(long_items) * row_bytes / hours / 2**20, 1),
        "query_ms_median": round(1000 * statistics.median(times), 1),
        # Results that claim to hold the query's sound (Result.contains) at a place that is not
        # the inserted event: how often the claim is wrong.
        "queries_with_a_wrong_claim": frac(w > 0 for w in wrong_claims),
        "print_mb_per_hour": round(print_bytes / hours / 2**20, 1),
        "store_items": len(items),
        "index_s": round(index_s, 1),
        "copy_finds_original_at": copy_rank,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--featurizer", choices=sorted(MODELS), default="logmel")
    ap.add_argument("--recordings", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--distractors", type=int, default=80)
    ap.add_argument("--cuttings", default=";".join(CUTTINGS), help="semicolon-separated names of CUTTINGS")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--contains-score", type=float, help="override search.contains.CONTAINS_SCORE (choosing it on a validation draw)")
    args = ap.parse_args()
    if not (CORPUS / "manifest.csv").is_file():
        sys.exit(f"corpus not found at {CORPUS}")
    if args.contains_score is not None:
        import soundsearch.search.contains as contains

        contains.CONTAINS_SCORE = args.contains_score
    work = Path(tempfile.mkdtemp(prefix="bench-moments-"))
    try:
        data = build(work, args.recordings, args.minutes, args.distractors, args.seed)
        out = []
        for name in args.cuttings.split(";"):
            hop, ev, located = CUTTINGS[name]
            out.append(run_cutting(name, hop, ev, located, data, work, args.featurizer, args.jobs))
            if not args.json:
                r = out[-1]
                print(f"{name:28s} found@1 {r['found@1']:.3f}  found@5 {r['found@5']:.3f}  "
                      f"{r['items_per_hour']} items/h  {r['feature_mb_per_hour']} MB/h  "
                      f"query {r['query_ms_median']} ms  wrong claims {r['queries_with_a_wrong_claim']}  "
                      f"copy→original at {r['copy_finds_original_at']}", flush=True)
        base = out[0]["found5"]
        for r in out[1:]:
            missed = [i for i, f in enumerate(base) if not f]
            r["found@5_where_today_misses"] = round(sum(r["found5"][i] for i in missed) / len(missed), 3) if missed else None
        summary = {
            "featurizer": args.featurizer,
            "model": MODELS[args.featurizer],
            "recordings": args.recordings,
            "minutes_each": args.minutes,
            "events": len(data["events"]),
            "queries": len(data["queries"]),
            "distractor_files": args.distractors,
            "results": [{k: v for k, v in r.items() if k != "found5"} for r in out],
        }
        print(json.dumps(summary, indent=None if args.json else 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
