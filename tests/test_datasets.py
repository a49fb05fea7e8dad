"""Datasets: a user's labels CSV in its shapes and failure modes, the SONYC-UST layouts, features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundsearch.datasets import check_trainable, dataset_features, load_dataset, sonyc_ust
from soundsearch.errors import DatasetError
from soundsearch.taxonomy import Taxonomy

from conftest import chirp, noise_bursts, tone, write_audio


def touch_wavs(folder: Path, names) -> None:
    for i, n in enumerate(names):
        write_audio(folder / n, tone(200 + 50 * i, 0.2))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- CSV: category columns


def test_csv_category_columns(tmp_path):
    touch_wavs(tmp_path / "sounds", ["a.wav", "b.wav", "c.wav", "d.wav"])
    csv = write(
        tmp_path / "labels.csv",
        "path,split,dog,engine,music\n"
        "sounds/a.wav,train,1,0,0\n"
        "sounds/b.wav,train,0,1,1\n"
        "sounds/c.wav,test,0,0,1\n"
        f"{tmp_path / 'sounds' / 'd.wav'},validate,1,1,0\n",
    )
    ds = load_dataset(str(csv))
    assert ds.taxonomy.categories == ("dog", "engine", "music")
    assert [e.path for e in ds.train] == [tmp_path / "sounds" / "a.wav", tmp_path / "sounds" / "b.wav"]
    assert ds.labels("train").tolist() == [[1, 0, 0], [0, 1, 1]]
    assert [e.path.name for e in ds.test] == ["c.wav"]
    assert [e.path.name for e in ds.validate] == ["d.wav"]
    assert ds.missing == [] and ds.info["split"] == "column"
    assert ds.summary()["train"]["per_category"] == {"dog": 1, "engine": 1, "music": 1}


def test_csv_header_order_does_not_matter(tmp_path):
    touch_wavs(tmp_path, ["a.wav", "b.wav", "c.wav"])
    rows = [("a.wav", "train", 1, 0), ("b.wav", "train", 0, 1), ("c.wav", "test", 1, 1)]
    one = write(tmp_path / "one.csv", "path,split,dog,music\n" + "".join(f"{p},{s},{d},{m}\n" for p, s, d, m in rows))
    two = write(tmp_path / "two.csv", "split,dog,music,path\n" + "".join(f"{s},{d},{m},{p}\n" for p, s, d, m in rows))
    three = write(tmp_path / "three.csv", "music,PATH,dog,Split\n" + "".join(f"{m},{p},{d},{s}\n" for p, s, d, m in rows))
    a, b, c = (load_dataset(str(x)) for x in (one, two, three))
    for ds in (a, b):
        assert ds.taxonomy.categories == ("dog", "music")
        assert ds.labels("train").tolist() == [[1, 0], [0, 1]] and ds.labels("test").tolist() == [[1, 1]]
    # the taxonomy follows the category columns' order in the file
    assert c.taxonomy.categories == ("music", "dog")
    assert c.labels("train").tolist() == [[0, 1], [1, 0]]
    assert [e.path for e in c.train] == [e.path for e in a.train]


def test_csv_conforms_to_a_given_taxonomy(tmp_path):
    touch_wavs(tmp_path, ["a.wav", "b.wav"])
    csv = write(tmp_path / "l.csv", "path,split,music,dog\na.wav,train,1,0\nb.wav,test,0,1\n")
    ds = load_dataset(str(csv), taxonomy=Taxonomy(("dog", "music")))
    assert ds.taxonomy.categories == ("dog", "music")
    assert ds.labels("train").tolist() == [[0, 1]]
    with pytest.raises(DatasetError, match="missing: engine"):
        load_dataset(str(csv), taxonomy=Taxonomy(("dog", "music", "engine")))


# ---------------------------------------------------------------- CSV: labels column


def test_csv_labels_column(tmp_path):
    touch_wavs(tmp_path, ["a.wav", "b.wav", "c.wav"])
    csv = write(
        tmp_path / "l.csv",
        "labels,path,split\n"
        "dog; engine,a.wav,train\n"
        ",b.wav,train\n"
        "human-voice,c.wav,test\n",
    )
    ds = load_dataset(str(csv))
    assert ds.taxonomy == Taxonomy.default()
    tr = ds.labels("train")
    assert ds.taxonomy.names(tr[0]) == ["engine", "dog"]
    assert tr[1].sum() == 0  # no category: kept, evaluation reports it separately
    assert ds.taxonomy.names(ds.labels("test")[0]) == ["human-voice"]
    custom = load_dataset(str(csv), taxonomy=Taxonomy(("dog", "engine", "human-voice")))
    assert custom.labels("train").tolist() == [[1, 1, 0], [0, 0, 0]]


def test_csv_unknown_label_names(tmp_path):
    touch_wavs(tmp_path, ["a.wav", "b.wav"])
    csv = write(tmp_path / "l.csv", "path,labels,split\na.wav,dog;cat,train\nb.wav,meow,test\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(csv))
    msg = str(exc.value)
    assert "'cat' (row 2)" in msg and "'meow' (row 3)" in msg and "known: engine" in msg


# ---------------------------------------------------------------- CSV: splits


def _many(tmp_path: Path, n: int = 40) -> Path:
    names = [f"f{i:02d}.wav" for i in range(n)]
    touch_wavs(tmp_path, names[:1])
    for n_ in names[1:]:
        (tmp_path / n_).write_bytes((tmp_path / names[0]).read_bytes())
    lines = ["path,a,b"]
    for i, n_ in enumerate(names):
        lines.append(f"{n_},{i % 2},{1 if i % 4 == 0 else 0}")
    return write(tmp_path / "l.csv", "\n".join(lines) + "\n")


def test_csv_seeded_split_is_reproducible_and_stratified(tmp_path):
    csv = _many(tmp_path)
    a = load_dataset(str(csv), seed=3)
    b = load_dataset(str(csv), seed=3)
    c = load_dataset(str(csv), seed=4)
    names = lambda ds: [e.path.name for e in ds.test]  # noqa: E731
    assert names(a) == names(b)
    assert names(a) != names(c)
    assert len(a.test) == 8 and len(a.train) == 32
    # one in five of each label combination (10, 10 and 20 recordings) becomes a query
    from collections import Counter

    for ds in (a, c):
        assert Counter(map(tuple, ds.labels("test").tolist())) == {(0, 1): 2, (0, 0): 2, (1, 0): 4}
    assert "seeded" in a.info["split"]


def test_csv_validate_only_become_queries(tmp_path):
    touch_wavs(tmp_path, ["a.wav", "b.wav"])
    csv = write(tmp_path / "l.csv", "path,split,x\na.wav,train,1\nb.wav,validation,0\n")
    ds = load_dataset(str(csv))
    assert [e.path.name for e in ds.test] == ["b.wav"] and ds.validate == []


# ---------------------------------------------------------------- CSV: bad input


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,dog\na.wav,1\n", "no 'path' column"),
        ("path,split\na.wav,train\n", "no category columns"),
        ("path,dog,labels\na.wav,1,dog\n", "either a 'labels' column"),
        ("path,dog,split\na.wav,yes,train\n", "row 2, column 'dog': 'yes' is not 0 or 1"),
        ("path,dog,notes\na.wav,1,loud\n", "column 'notes': 'loud' is not 0 or 1"),
        ("path,dog,split\na.wav,1,train\nb.wav,1,holdout\n", "row 3: split 'holdout'"),
        ("path,dog,cat,split\na.wav,1,0,train\nb.wav,1,0,test\n", "no recording has category 'cat'"),
        ("path,dog,split\na.wav,1,train\na.wav,0,test\n", "listed twice (rows 2 and 3)"),
        ("path,dog,dog\na.wav,1,0\n", "duplicate column names: dog"),
        ("path,dog\n", "no data rows"),
        ("", "empty file"),
        ("path,dog,split\na.wav,1,train\nb.wav,0,train\n", "no usable recording in the test split"),
        ("path,dog\n,1\n", "row 2: empty path"),
        ("path,dog\na.wav,1,7\n", "more fields than the header"),
    ],
)
def test_csv_bad_input(tmp_path, text, message):
    touch_wavs(tmp_path, ["a.wav", "b.wav"])
    csv = write(tmp_path / "l.csv", text)
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(csv))
    assert message in str(exc.value)


def test_csv_missing_files_are_counted_listed_and_skipped(tmp_path):
    touch_wavs(tmp_path, ["a.wav", "b.wav"])
    csv = write(
        tmp_path / "l.csv",
        "path,split,dog\na.wav,train,1\ngone1.wav,train,0\nb.wav,test,0\nsub/gone2.wav,test,1\n",
    )
    ds = load_dataset(str(csv))
    assert ds.missing == [tmp_path / "gone1.wav", tmp_path / "sub" / "gone2.wav"]
    assert ds.info["missing"] == 2 and ds.info["missing_listed"][1].endswith("gone2.wav")
    assert [e.path.name for e in ds.train] == ["a.wav"] and [e.path.name for e in ds.test] == ["b.wav"]

    none = write(tmp_path / "none.csv", "path,dog\nx.wav,1\ny.wav,0\n")
    with pytest.raises(DatasetError, match="none of the 2 listed files exist"):
        load_dataset(str(none))


def test_csv_not_found_and_unknown_spec(tmp_path):
    with pytest.raises(DatasetError, match="labels CSV not found"):
        load_dataset(str(tmp_path / "nope.csv"))
    with pytest.raises(DatasetError, match="unknown dataset 'urbansound'"):
        load_dataset("urbansound")


def test_check_trainable(tmp_path):
    touch_wavs(tmp_path, [f"{c}.wav" for c in "abcdef"])
    ok = write(
        tmp_path / "ok.csv",
        "path,split,dog,music\na.wav,train,1,0\nb.wav,train,1,1\nc.wav,train,0,1\nd.wav,train,0,0\ne.wav,test,1,0\n",
    )
    check_trainable(load_dataset(str(ok)))
    thin = write(
        tmp_path / "thin.csv",
        "path,split,dog,music\na.wav,train,1,0\nb.wav,train,0,1\nc.wav,train,0,1\nd.wav,train,0,0\ne.wav,test,1,0\n",
    )
    with pytest.raises(DatasetError, match=r"dog \(1 with, 3 without\)"):
        check_trainable(load_dataset(str(thin)))


# ---------------------------------------------------------------- SONYC-UST layouts

COARSE = [
    "1_engine_presence", "2_machinery-impact_presence", "3_non-machinery-impact_presence",
    "4_powered-saw_presence", "5_alert-signal_presence", "6_music_presence",
    "7_human-voice_presence", "8_dog_presence",
]
FINE = ["1-1_small-sounding-engine_presence", "8-1_dog-barking-whining_presence"]


def annotations(rows) -> str:
    """rows: (split, filename, annotator_id, {category index: value})"""
    head = ["split", "sensor_id", "audio_filename", "annotator_id", "borough"] + FINE[:1] + COARSE + FINE[1:]
    lines = [",".join(head)]
    for split, fname, ann, vals in rows:
        coarse = [str(vals.get(i, 0)) for i in range(8)]
        lines.append(",".join([split, "7", fname, str(ann), "1", "-1"] + coarse + ["-1"]))
    return "\n".join(lines) + "\n"


def test_sonyc_v23_layout_and_aggregation(tmp_path):
    root = tmp_path / "sonyc"
    touch_wavs(root / "audio-0" / "audio", ["t1.wav", "t2.wav"])
    touch_wavs(root / "audio-1" / "audio", ["t3.wav", "q1.wav", "q2.wav", "v1.wav"])
    write(root / "annotations.csv", annotations([
        # train: any crowd volunteer (id > 0) marking a class makes it present
        ("train", "t1.wav", 11, {0: 1}),
        ("train", "t1.wav", 12, {6: 1}),
        ("train", "t1.wav", -3, {7: 1}),  # a team member: ignored when crowd rows exist
        ("train", "t2.wav", 13, {5: -1, 3: 0}),  # -1 = not labelled, not present
        ("train", "t3.wav", 0, {2: 1}),  # only a verified row: used as fallback
        ("train", "missing.wav", 11, {0: 1}),
        # test: the verified (id 0) row wins over the crowd
        ("test", "q1.wav", 14, {0: 1, 6: 1}),
        ("test", "q1.wav", 0, {6: 1}),
        ("test", "q2.wav", 15, {4: 1}),  # no verified row: crowd fallback
        ("validate", "v1.wav", 0, {7: 1}),
    ]))
    ds = load_dataset("sonyc-ust", data_dir=root)
    tax = ds.taxonomy
    assert tax == Taxonomy.default()
    train = {e.path.name: tax.names(e.labels) for e in ds.train}
    assert train == {"t1.wav": ["engine", "human-voice"], "t2.wav": [], "t3.wav": ["non-machinery-impact"]}
    test = {e.path.name: tax.names(e.labels) for e in ds.test}
    assert test == {"q1.wav": ["human-voice"], "q2.wav": ["alert-signal"]}
    assert [e.path.name for e in ds.validate] == ["v1.wav"]
    assert ds.info["version"] == "v2" and ds.info["query_split"] == "test"
    assert ds.missing == [root / "audio" / "missing.wav"]
    assert ds.info["label_sources"] == {"crowd-any": 4, "verified": 3, "team-any": 0}
    assert all(e.path.parent.parent.name.startswith("audio-") for e in ds.train)


def test_sonyc_v1_layout_uses_validate_as_queries(tmp_path):
    root = tmp_path / "v1"
    touch_wavs(root / "train", ["a.wav", "b.wav"])
    touch_wavs(root / "validate", ["c.wav"])
    write(root / "annotations.csv", annotations([
        ("train", "a.wav", 1, {0: 1}),
        ("train", "b.wav", 2, {7: 1}),
        ("validate", "c.wav", -1, {7: 1}),
        ("validate", "c.wav", 0, {7: 1, 0: 1}),
    ]))
    ds = load_dataset("sonyc-ust", data_dir=root)
    assert ds.info["version"] == "v1" and ds.info["query_split"] == "validate"
    assert [e.path.name for e in ds.test] == ["c.wav"] and ds.validate == []
    assert ds.taxonomy.names(ds.test[0].labels) == ["engine", "dog"]


def test_sonyc_bad_layouts(tmp_path):
    root = tmp_path / "s"
    write(root / "annotations.csv", annotations([("train", "a.wav", 1, {0: 1}), ("test", "b.wav", 0, {})]))
    with pytest.raises(DatasetError, match="no audio"):
        load_dataset("sonyc-ust", data_dir=root)
    write(root / "annotations.csv", "split,audio_filename,annotator_id,engine\ntrain,a.wav,1,1\n")
    with pytest.raises(DatasetError, match="no coarse label columns"):
        sonyc_ust.load(root)
    write(root / "annotations.csv", "audio_filename,x\na.wav,1\n")
    with pytest.raises(DatasetError, match="no column annotator_id, split"):
        sonyc_ust.load(root)
    touch_wavs(root / "audio", ["a.wav"])
    write(root / "annotations.csv", annotations([("train", "a.wav", 1, {0: 7})]))
    with pytest.raises(DatasetError, match="'7' is not 1, 0 or -1"):
        sonyc_ust.load(root)


# ---------------------------------------------------------------- features through the cache store


def test_dataset_features_cached_and_item_labels(tmp_path, store_dir):
    from soundsearch.features import get_featurizer
    from soundsearch.store import Store

    d = tmp_path / "lib"
    write_audio(d / "tone.wav", tone(440, 2.5))
    write_audio(d / "noise.wav", noise_bursts(1.0))
    write_audio(d / "chirp.wav", chirp(seconds=1.0))
    (d / "broken.wav").write_bytes(b"RIFF....not audio")
    csv = write(
        d / "l.csv",
        "path,split,tonal,noisy\ntone.wav,train,1,0\nnoise.wav,train,0,1\nbroken.wav,train,1,1\nchirp.wav,test,1,0\n",
    )
    ds = load_dataset(str(csv))
    fz = get_featurizer("logmel")
    cache = tmp_path / "cache"
    f = dataset_features(ds, fz, cache_store_dir=cache, jobs=1, item_seconds=1.0)
    # 2.5 s at 1 s items -> several items, each with the file's labels
    n_tone = sum(1 for it in f.train_items if it.path.name == "tone.wav")
    assert n_tone >= 2
    assert f.train_feats.shape == (n_tone + 1, fz.steps, fz.dim)
    assert f.train_feats.dtype == np.float32
    for it, lab, src in zip(f.train_items, f.train_labels, f.train_example):
        assert lab.tolist() == ds.train[src].labels.tolist()
        assert it.path.name == ds.train[src].path.name
    assert f.test_feats.shape == (1, fz.steps, fz.dim) and f.test_labels.tolist() == [[1, 0]]
    assert [p.name for p, _ in f.failed] == ["broken.wav"]
    with Store.open(cache) as store:
        before = store.fingerprint()
    again = dataset_features(ds, fz, cache_store_dir=cache, jobs=1, item_seconds=1.0)
    with Store.open(cache) as store:
        assert store.fingerprint() == before  # nothing recomputed or rewritten
    np.testing.assert_array_equal(again.train_feats, f.train_feats)


def test_csv_empty_class_allowed_under_a_given_taxonomy(tmp_path):
    touch_wavs(tmp_path, ["a.wav", "b.wav"])
    csv = write(tmp_path / "l.csv", "path,split,dog,cat\na.wav,train,1,0\nb.wav,test,0,0\n")
    with pytest.raises(DatasetError, match="no recording has category 'cat'"):
        load_dataset(str(csv))
    ds = load_dataset(str(csv), taxonomy=Taxonomy(("cat", "dog")))
    assert ds.info["empty_categories"] == ["cat"] and ds.labels("train").tolist() == [[0, 1]]
