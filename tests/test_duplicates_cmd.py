"""`soundsearch duplicates`: exact copies and re-encoded/trimmed copies group; others do not."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import REPO


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from soundsearch.indexing import index_paths

    root = tmp_path_factory.mktemp("dupcmd")
    lib = root / "lib"
    lib.mkdir()
    for name in ("scene-01-impact.ogg", "scene-02-engine.ogg", "scene-03-horn-dog.ogg", "scene-04-music.ogg", "scene-07-saw.ogg"):
        shutil.copy(REPO / "examples" / "library" / name, lib / name)
    shutil.copy(lib / "scene-01-impact.ogg", lib / "impact-copy.ogg")  # byte-identical copy
    x, sr = sf.read(lib / "scene-02-engine.ogg", dtype="float32")
    # Re-encoded 6 dB quieter. (A 5% trimmed copy of this 10 s scene scores about 0.9 on the
    # default aisfx features, below the threshold: ranking.DUPLICATE_COSINE says what is caught.)
    sf.write(lib / "engine-quieter.flac", x * np.float32(0.5), sr)
    index_paths(root / "store", [lib], jobs=1)
    return root / "store"


def test_groups_exact_first_then_near(store):
    from soundsearch.cli import app

    result = CliRunner().invoke(app, ["duplicates", "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["threshold"] == 0.90 and doc["items_compared"] == 7
    groups = [(g["kind"], sorted(m["path"].rsplit("/", 1)[1] for m in g["members"])) for g in doc["groups"]]
    assert groups == [
        ("exact", ["impact-copy.ogg", "scene-01-impact.ogg"]),
        ("near", ["engine-quieter.flac", "scene-02-engine.ogg"]),
    ]
    assert all(m["cosine"] == pytest.approx(1.0) for m in doc["groups"][0]["members"])
    assert doc["groups"][1]["members"][1]["cosine"] >= 0.90


def test_paths_and_table(store):
    from soundsearch.cli import app

    r = CliRunner().invoke(app, ["duplicates", "--store", str(store), "--paths"])
    assert r.exit_code == 0
    blocks = [b.splitlines() for b in r.stdout.strip().split("\n\n")]
    assert [len(b) for b in blocks] == [2, 2] and all(p.startswith("/") for b in blocks for p in b)
    r = CliRunner().invoke(app, ["duplicates", "--store", str(store)])
    assert "2 groups of copies among 7 items (1 exact, 1 near" in r.stdout


def test_blocked_pairs_match_the_full_product():
    from soundsearch.search.duplicates import near_pairs

    rng = np.random.default_rng(0)
    v = rng.standard_normal((300, 16)).astype(np.float32)
    v[150] = v[3] + 0.01
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    files = np.arange(300)
    files[7] = files[8]  # same file: never paired
    v[7] = v[8]
    i, j, c = near_pairs(v, files, 0.99, block=64)
    full = v @ v.T
    want = {(a, b) for a, b in zip(*np.nonzero(full >= 0.99)) if a < b and files[a] != files[b]}
    assert set(zip(i.tolist(), j.tolist())) == want and (3, 150) in want


def test_a_low_threshold_still_groups_only_copies(store):
    """With the cosine threshold at its floor every pair is a candidate: the sounds' time
    courses (search.fingerprint) still keep apart recordings that are not copies."""
    from soundsearch.cli import app

    result = CliRunner().invoke(app, ["duplicates", "--store", str(store), "--json", "--threshold", "-1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    groups = [(g["kind"], sorted(m["path"].rsplit("/", 1)[1] for m in g["members"])) for g in doc["groups"]]
    assert groups == [
        ("exact", ["impact-copy.ogg", "scene-01-impact.ogg"]),
        ("near", ["engine-quieter.flac", "scene-02-engine.ogg"]),
    ]
