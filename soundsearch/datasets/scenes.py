"""Synthetic urban soundscapes mixed from real labelled recordings (the default model's data).

A scene is `duration` seconds of a background ambience with 1-3 labelled events placed at random
times and gains on it, the way URBAN-SED / Scaper style datasets are made. The source recordings
are split into a training part and a held-out part (by recording, stratified by category, the
ambiences too) before any scene is drawn, and test scenes are mixed only from held-out
recordings, so a model evaluated on them has never heard any of their sounds.

It is a module, not a `soundsearch` command (it builds training data, which the product does
not); run it as one:

    python -m soundsearch.datasets.scenes --corpus ../shared/corpus --out scenes \
        --train 3000 --test 300 --seed 0

It writes `audio/{train,test}/scene_NNNNN.wav`, a `labels.csv` in the csv-dataset format (path,
one 0/1 column per category in taxonomy order, split) and `recipe.json` (every parameter, the
source split and each scene's events), so any scene can be traced back to its recordings.

Thin categories: a category with a single usable recording keeps it for training (no held-out
scene can contain that category); a category with two or more always keeps at least one for
each side. In the shared corpus machinery-impact has exactly two recordings, so its training
scenes all reuse one recording and its test scenes the other: figures for it measure transfer
from a single example. Events are drawn by category (weighted by the square root of the number
of recordings by default), so thin categories appear in scenes without drowning the rest in
copies of the same few files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from soundsearch.errors import AudioError, DatasetError

BACKGROUND = "background"
SPLITS = ("train", "test")
CONFIDENCE_ORDER = {"low": 0, "medium": 1, "high": 2}
WEIGHTINGS = ("sqrt", "uniform", "proportional")
RECIPE_VERSION = 1


@dataclass(frozen=True)
class SceneRecipe:
    """Everything that decides the scenes; with the corpus, it reproduces them exactly."""

    n_train: int = 3000
    n_test: int = 300
    seed: int = 0
    duration: float = 10.0
    sample_rate: int = 22050
    # Probability of 1, 2, 3 events in a scene (urban-sound datasets are mostly single-event).
    event_count_probs: tuple[float, ...] = (0.6, 0.3, 0.1)
    # Event-to-background ratio in dB (active-part RMS of the event over the background RMS).
    ebr_db: tuple[float, float] = (0.0, 20.0)
    # Background RMS level in dBFS: scenes vary in overall level as user libraries do.
    background_db: tuple[float, float] = (-40.0, -25.0)
    heldout_fraction: float = 0.3
    min_confidence: str = "low"
    category_weighting: str = "sqrt"
    fade_seconds: float = 0.01

    def validate(self) -> None:
        if self.n_train < 0 or self.n_test < 0:
            raise DatasetError("scene counts must be >= 0")
        if self.duration <= 0 or self.sample_rate <= 0:
            raise DatasetError("duration and sample rate must be positive")
        probs = self.event_count_probs
        if not probs or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise DatasetError(f"event_count_probs must be non-negative and sum to 1, got {probs}")
        for name, (lo, hi) in (("ebr_db", self.ebr_db), ("background_db", self.background_db)):
            if lo > hi:
                raise DatasetError(f"{name}: low {lo} is above high {hi}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise DatasetError("heldout_fraction must be strictly between 0 and 1")
        if self.min_confidence not in CONFIDENCE_ORDER:
            raise DatasetError(f"min_confidence must be one of {sorted(CONFIDENCE_ORDER)}")
        if self.category_weighting not in WEIGHTINGS:
            raise DatasetError(f"category_weighting must be one of {WEIGHTINGS}")


@dataclass(frozen=True)
class Source:
    """One corpus recording: its file, primary category and full label set (category + also)."""

    file: str
    path: Path
    category: str
    labels: tuple[str, ...]
    confidence: str


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    signal: np.ndarray
    labels: np.ndarray  # (C,) uint8 in taxonomy order
    info: dict


@dataclass
class GenerateReport:
    out: Path
    labels_csv: Path
    recipe_json: Path
    counts: dict = field(default_factory=dict)


def _categories() -> tuple[str, ...]:
    from soundsearch.taxonomy import Taxonomy

    return tuple(Taxonomy.default().categories)


def read_manifest(corpus: Path, categories: Sequence[str], min_confidence: str = "low") -> list[Source]:
    """The usable recordings of a corpus folder (manifest.csv + audio files)."""
    manifest = Path(corpus) / "manifest.csv"
    if not manifest.is_file():
        raise DatasetError(f"no manifest.csv in {corpus}: point --corpus at the shared corpus folder")
    known = set(categories) | {BACKGROUND}
    floor = CONFIDENCE_ORDER[min_confidence]
    sources: list[Source] = []
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing_cols = {"file", "category"} - set(reader.fieldnames or ())
        if missing_cols:
            raise DatasetError(f"{manifest}: missing column(s) {sorted(missing_cols)}")
        for row in reader:
            category = (row.get("category") or "").strip()
            if category not in known:
                raise DatasetError(f"{manifest}: unknown category {category!r} for {row['file']}")
            confidence = (row.get("confidence") or "high").strip() or "high"
            if CONFIDENCE_ORDER.get(confidence, 2) < floor:
                continue
            also = tuple(a.strip() for a in (row.get("also") or "").split(";") if a.strip())
            unknown = [a for a in also if a not in categories]
            if unknown:
                raise DatasetError(f"{manifest}: unknown 'also' label(s) {unknown} for {row['file']}")
            path = Path(corpus) / row["file"]
            if not path.is_file():
                raise DatasetError(f"{manifest}: listed file is missing: {path}")
            labels = () if category == BACKGROUND else tuple(dict.fromkeys((category, *also)))
            sources.append(Source(row["file"], path, category, labels, confidence))
    if not any(s.category == BACKGROUND for s in sources):
        raise DatasetError(f"{manifest}: no '{BACKGROUND}' recordings to mix events onto")
    if not any(s.category != BACKGROUND for s in sources):
        raise DatasetError(f"{manifest}: no labelled event recordings")
    return sources


def split_sources(sources: Sequence[Source], heldout_fraction: float, seed: int) -> dict[str, list[Source]]:
    """Split recordings into train / held-out, per category (backgrounds included).

    A category with one recording keeps it for training; with two or more, each side gets at
    least one. The split depends only on the seed and the manifest, not on scene counts.
    """
    by_cat: dict[str, list[Source]] = {}
    for s in sorted(sources, key=lambda s: s.file):
        by_cat.setdefault(s.category, []).append(s)
    out: dict[str, list[Source]] = {"train": [], "test": []}
    for cat in sorted(by_cat):
        group = by_cat[cat]
        # Per-category stream, so adding a recording to one category leaves the others' split alone.
        digest = int.from_bytes(hashlib.sha256(cat.encode()).digest()[:4], "little")
        rng = np.random.default_rng([seed, 1, digest])
        order = rng.permutation(len(group))
        n = len(group)
        n_test = 0 if n < 2 else min(n - 1, max(1, round(n * heldout_fraction)))
        test_idx = set(order[:n_test].tolist())
        for i, s in enumerate(group):
            out["test" if i in test_idx else "train"].append(s)
    return out


class _AudioCache:
    """Decodes and resamples each recording once (sources are small: tens of MB in all)."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self._cache: dict[Path, np.ndarray] = {}

    def get(self, path: Path) -> np.ndarray:
        sig = self._cache.get(path)
        if sig is None:
            from soundsearch.audio.decode import load  # soundfile and soxr only when mixing

            sig = load(path, self.sample_rate).signal
            self._cache[path] = sig
        return sig


def _rms_db(x: np.ndarray) -> float:
    return 10.0 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)


def _active_rms_db(x: np.ndarray, frame: int = 1024, floor_db: float = 20.0) -> float:
    """RMS over the frames within `floor_db` of the loudest one.

    Plain RMS would let the silence around a short event (a bark, a door) decide its gain;
    the level that matters to a listener is that of the event while it sounds.
    """
    n = max(1, x.size // frame)
    frames = x[: n * frame].reshape(n, -1) if x.size >= frame else x.reshape(1, -1)
    energy = np.mean(np.square(frames, dtype=np.float64), axis=1)
    peak = float(energy.max())
    if peak <= 1e-20:
        return -200.0
    active = energy[energy >= peak * 10 ** (-floor_db / 10)]
    return 10.0 * math.log10(float(active.mean()))


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, x.size // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _bed(bg: np.ndarray, length: int, rng: np.random.Generator, xfade: int) -> np.ndarray:
    """A background bed of `length` samples from a random offset, looped with crossfades if short."""
    if bg.size >= length:
        start = int(rng.integers(0, bg.size - length + 1))
        return bg[start : start + length].copy()
    xfade = min(xfade, bg.size // 4)
    step = bg.size - xfade
    out = np.zeros(length + 2 * bg.size, dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, xfade, dtype=np.float32) if xfade > 0 else None
    pos = 0
    first = True
    while pos < length + bg.size:
        piece = bg.copy()
        if ramp is not None:
            if not first:
                piece[:xfade] *= ramp
            piece[-xfade:] *= ramp[::-1]
        out[pos : pos + piece.size] += piece
        pos += step
        first = False
    start = int(rng.integers(0, max(1, bg.size - xfade)))
    return out[start : start + length].copy()


def _category_weights(pool: dict[str, list[Source]], weighting: str) -> dict[str, float]:
    counts = {c: len(v) for c, v in pool.items() if v}
    if weighting == "uniform":
        raw = {c: 1.0 for c in counts}
    elif weighting == "proportional":
        raw = {c: float(n) for c, n in counts.items()}
    else:
        raw = {c: math.sqrt(n) for c, n in counts.items()}
    total = sum(raw.values())
    return {c: w / total for c, w in raw.items()}


class SceneMaker:
    """Mixes scenes for one split from that split's recordings only."""

    def __init__(self, recipe: SceneRecipe, split: str, sources: Sequence[Source], categories: Sequence[str],
                 cache: _AudioCache | None = None):
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}")
        self.recipe = recipe
        self.split = split
        self.categories = tuple(categories)
        self.cache = cache or _AudioCache(recipe.sample_rate)
        self.backgrounds = sorted((s for s in sources if s.category == BACKGROUND), key=lambda s: s.file)
        events: dict[str, list[Source]] = {}
        for s in sorted(sources, key=lambda s: s.file):
            if s.category != BACKGROUND:
                events.setdefault(s.category, []).append(s)
        self.events = events
        if not self.backgrounds:
            raise DatasetError(f"no background recordings in the {split} split")
        if not self.events:
            raise DatasetError(f"no event recordings in the {split} split")
        weights = _category_weights(events, recipe.category_weighting)
        self._cats = sorted(weights)
        self._weights = np.array([weights[c] for c in self._cats])

    def make(self, index: int) -> Scene:
        r = self.recipe
        # One stream per (seed, split, index): scene i is the same whatever the scene counts.
        rng = np.random.default_rng([r.seed, 2, SPLITS.index(self.split), index])
        sr = r.sample_rate
        length = int(round(r.duration * sr))
        bg_src = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        bed = _bed(self.cache.get(bg_src.path), length, rng, xfade=int(0.05 * sr))
        bg_db = float(rng.uniform(*r.background_db))
        bed_level = _rms_db(bed)
        if bed_level > -200:
            bed *= 10 ** ((bg_db - bed_level) / 20)
        mix = bed.astype(np.float32)

        n_events = 1 + int(rng.choice(len(r.event_count_probs), p=np.asarray(r.event_count_probs)))
        n_events = min(n_events, len(self._cats))
        # Distinct categories, so the label mix follows event_count_probs.
        chosen = rng.choice(len(self._cats), size=n_events, replace=False, p=self._weights)
        labels = np.zeros(len(self.categories), dtype=np.uint8)
        events_info = []
        for ci in chosen:
            cat = self._cats[int(ci)]
            src = self.events[cat][int(rng.integers(len(self.events[cat])))]
            sig = self.cache.get(src.path)
            n = min(sig.size, length)
            offset = int(rng.integers(0, sig.size - n + 1))
            ev = _fade(sig[offset : offset + n].copy(), int(r.fade_seconds * sr))
            onset = int(rng.integers(0, length - n + 1))
            ebr = float(rng.uniform(*r.ebr_db))
            level = _active_rms_db(ev)
            gain_db = (bg_db + ebr - level) if level > -200 else 0.0
            mix[onset : onset + n] += ev * np.float32(10 ** (gain_db / 20))
            for lab in src.labels:
                labels[self.categories.index(lab)] = 1
            events_info.append({
                "file": src.file, "category": cat, "labels": list(src.labels),
                "onset": round(onset / sr, 4), "duration": round(n / sr, 4),
                "source_offset": round(offset / sr, 4), "ebr_db": round(ebr, 3),
            })
        peak = float(np.max(np.abs(mix)))
        scale = 1.0
        if peak > 0.99:
            # Scale the whole mix, so event-to-background ratios stay as drawn.
            scale = 0.99 / peak
            mix *= np.float32(scale)
        info = {"background": bg_src.file, "background_db": round(bg_db, 3), "events": events_info,
                "peak_scale": round(scale, 6)}
        return Scene(self.split, index, mix, labels, info)


def _manifest_digest(corpus: Path) -> str:
    return hashlib.sha256((Path(corpus) / "manifest.csv").read_bytes()).hexdigest()


def prepare(corpus: Path, recipe: SceneRecipe, categories: Sequence[str] | None = None
            ) -> tuple[dict[str, SceneMaker], dict[str, list[Source]]]:
    """Scene makers for both splits (sharing one audio cache) and the source split."""
    recipe.validate()
    cats = tuple(categories) if categories is not None else _categories()
    sources = read_manifest(Path(corpus), cats, recipe.min_confidence)
    split = split_sources(sources, recipe.heldout_fraction, recipe.seed)
    cache = _AudioCache(recipe.sample_rate)
    makers = {name: SceneMaker(recipe, name, split[name], cats, cache) for name in SPLITS}
    return makers, split


def generate(corpus: Path, out: Path, recipe: SceneRecipe, categories: Sequence[str] | None = None,
             subtype: str = "PCM_16", on_progress: Callable[[int, int], None] | None = None) -> GenerateReport:
    """Mix the scenes and write wav files, labels.csv and recipe.json under `out`."""
    import soundfile as sf

    cats = tuple(categories) if categories is not None else _categories()
    makers, split = prepare(corpus, recipe, cats)
    out = Path(out)
    try:
        for name in SPLITS:
            (out / "audio" / name).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create output folder {out}: {exc}") from exc
    total = recipe.n_train + recipe.n_test
    done = 0
    rows: list[list] = []
    scenes_info: list[dict] = []
    label_counts: dict[str, Counter] = {name: Counter() for name in SPLITS}
    cat_counts: dict[str, Counter] = {name: Counter() for name in SPLITS}
    for name, count in (("train", recipe.n_train), ("test", recipe.n_test)):
        for i in range(count):
            scene = makers[name].make(i)
            rel = f"audio/{name}/scene_{i:05d}.wav"
            try:
                sf.write(str(out / rel), scene.signal, recipe.sample_rate, subtype=subtype)
            except (RuntimeError, sf.LibsndfileError, OSError) as exc:
                raise DatasetError(f"cannot write {out / rel}: {exc}") from exc
            rows.append([rel, *scene.labels.tolist(), name])
            scenes_info.append({"path": rel, "split": name, **scene.info})
            label_counts[name][int(scene.labels.sum())] += 1
            for c, v in zip(cats, scene.labels):
                cat_counts[name][c] += int(v)
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    labels_csv = out / "labels.csv"
    # Written after every wav exists, so a labels.csv never names a file that is not there.
    with labels_csv.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *cats, "split"])
        w.writerows(rows)
    counts = {
        name: {
            "scenes": sum(label_counts[name].values()),
            "labels_per_scene": {str(k): v for k, v in sorted(label_counts[name].items())},
            "scenes_per_category": {c: cat_counts[name][c] for c in cats},
            "sources_per_category": dict(sorted(Counter(s.category for s in split[name]).items())),
        }
        for name in SPLITS
    }
    recipe_json = out / "recipe.json"
    doc = {
        "generator": "soundsearch.datasets.scenes",
        "version": RECIPE_VERSION,
        "corpus": str(Path(corpus).resolve()),
        "manifest_sha256": _manifest_digest(Path(corpus)),
        "categories": list(cats),
        "recipe": asdict(recipe),
        "sources": {name: [s.file for s in split[name]] for name in SPLITS},
        "counts": counts,
        "scenes": scenes_info,
    }
    recipe_json.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return GenerateReport(out, labels_csv, recipe_json, counts)


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from exc
    return lo, hi


def _probs(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    d = SceneRecipe()
    p = argparse.ArgumentParser(prog="python -m soundsearch.datasets.scenes", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True, help="folder with manifest.csv and the recordings")
    p.add_argument("--out", type=Path, required=True, help="output folder (audio/, labels.csv, recipe.json)")
    p.add_argument("--train", type=int, default=d.n_train, help="training scenes (default %(default)s)")
    p.add_argument("--test", type=int, default=d.n_test, help="held-out scenes (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--duration", type=float, default=d.duration, help="scene seconds")
    p.add_argument("--event-counts", type=_probs, default=d.event_count_probs,
                   help="probabilities of 1,2,3,... events (default 0.6,0.3,0.1)")
    p.add_argument("--ebr", type=_range, default=d.ebr_db, help="event-to-background dB range LOW,HIGH")
    p.add_argument("--background-db", type=_range, default=d.background_db, help="background dBFS range")
    p.add_argument("--heldout", type=float, default=d.heldout_fraction, help="held-out share of recordings")
    p.add_argument("--min-confidence", choices=sorted(CONFIDENCE_ORDER, key=CONFIDENCE_ORDER.get),
                   default=d.min_confidence)
    p.add_argument("--weighting", choices=WEIGHTINGS, default=d.category_weighting,
                   help="how event categories are drawn")
    args = p.parse_args(argv)
    recipe = SceneRecipe(
        n_train=args.train, n_test=args.test, seed=args.seed, duration=args.duration,
        event_count_probs=args.event_counts, ebr_db=args.ebr, background_db=args.background_db,
        heldout_fraction=args.heldout, min_confidence=args.min_confidence, category_weighting=args.weighting,
    )
    try:
        report = generate(args.corpus, args.out, recipe)
    except (DatasetError, AudioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in SPLITS:
        c = report.counts[name]
        print(f"{name}: {c['scenes']} scenes, labels per scene {c['labels_per_scene']}", file=sys.stderr)
    print(str(report.labels_csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
