"""The quality protocol of the default model: chosen on validation data, reported on data the
choice never saw, over several draws, beside the strongest simple baselines.

    .venv/bin/python bench/quality.py --featurizer aisfx --draws 0,1,2 --json out.json

Per draw (a seed), the corpus recordings (../shared/corpus) are split by recording, per
category, into three disjoint parts:

    train (~55%)   the model learns from them: 10 s scenes mixed by datasets/scenes.py
                   ("recipe A"), the recordings themselves as one-shots, and one-shots laid
                   over a quiet background bed
    val   (~15%)   everything chosen (the blend weight, the recipe, the epochs) is chosen here:
                   recipe-A scenes and one-shots, leave-one-out retrieval among them
    test  (~30%)   reported only; never looked at while choosing. Three settings:
       library        library scenes and query scenes mixed from the same test recordings
                      (the library holds other takes and cuts of the query's sources)
       generalisation test recordings split in halves: library scenes from one half, query
                      scenes from the other (the query's sources are not in the library)
       one-shots      the test recordings as they are: half the library, half the queries
                      (single-label exact matches: mAP_C@10)
    Test scenes are mixed by "recipe B" (below), a different mixing recipe from training:
    other event counts and event-to-background ratios, two background beds, repeated events,
    peak-based gains and a random overall loudness.

Systems: random (exact expectation), cosine on the steps' mean+std+max (eval's baseline),
cosine on whole-item statistics (mean, std, max over all frames, standardised on the library:
the strongest simple baseline), the model ranked by its predicted presence (level, then
expected agreement), and the model with acoustic closeness blended in at the weight fitted on
val. Figures are mAP_s@10, s = C (exact) and C-1, for single- and multi-label queries.

Features are cached under --cache (keyed by featurizer identity, draw and set), so trying
another training recipe costs only the training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundsearch import metrics  # noqa: E402
from soundsearch.datasets import scenes as sc  # noqa: E402
from soundsearch.features import get_featurizer  # noqa: E402
from soundsearch.search.blend_weight import fit_ranking_weight  # noqa: E402
from soundsearch.search.ranking import ranking_entry  # noqa: E402
from soundsearch.taxonomy import Taxonomy  # noqa: E402

CATS = tuple(Taxonomy.default().categories)
C = len(CATS)
K = 10
ITEM_SECONDS = 10.0
CELLS = (("single", C), ("single", C - 1), ("multi", C), ("multi", C - 1))


# ----------------------------------------------------------------------------- data


def split3(sources, seed: int):
    """train / val / test recordings, per category (backgrounds too), disjoint."""
    first = sc.split_sources(sources, 0.45, seed)  # test here = val + test
    second = sc.split_sources(first["test"], 0.67, seed + 1000)
    return {"train": first["train"], "val": second["train"], "test": second["test"]}


def halves(sources, seed: int):
    h = sc.split_sources(sources, 0.5, seed + 2000)
    return h["train"], h["test"]


def labels_of(src) -> np.ndarray:
    y = np.zeros(C, np.uint8)
    for lab in src.labels:
        y[CATS.index(lab)] = 1
    return y


def recipe_a_scenes(sources, n: int, seed: int, sr: int, cache, split: str = "train"):
    recipe = sc.SceneRecipe(n_train=n, n_test=0, seed=seed, sample_rate=sr)
    maker = sc.SceneMaker(recipe, split, sources, CATS, cache)
    out = [maker.make(i) for i in range(n)]
    return [s.signal for s in out], np.stack([s.labels for s in out])


def recipe_b_scenes(sources, n: int, seed: int, sr: int, cache):
    """Recipe B: deliberately unlike recipe A (datasets/scenes.py) in every mixing choice."""
    rng = np.random.default_rng([seed, 77])
    length = int(ITEM_SECONDS * sr)
    bgs = [s for s in sources if s.category == sc.BACKGROUND]
    by_cat: dict[str, list] = {}
    for s in sources:
        if s.category != sc.BACKGROUND:
            by_cat.setdefault(s.category, []).append(s)
    cats = sorted(by_cat)
    signals, labels = [], []
    for _ in range(n):
        # Two beds of different ambiences, one much quieter; uniform over categories.
        bed = np.zeros(length, np.float32)
        for level_db in (rng.uniform(-45, -20), rng.uniform(-60, -40)):
            bg = cache.get(bgs[int(rng.integers(len(bgs)))].path)
            part = sc._bed(bg, length, rng, xfade=int(0.02 * sr))
            rms = sc._rms_db(part)
            if rms > -200:
                part = part * np.float32(10 ** ((level_db - rms) / 20))
            bed += part
        n_ev = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.35, 0.2, 0.1]))
        chosen = rng.choice(len(cats), size=min(n_ev, len(cats)), replace=False)
        y = np.zeros(C, np.uint8)
        bed_peak = float(np.max(np.abs(bed))) or 1e-4
        for ci in chosen:
            src = by_cat[cats[int(ci)]][int(rng.integers(len(by_cat[cats[int(ci)]])))]
            sig = cache.get(src.path)
            # The same event may sound once or twice (a dog barks again), at a peak-based gain.
            for _rep in range(1 + int(rng.random() < 0.3)):
                take = min(sig.size, int(rng.uniform(0.3, 1.0) * length))
                off = int(rng.integers(0, sig.size - take + 1))
                ev = sc._fade(sig[off : off + take].copy(), int(0.005 * sr))
                peak = float(np.max(np.abs(ev))) or 1e-9
                gain = bed_peak * 10 ** (rng.uniform(-3, 15) / 20) / peak
                on = int(rng.integers(0, length - take + 1))
                bed[on : on + take] += ev * np.float32(gain)
            for lab in src.labels:
                y[CATS.index(lab)] = 1
        peak = float(np.max(np.abs(bed)))
        target = 10 ** (rng.uniform(-20, -1) / 20)  # overall loudness varies, as libraries do
        bed *= np.float32(target / max(peak, 1e-9))
        signals.append(bed)
        labels.append(y)
    return signals, np.stack(labels)


def one_shots(sources, sr: int, cache, events_only: bool = False):
    sig, lab = [], []
    for s in sorted(sources, key=lambda s: s.file):
        if events_only and s.category == sc.BACKGROUND:
            continue
        sig.append(cache.get(s.path)[: int(ITEM_SECONDS * sr)])
        lab.append(labels_of(s))
    return sig, np.stack(lab)


def one_shots_on_beds(sources, sr: int, cache, seed: int):
    """Each event recording laid once over a quiet bed of a random background."""
    rng = np.random.default_rng([seed, 91])
    bgs = [s for s in sources if s.category == sc.BACKGROUND]
    sig, lab = [], []
    for s in sorted(sources, key=lambda s: s.file):
        if s.category == sc.BACKGROUND:
            continue
        ev = cache.get(s.path)[: int(ITEM_SECONDS * sr)]
        bed = sc._bed(cache.get(bgs[int(rng.integers(len(bgs)))].path), ev.size, rng, int(0.02 * sr))
        rms_ev, rms_bed = sc._active_rms_db(ev), sc._rms_db(bed)
        if rms_bed > -200 and rms_ev > -200:
            bed = bed * np.float32(10 ** ((rms_ev - rng.uniform(10, 30) - rms_bed) / 20))
        sig.append((ev + bed).astype(np.float32))
        lab.append(labels_of(s))
    return sig, np.stack(lab)


# ----------------------------------------------------------------------------- features


def featurize(fz, signals, key: str, cache_dir: Path) -> np.ndarray:
    path = cache_dir / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    out = []
    for i in range(0, len(signals), 8):
        out.append(fz.batch(signals[i : i + 8]))
    arr = np.concatenate(out).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


SIZED = {"train_scenes": "train", "val_scenes": "val", "lib_db": "lib_db", "lib_q": "lib_q",
         "gen_db": "gen_db", "gen_q": "gen_q"}


@dataclass
class Draw:
    seed: int
    sets: dict  # name -> (feats, labels)


def build_draw(fz, corpus: Path, seed: int, sizes: dict, cache_dir: Path) -> Draw:
    sources = sc.read_manifest(corpus, CATS)
    parts = split3(sources, seed)
    sr = fz.sample_rate
    audio = sc._AudioCache(sr)
    fid = hashlib.sha256(fz.identity.encode()).hexdigest()[:12]
    base = cache_dir / fid / f"draw{seed}"
    sets = {}

    def add(name, make):
        # Scene sets are stored under their size too, so a run asking for more scenes never
        # reads a smaller cached set.
        key = f"{name}-{sizes[SIZED[name]]}" if name in SIZED else name
        lab_path = base / f"{key}.labels.npy"
        if lab_path.is_file() and (base / f"{key}.npy").is_file():
            sets[name] = (np.load(base / f"{key}.npy"), np.load(lab_path))
            return
        signals, labels = make()
        feats = featurize(fz, signals, key, base)
        np.save(lab_path, labels)
        sets[name] = (feats, labels)

    tr, va, te = parts["train"], parts["val"], parts["test"]
    h1, h2 = halves(te, seed)
    add("train_scenes", lambda: recipe_a_scenes(tr, sizes["train"], seed, sr, audio))
    add("train_shots", lambda: one_shots(tr, sr, audio, events_only=True))
    add("train_beds", lambda: one_shots_on_beds(tr, sr, audio, seed))
    add("val_scenes", lambda: recipe_a_scenes(va, sizes["val"], seed + 1, sr, audio))
    add("val_shots", lambda: one_shots(va, sr, audio))
    add("lib_db", lambda: recipe_b_scenes(te, sizes["lib_db"], seed + 10, sr, audio))
    add("lib_q", lambda: recipe_b_scenes(te, sizes["lib_q"], seed + 11, sr, audio))
    add("gen_db", lambda: recipe_b_scenes(h1, sizes["gen_db"], seed + 12, sr, audio))
    add("gen_q", lambda: recipe_b_scenes(h2, sizes["gen_q"], seed + 13, sr, audio))
    add("shot_db", lambda: one_shots(h1, sr, audio))
    add("shot_q", lambda: one_shots(h2, sr, audio, events_only=True))
    return Draw(seed, sets)


# ----------------------------------------------------------------------------- systems


def step_cosine(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    from soundsearch.evaluate import cosine_scores, feature_norm, pooled

    mean, std = feature_norm(d)
    stats = ("mean", "std", "max")
    return cosine_scores(pooled(q, mean, std, stats), pooled(d, mean, std, stats))


def order_of(score: np.ndarray) -> np.ndarray:
    return np.argsort(-score.astype(np.float64), axis=1, kind="stable")[:, :K]


def cells(agree: np.ndarray, order: np.ndarray | None, qlab: np.ndarray, groups=("single", "multi")) -> dict:
    """mAP@K per cell (query group x threshold) of a ranking; order None: the exact random one."""
    n = qlab.sum(1)
    out = {}
    for g, s in CELLS:
        idx = np.flatnonzero(n == 1) if g == "single" else np.flatnonzero(n >= 2)
        if g not in groups or not len(idx):
            continue
        if order is None:
            ap = metrics.random_ap(agree[idx], s, (K,))
        else:
            ap = metrics.ap_at_k(agree[idx], order[idx], s, (K,))
        out[f"{g} s={s}"] = float(metrics.mean_ap(ap)[0])
    return out


def evaluate_setting(fz, model, qf, ql, df, dl, groups=("single", "multi")):
    """Every system on one query set against one library, ranked as the product ranks:
    the library is the store (its acoustic standardisation), queries come from outside it."""
    from soundsearch.evaluate import item_stats_scores
    from soundsearch.search.ranking import Ranking, RankingMode, order_items, recorded_ranking
    from soundsearch.search.blend_weight import MemoryStore
    from soundsearch.search.engine import SearchEngine

    agree = metrics.agreement(ql, dl).astype(np.int64)
    res = {"random": cells(agree, None, ql, groups)}
    res["cosine (steps mean+std+max)"] = cells(agree, order_of(step_cosine(qf, df)), ql, groups)
    res["cosine (whole-item stats)"] = cells(agree, order_of(item_stats_scores(fz, qf, df)), ql, groups)
    if model is not None:
        engine = SearchEngine(MemoryStore(df, fz), model, persist=False)
        sc_ = engine.score_all(qf)
        rankings = {"model (presence)": Ranking(RankingMode.PRESENCE)}
        recorded = recorded_ranking(model)
        if recorded.mode is not RankingMode.PRESENCE:
            rankings[f"model ({recorded.mode.value})"] = recorded
        for name, ranking in rankings.items():
            order = np.stack([
                order_items(ranking, sc_.level[q], sc_.expected[q], sc_.closeness[q], sc_.acoustic[q], C, k=K).order
                for q in range(len(qf))
            ])
            res[name] = cells(agree, order, ql, groups)
    return res


def one_shot_tags(model, feats: np.ndarray, labels: np.ndarray) -> dict:
    """What the model says a held-out one-shot contains (its pair with itself, both vs neither
    renormalised, as `query` shows for the query's own row): per category, how many one-shots
    hold it, the share of those it finds (recall) and the share of the others it claims (false
    alarms). The brief's failure case: every short dry one-shot read as "engine"."""
    s = model.score_pairs(feats, feats)
    p = s.probs[..., 0] / np.maximum(s.probs[..., 0] + s.probs[..., 1], 1e-12)
    said = p > 0.5
    out = {}
    for ci, cat in enumerate(CATS):
        has = labels[:, ci] == 1
        out[cat] = {
            "n": int(has.sum()),
            "recall": float(said[has, ci].mean()) if has.any() else None,
            "false_alarm": float(said[~has, ci].mean()) if (~has).any() else None,
        }
    return out


def state_recall(model, feats: np.ndarray, labels: np.ndarray, pairs: int = 3000, seed: int = 0) -> dict:
    """On random validation pairs, how often each true presence state (both, neither, differs)
    is the one the model predicts: the glyphs and levels `query` shows come from these, so a
    model that ranks well but never says "both" would mislead a user."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(feats), pairs), rng.integers(0, len(feats), pairs)
    predicted = model.score_pairs(feats[a], feats[b]).probs.argmax(-1)
    ta, tb = labels[a].astype(bool), labels[b].astype(bool)
    truth = np.where(ta & tb, 0, np.where(~ta & ~tb, 1, 2))
    out = {name: float((predicted[truth == k] == k).mean()) for k, name in enumerate(("both", "neither", "differs"))}
    out["accuracy"] = float((predicted == truth).mean())
    out["majority"] = float(max((truth == k).mean() for k in range(3)))
    return out


def train_model(fz, draw: Draw, recipe: dict, seed: int):
    from soundsearch.training.fit import fit
    from soundsearch.training.config import TrainConfig

    parts = [draw.sets[n] for n in ("train_scenes", "train_shots", "train_beds")]
    feats = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    vf = np.concatenate([draw.sets["val_scenes"][0], draw.sets["val_shots"][0]])
    vl = np.concatenate([draw.sets["val_scenes"][1], draw.sets["val_shots"][1]])
    cfg = TrainConfig(**{**recipe, "seed": seed})
    res = fit(feats, labels, Taxonomy.default(), fz.spec(), fz.identity, cfg, val_feats=vf, val_labels=vl)
    return res.model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    ap.add_argument("--featurizer", default="logmel")
    ap.add_argument("--param", action="append", default=[], help="featurizer parameter k=v")
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--recipe", default="{}", help="TrainConfig fields as JSON")
    ap.add_argument("--no-model", action="store_true", help="baselines only")
    ap.add_argument("--train", type=int, default=600, help="recipe-A training scenes per draw")
    ap.add_argument("--cache", type=Path, default=Path("build/quality-cache"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path, help="write the summary table as markdown here")
    ap.add_argument("--save-model", type=Path, help="save draw 0's model (with its fitted weight) here")
    args = ap.parse_args(argv)

    params = dict(p.split("=", 1) for p in args.param)
    fz = get_featurizer(args.featurizer, **params)
    sizes = {"train": args.train, "val": 200, "lib_db": 300, "lib_q": 100, "gen_db": 250, "gen_q": 100}
    recipe = {"context": "stats", "epochs": 5, "refit": False, "pairs_per_side": 5, "threads": 2,
              **json.loads(args.recipe)}
    report = {"featurizer": fz.identity, "recipe": recipe, "sizes": sizes, "draws": []}
    for seed in [int(s) for s in args.draws.split(",")]:
        t0 = time.perf_counter()
        draw = build_draw(fz, args.corpus, seed, sizes, args.cache)
        t_feat = time.perf_counter() - t0
        model = weight = states = None
        figures = {}
        if not args.no_model:
            t1 = time.perf_counter()
            model = train_model(fz, draw, recipe, seed)
            vf = np.concatenate([draw.sets["val_scenes"][0], draw.sets["val_shots"][0]])
            vl = np.concatenate([draw.sets["val_scenes"][1], draw.sets["val_shots"][1]])
            fit_ = fit_ranking_weight(model, vf, vl, fz)
            weight, figures = fit_.weight, fit_.figures
            model.meta["ranking"] = ranking_entry(
                "blend", weight, note=f"fitted on {fit_.items} validation items (bench/quality.py, draw {seed})",
                grid=fit_.grid_json())
            states = state_recall(model, vf, vl)
            print(f"draw {seed}: trained in {time.perf_counter() - t1:.0f}s, blend weight {weight} "
                  f"(val {figures[weight]:.3f}; w=0 {figures[0.0]:.3f}, w=1 {figures[1.0]:.3f}); "
                  f"val states found: both {states['both']:.2f}, neither {states['neither']:.2f}, "
                  f"differs {states['differs']:.2f}", file=sys.stderr)
            if args.save_model and seed == int(args.draws.split(",")[0]):
                model.save(args.save_model)
        out = {"seed": seed, "featurize_s": round(t_feat, 1), "weight": weight,
               "val_states": states if model is not None else None,
               "val_figures": {f"{w:.2f}": v for w, v in figures.items()}}
        for name, (q, d, groups) in {
            "library": ("lib_q", "lib_db", ("single", "multi")),
            "generalisation": ("gen_q", "gen_db", ("single", "multi")),
            "one-shots": ("shot_q", "shot_db", ("single",)),
        }.items():
            qf, ql = draw.sets[q]
            df, dl = draw.sets[d]
            out[name] = evaluate_setting(fz, model, qf, ql, df, dl, groups=groups)
        if model is not None:
            shots = [draw.sets["shot_db"], draw.sets["shot_q"]]
            out["one_shot_tags"] = one_shot_tags(model, np.concatenate([x[0] for x in shots]),
                                                 np.concatenate([x[1] for x in shots]))
        report["draws"].append(out)
        print(json.dumps({k: v for k, v in out.items() if k != "val_figures"}, indent=1), file=sys.stderr)
    summary = summarise(report)
    report["summary"] = summary
    print_table(summary)
    tags = [d["one_shot_tags"] for d in report["draws"] if "one_shot_tags" in d]
    if tags:
        print("\nheld-out one-shots: what the model finds in them (mean over draws)")
        print(f"{'category':22s}{'one-shots':>10s}{'recall':>9s}{'false alarms':>14s}")
        for cat in CATS:
            rec = [t[cat]["recall"] for t in tags if t[cat]["recall"] is not None]
            fa = [t[cat]["false_alarm"] for t in tags if t[cat]["false_alarm"] is not None]
            n = sum(t[cat]["n"] for t in tags)
            print(f"{cat:22s}{n:>10d}{np.mean(rec) if rec else float('nan'):>9.2f}{np.mean(fa):>14.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown_table(summary) + "\n")
    return 0


def summarise(report: dict) -> dict:
    out: dict = {}
    for setting in ("library", "generalisation", "one-shots"):
        out[setting] = {}
        systems = report["draws"][0][setting].keys()
        for system in systems:
            out[setting][system] = {}
            for cell in report["draws"][0][setting][system]:
                vals = [d[setting][system][cell] for d in report["draws"]]
                out[setting][system][cell] = {"mean": float(np.mean(vals)), "min": float(np.min(vals))}
    return out


def markdown_table(summary: dict) -> str:
    """The summary as the model card's markdown table: mean over draws (minimum in brackets),
    the best system of each cell in bold."""
    lines = []
    for setting, systems in summary.items():
        cells_ = list(next(iter(systems.values())).keys())
        lines += ["", f"**{setting}** (mAP@{K}, mean over draws, minimum in brackets)", "",
                  "| system | " + " | ".join(cells_) + " |", "|---" * (len(cells_) + 1) + "|"]
        best = {c: max(v[c]["mean"] for v in systems.values()) for c in cells_}
        for system, vals in systems.items():
            row = []
            for c in cells_:
                text = f"{vals[c]['mean']:.3f} ({vals[c]['min']:.3f})"
                row.append(f"**{text}**" if vals[c]["mean"] == best[c] else text)
            lines.append(f"| {system} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def print_table(summary: dict) -> None:
    for setting, systems in summary.items():
        cells_ = list(next(iter(systems.values())).keys())
        print(f"\n{setting} (mAP@{K}, mean / min over draws)")
        print(f"{'system':32s}" + "".join(f"{c:>18s}" for c in cells_))
        for system, vals in systems.items():
            print(f"{system:32s}" + "".join(f"{vals[c]['mean']:>11.3f} /{vals[c]['min']:.3f}" for c in cells_))


if __name__ == "__main__":
    raise SystemExit(main())
