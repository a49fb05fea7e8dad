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

    recipe.py   the corpus manifest, the train/held-out split of recordings, SceneRecipe
    mixing.py   SceneMaker: one scene from a background and 1-3 events
    writing.py  generate(): every scene's wav, labels.csv, recipe.json
    command.py  the command line (`python -m soundsearch.datasets.scenes`)
"""

from soundsearch.datasets.scenes.command import main
# The mixing helpers are re-exported too: bench/quality.py mixes a second recipe from them.
from soundsearch.datasets.scenes.mixing import Scene, SceneMaker, _active_rms_db, _AudioCache, _bed, _fade, _rms_db
from soundsearch.datasets.scenes.recipe import (
    BACKGROUND,
    CONFIDENCE_ORDER,
    RECIPE_VERSION,
    SPLITS,
    WEIGHTINGS,
    SceneRecipe,
    Source,
    read_manifest,
    split_sources,
)
from soundsearch.datasets.scenes.writing import GenerateReport, generate, prepare

__all__ = [
    "BACKGROUND",
    "CONFIDENCE_ORDER",
    "RECIPE_VERSION",
    "SPLITS",
    "WEIGHTINGS",
    "GenerateReport",
    "Scene",
    "SceneMaker",
    "SceneRecipe",
    "Source",
    "_AudioCache",
    "_active_rms_db",
    "_bed",
    "_fade",
    "_rms_db",
    "generate",
    "main",
    "prepare",
    "read_manifest",
    "split_sources",
]
