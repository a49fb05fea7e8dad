"""Choose the near-duplicate threshold of search.fingerprint on a validation set of copies.

    .venv/bin/python bench/duplicates.py [--corpus ../shared/corpus] [--originals 20]

tests/test_duplicates.py reports how altered copies rank on one set of 20 corpus recordings and
100 others (FLAC/OGG re-encodes, 5% trimmed at the start, -6 dB, +-3% speed, noise at 40 dB
SNR). The threshold must not be chosen on that set, so this script builds another one: other
corpus recordings as originals and as the rest of the library (disjoint from the test's), and
other alterations (MP3 re-encode, 8% trimmed at the end, -12 dB, 2% faster, 4% slower, pitched
down 10% by resampling and 6 dB quieter, noise at 35 dB SNR, 22.05 kHz resample). For each threshold of the grid it prints, over every original
queried once held in the store and once not (mode acoustic, so the blend weight plays no part):

    trials     queries whose every copy ranks before every other recording
    copies     copy items flagged as near-duplicates
    false      other recordings' items flagged (false alarms)

The shipped DUPLICATE_FINGERPRINT is the highest threshold with the most trials and no more
false alarms than the next one down. Features are aisfx (the default featurizer).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import test_duplicates as td  # noqa: E402  the test's own picking and library building

from soundsearch.search import fingerprint as fpmod  # noqa: E402

ALTERATIONS = ("mp3", "trimend8", "gain-12dB", "faster2", "slower4", "down10", "noise35dB", "sr22050")
GRID = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def alter(x: np.ndarray, sr: int, how: str, rng: np.random.Generator):
    if how == "mp3":
        return x, sr, "MP3", "MPEG_LAYER_III"
    if how == "trimend8":
        return x[: int(round(0.92 * x.size))], sr, "WAV", "FLOAT"
    if how == "gain-12dB":
        return x * np.float32(10 ** (-12 / 20)), sr, "WAV", "FLOAT"
    if how in ("faster2", "slower4", "down10"):
        # Played faster or slower (resampled): "down10" is pitched down 10% (and 10% longer)
        # and 6 dB quieter, the sound designer's varispeed.
        factor = {"faster2": 1.02, "slower4": 1 / 1.04, "down10": 1 / 1.10}[how]
        if how == "down10":
            return soxr.resample(x, sr, sr / factor).astype(np.float32) * np.float32(0.5), sr, "WAV", "FLOAT"
        return soxr.resample(x, sr, sr / factor).astype(np.float32), sr, "WAV", "FLOAT"
    if how == "noise35dB":
        power = float(np.mean(x.astype(np.float64) ** 2))
        return (x + rng.standard_normal(x.size) * np.sqrt(power / 10**3.5)).astype(np.float32), sr, "WAV", "FLOAT"
    if how == "sr22050":
        return soxr.resample(x, sr, 22050).astype(np.float32), 22050, "FLAC", None
    raise ValueError(how)


def pick(corpus: Path, n_originals: int, n_others: int):
    """The test's way of picking, on the recordings the test does not use, in another order."""
    test_originals, test_others = td._pick(corpus)
    taken = frozenset(r["file"] for r in test_originals + test_others)
    return td._pick(corpus, n_originals, n_others, seed=11, exclude=taken)


def build(corpus: Path, root: Path, n_originals: int, n_others: int) -> dict:
    return td.build_library(corpus, root, picked=pick(corpus, n_originals, n_others),
                            alterations=ALTERATIONS, alter=alter, seed=3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "duplicates-val")
    ap.add_argument("--originals", type=int, default=20)
    ap.add_argument("--others", type=int, default=100)
    args = ap.parse_args(argv)

    from soundsearch.model.checkpoint import load_model
    from soundsearch.model.registry import resolve_model

    t0 = time.perf_counter()
    if args.work.exists():
        import shutil

        shutil.rmtree(args.work)
    lib = build(args.corpus, args.work, args.originals, args.others)
    print(f"built in {time.perf_counter() - t0:.0f} s: {len(lib['copies'])} originals x {len(ALTERATIONS)} copies",
          file=sys.stderr)
    model = load_model(resolve_model(None))
    print(f"{'threshold':>10s}{'trials':>10s}{'copies':>12s}{'false':>8s}")
    for tau in GRID:
        fpmod.DUPLICATE_FINGERPRINT = tau
        trials = td._trials(lib, model, mode="acoustic")
        ok = sum(t[2] for t in trials)
        flagged = sum(t[4] for t in trials)
        copy_items = sum(t[6] for t in trials)
        false = sum(len(t[3]) for t in trials)
        print(f"{tau:>10.2f}{ok:>6d}/{len(trials):<3d}{flagged:>7d}/{copy_items:<4d}{false:>8d}", flush=True)
    for st in lib["stores"].values():
        st.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
