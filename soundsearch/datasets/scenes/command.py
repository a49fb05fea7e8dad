"""`python -m soundsearch.datasets.scenes`: the command line of the scene generator."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from soundsearch.datasets.scenes.recipe import CONFIDENCE_ORDER, SPLITS, WEIGHTINGS, SceneRecipe
from soundsearch.datasets.scenes.writing import generate
from soundsearch.errors import AudioError, DatasetError


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
    from soundsearch.datasets import scenes

    d = SceneRecipe()
    p = argparse.ArgumentParser(prog="python -m soundsearch.datasets.scenes", description=scenes.__doc__.split("\n\n")[0])
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
