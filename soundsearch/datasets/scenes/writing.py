"""Writing a scene dataset: every scene's wav, labels.csv (the csv-dataset format) and
recipe.json (every parameter, the source split and each scene's events)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from soundsearch.datasets.scenes.mixing import SceneMaker, _AudioCache
from soundsearch.datasets.scenes.recipe import RECIPE_VERSION, SPLITS, SceneRecipe, Source, _categories, read_manifest, split_sources
from soundsearch.errors import DatasetError


@dataclass
class GenerateReport:
    out: Path
    labels_csv: Path
    recipe_json: Path
    counts: dict = field(default_factory=dict)


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
    cats = tuple(categories) if categories is not None else _categories()
    makers, split = prepare(corpus, recipe, cats)
    out = Path(out)
    try:
        for name in SPLITS:
            (out / "audio" / name).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create output folder {out}: {exc}") from exc
    rows, scenes_info, label_counts, cat_counts = _write_scenes(makers, out, recipe, cats, subtype, on_progress)
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


def _write_scenes(makers: dict[str, SceneMaker], out: Path, recipe: SceneRecipe, cats: tuple[str, ...], subtype: str,
                  on_progress: Callable[[int, int], None] | None):
    """Mix and write every scene's wav; (labels.csv rows, scene infos, labels-per-scene counts,
    scenes-per-category counts)."""
    import soundfile as sf

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
    return rows, scenes_info, label_counts, cat_counts
