"""Scene generator: label mix, reproducibility, no leakage of recordings between splits."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundsearch.datasets import scenes
from soundsearch.datasets.scenes import SceneRecipe, generate, prepare, split_sources
from soundsearch.errors import DatasetError
from soundsearch.taxonomy import Taxonomy
from tests.conftest import chirp, noise_bursts, tone, write_audio

CATS = Taxonomy.default().categories

# (category, how many recordings); machinery-impact thin as in the real corpus, powered-saw single.
LAYOUT = {
    "engine": 4, "machinery-impact": 2, "non-machinery-impact": 4, "powered-saw": 1,
    "alert-signal": 3, "music": 4, "human-voice": 5, "dog": 3, "background": 4,
}


def _corpus(root: Path) -> Path:
    rows = []
    k = 0
    for cat, n in LAYOUT.items():
        for i in range(n):
            k += 1
            rel = f"audio/{cat}__{i}.ogg" if i % 2 else f"audio/{cat}__{i}.wav"
            if cat == "background":
                sig, sr = noise_bursts(seconds=1.5 + i, sr=16000, seed=k, amp=0.1), 16000
            elif i % 3 == 0:
                sig, sr = tone(200.0 + 50 * k, seconds=0.5 + 0.3 * i, sr=44100), 44100
            else:
                sig, sr = chirp(100.0 + 20 * k, 3000.0, seconds=0.4 + 0.2 * i, sr=22050), 22050
            write_audio(root / rel, sig, sr, format="OGG" if rel.endswith(".ogg") else None,
                        subtype="VORBIS" if rel.endswith(".ogg") else None)
            also = "engine" if (cat == "alert-signal" and i == 0) else ""
            rows.append({"file": rel, "category": cat, "also": also, "confidence": "high"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "category", "also", "confidence"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus"))


def _recipe(**kw) -> SceneRecipe:
    base = dict(n_train=12, n_test=6, seed=3, duration=2.0)
    base.update(kw)
    return SceneRecipe(**base)


def test_split_is_stratified_disjoint_and_handles_thin_categories(tiny_corpus):
    makers, split = prepare(tiny_corpus, _recipe())
    train = {s.file for s in split["train"]}
    test = {s.file for s in split["test"]}
    assert not train & test
    assert len(train | test) == sum(LAYOUT.values())
    by = {name: Counter(s.category for s in split[name]) for name in ("train", "test")}
    # Two recordings: one each side. One recording: training only, so no test scene has it.
    assert by["train"]["machinery-impact"] == 1 and by["test"]["machinery-impact"] == 1
    assert by["train"]["powered-saw"] == 1 and by["test"]["powered-saw"] == 0
    for cat, n in LAYOUT.items():
        if n >= 2:
            assert by["test"][cat] >= 1 and by["train"][cat] >= 1, cat
    assert "powered-saw" not in makers["test"].events


def test_split_depends_only_on_seed(tiny_corpus):
    _, a = prepare(tiny_corpus, _recipe(n_train=5))
    _, b = prepare(tiny_corpus, _recipe(n_train=50))
    _, c = prepare(tiny_corpus, _recipe(seed=4))
    files = lambda s: sorted(x.file for x in s["test"])  # noqa: E731
    assert files(a) == files(b)
    assert files(a) != files(c)


def test_label_mix_follows_event_count_probs(tiny_corpus):
    makers, _ = prepare(tiny_corpus, _recipe(duration=1.0))
    counts = Counter()
    n = 400
    for i in range(n):
        scene = makers["train"].make(i)
        events = scene.info["events"]
        counts[len(events)] += 1
        expected = np.zeros(len(CATS), dtype=np.uint8)
        for ev in events:
            for lab in ev["labels"]:
                expected[CATS.index(lab)] = 1
        np.testing.assert_array_equal(scene.labels, expected)
        assert len({ev["category"] for ev in events}) == len(events)
    assert counts.keys() <= {1, 2, 3}
    assert abs(counts[1] / n - 0.6) < 0.08
    assert abs(counts[2] / n - 0.3) < 0.08
    assert abs(counts[3] / n - 0.1) < 0.05


def test_also_labels_join_the_scene_labels(tiny_corpus):
    makers, split = prepare(tiny_corpus, _recipe(event_count_probs=(1.0,)))
    with_also = [s.file for s in split["train"] + split["test"] if s.labels == ("alert-signal", "engine")]
    assert with_also, "the synthetic corpus has an alert-signal recording also labelled engine"
    seen = False
    for name in ("train", "test"):
        for i in range(200):
            scene = makers[name].make(i)
            if scene.info["events"][0]["file"] == with_also[0]:
                assert scene.labels[CATS.index("engine")] == 1
                assert scene.labels[CATS.index("alert-signal")] == 1
                assert scene.labels.sum() == 2
                seen = True
    assert seen


def test_scene_signal_shape_level_and_events_inside(tiny_corpus):
    r = _recipe(duration=2.0, background_db=(-30.0, -30.0), ebr_db=(10.0, 10.0))
    makers, _ = prepare(tiny_corpus, r)
    for i in range(20):
        scene = makers["test"].make(i)
        assert scene.signal.dtype == np.float32
        assert scene.signal.shape == (int(r.duration * r.sample_rate),)
        assert np.all(np.isfinite(scene.signal)) and np.max(np.abs(scene.signal)) <= 0.99 + 1e-6
        # Events sit 10 dB over a -30 dBFS bed, so the scene is louder than its bed alone.
        rms_db = 10 * np.log10(np.mean(scene.signal.astype(np.float64) ** 2))
        assert -30.5 < rms_db < 0
        for ev in scene.info["events"]:
            assert 0 <= ev["onset"] and ev["onset"] + ev["duration"] <= r.duration + 1e-3


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_generate_writes_dataset_and_is_reproducible(tiny_corpus, tmp_path):
    r = _recipe()
    a = generate(tiny_corpus, tmp_path / "a", r)
    b = generate(tiny_corpus, tmp_path / "b", r)
    c = generate(tiny_corpus, tmp_path / "c", _recipe(seed=9))
    rows = _read_rows(a.labels_csv)
    with a.labels_csv.open() as fh:
        header = next(csv.reader(fh))
    assert header == ["path", *CATS, "split"]
    assert Counter(row["split"] for row in rows) == {"train": 12, "test": 6}
    for row in rows:
        wav = a.out / row["path"]
        info = sf.info(str(wav))
        assert info.samplerate == 22050 and info.frames == int(2.0 * 22050) and info.channels == 1
        assert {row[c] for c in CATS} <= {"0", "1"} and sum(int(row[c]) for c in CATS) >= 1
    assert a.labels_csv.read_bytes() == b.labels_csv.read_bytes()
    for row in rows:
        assert (a.out / row["path"]).read_bytes() == (b.out / row["path"]).read_bytes()
    assert a.labels_csv.read_bytes() != c.labels_csv.read_bytes()

    doc = json.loads(a.recipe_json.read_text())
    assert doc["recipe"]["seed"] == 3 and doc["categories"] == list(CATS)
    train_src, test_src = set(doc["sources"]["train"]), set(doc["sources"]["test"])
    assert not train_src & test_src
    # No leakage: every recording (events and bed) of a scene comes from its own split's sources.
    for sc in doc["scenes"]:
        allowed = test_src if sc["split"] == "test" else train_src
        assert sc["background"] in allowed
        assert all(ev["file"] in allowed for ev in sc["events"])
    assert doc["counts"]["test"]["scenes"] == 6


def test_scene_i_does_not_depend_on_the_number_of_scenes(tiny_corpus):
    small, _ = prepare(tiny_corpus, _recipe(n_train=2))
    large, _ = prepare(tiny_corpus, _recipe(n_train=200))
    np.testing.assert_array_equal(small["train"].make(1).signal, large["train"].make(1).signal)


def test_bad_inputs_raise_dataset_errors(tiny_corpus, tmp_path):
    with pytest.raises(DatasetError, match="manifest.csv"):
        prepare(tmp_path, _recipe())
    with pytest.raises(DatasetError, match="sum to 1"):
        prepare(tiny_corpus, _recipe(event_count_probs=(0.5, 0.2)))
    bad = tmp_path / "bad"
    (bad / "audio").mkdir(parents=True)
    (bad / "manifest.csv").write_text("file,category\naudio/x.wav,spaceship\n")
    with pytest.raises(DatasetError, match="unknown category"):
        prepare(bad, _recipe())
    (bad / "manifest.csv").write_text("file,category\naudio/missing.wav,dog\n")
    with pytest.raises(DatasetError, match="missing"):
        prepare(bad, _recipe())


def test_module_cli(tiny_corpus, tmp_path, capsys):
    rc = scenes.main(["--corpus", str(tiny_corpus), "--out", str(tmp_path / "s"), "--train", "3",
                      "--test", "2", "--duration", "1", "--seed", "1"])
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "s" / "labels.csv")
    assert len(_read_rows(tmp_path / "s" / "labels.csv")) == 5
    rc = scenes.main(["--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")])
    assert rc == 1
    assert "error:" in capsys.readouterr().err


def test_split_sources_without_background_category_is_plain_per_category():
    src = [scenes.Source(f"f{i}", Path(f"f{i}"), "dog", ("dog",), "high") for i in range(10)]
    split = split_sources(src, 0.3, seed=0)
    assert len(split["test"]) == 3 and len(split["train"]) == 7


def test_smoke_on_the_real_corpus(corpus, tmp_path):
    report = generate(corpus, tmp_path / "real", SceneRecipe(n_train=4, n_test=2, seed=0))
    rows = _read_rows(report.labels_csv)
    assert len(rows) == 6
    doc = json.loads(report.recipe_json.read_text())
    assert set(doc["sources"]["train"]).isdisjoint(doc["sources"]["test"])
    # The thin category the corpus README names: one recording on each side.
    per = {k: doc["counts"][k]["sources_per_category"] for k in ("train", "test")}
    assert per["train"]["machinery-impact"] == 1 and per["test"]["machinery-impact"] == 1
    sig, sr = sf.read(str(report.out / rows[0]["path"]))
    assert sr == 22050 and sig.shape == (220500,)
