"""Rebuild the bundled example library in examples/library/ from the shared corpus.

    python examples/make_library.py --corpus ../shared/corpus

The example is a handful of 10 s street scenes mixed by soundsearch.datasets.scenes from the
corpus recordings that the default model holds out of training (same recipe seed), so a first
query shows how the model does on sounds it never heard. Only scenes whose every source is under
a Creative Commons licence are kept, so the folder can ship with the code; ATTRIBUTION.md lists
each scene's sources and licences.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import soundfile as sf

from soundsearch.datasets.scenes import SceneRecipe, prepare

HERE = Path(__file__).resolve().parent
SHORT = {
    "engine": "engine", "machinery-impact": "jackhammer", "non-machinery-impact": "impact",
    "powered-saw": "saw", "alert-signal": "horn", "music": "music", "human-voice": "voice", "dog": "dog",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, default=HERE / "library")
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--seed", type=int, default=SceneRecipe().seed, help="the default model's scene seed")
    args = p.parse_args()

    manifest = {r["file"]: r for r in csv.DictReader((args.corpus / "manifest.csv").open(encoding="utf-8"))}

    def free(file: str) -> bool:
        lic = manifest[file]["licence"].upper()
        return ("CC" in lic or "CREATIVE COMMONS" in lic) and "GPL" not in lic

    makers, _ = prepare(args.corpus, SceneRecipe(seed=args.seed))
    args.out.mkdir(parents=True, exist_ok=True)
    credits, kept, index = [], 0, 0
    while kept < args.scenes and index < 2000:
        scene = makers["test"].make(index)
        index += 1
        files = [scene.info["background"]] + [e["file"] for e in scene.info["events"]]
        if not all(free(f) for f in files):
            continue
        kept += 1
        cats = sorted({e["category"] for e in scene.info["events"]}, key=list(SHORT).index)
        name = f"scene-{kept:02d}-{'-'.join(SHORT[c] for c in cats)}.ogg"
        sf.write(str(args.out / name), scene.signal, makers["test"].recipe.sample_rate, format="OGG", subtype="VORBIS")
        credits.append((name, files))
    with (args.out / "ATTRIBUTION.md").open("w", encoding="utf-8") as fh:
        fh.write("# Example library: sources and licences\n\n")
        fh.write("Each file is a 10 s mix made by `examples/make_library.py` (soundsearch.datasets.scenes) from\n")
        fh.write("recordings of free game and data packages of Debian (see ../../models/README.md).\n\n")
        for name, files in credits:
            fh.write(f"- `{name}`:\n")
            for f in files:
                r = manifest[f]
                fh.write(f"  - {r['subtype']} — {r['package']} {r['package_version']}, `{r['source_path']}`, {r['licence']}\n")


if __name__ == "__main__":
    main()
