"""Eval counts each recording once (evaluate/recordings.py), so a store that cuts long
recordings into finer, overlapping items is evaluated on the same footing as one that does not."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from conftest import chirp, noise_bursts, tone, write_audio
from soundsearch.cli import app
from soundsearch.evaluate.recordings import Recordings

from test_evaluate import CATS, make_model


def test_a_database_recording_counts_once_at_its_best_item_and_a_query_recording_once():
    # Database recordings: A = items 0, 1, 2; B = item 3; C = items 4, 5. Queries: q0 = items 0, 1; q1 = item 2.
    labels = np.eye(3, dtype=np.uint8)
    rec = Recordings(test_example=[7, 7, 9], train_example=[4, 4, 4, 5, 6, 6],
                     test_labels=labels[[0, 0, 1]], train_labels=labels[[0, 0, 0, 1, 2, 2]])
    assert (rec.n_queries, rec.n_database, rec.items_to_rank(2), rec.items_to_rank(1)) == (2, 3, 6, 3)
    order = np.array([[1, 0, 2, 4, 3, 5], [3, 5, 4, 0, 1, 2], [5, 1, 3, 0, 2, 4]])
    assert rec.rank_recordings(order, 3).tolist() == [[0, 2, 1], [1, 2, 0], [2, 0, 1]]
    assert rec.rank_recordings(order, 9).shape == (3, 3)  # never more than the recordings there are
    # The agreement is per database recording: A's three items are one answer, not three.
    assert rec.agreement().shape == (3, 3) and rec.agreement()[0].tolist() == [3, 1, 1]
    per = rec.per_recording({3: np.array([[1.0, 1.0], [0.0, 0.5], [0.25, 0.25]])})
    np.testing.assert_allclose(per[3], [[0.5, 0.75], [0.25, 0.25]])


def test_one_item_per_recording_changes_nothing():
    labels = np.eye(3, dtype=np.uint8)
    rec = Recordings([0, 1, 2], [0, 1, 2], labels, labels)
    order = np.array([[2, 0, 1], [0, 1, 2], [1, 2, 0]])
    assert rec.rank_recordings(order, 2).tolist() == order[:, :2].tolist()
    v = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(rec.per_recording({1: v})[1], v)


def test_eval_on_a_store_cut_finer_counts_recordings(tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDSEARCH_DATA", str(tmp_path / "data"))
    ds = tmp_path / "ds"
    lines = ["path,split," + ",".join(CATS)]
    rng = np.random.default_rng(0)
    combos = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)]
    for i in range(8):
        lab = combos[i % 4]
        sig = 0.003 * rng.standard_normal(22050 * 24).astype(np.float32)  # 24 s: several items
        for at in (3.0, 11.0, 19.0):
            a = int(at * 22050)
            if lab[0]:
                sig[a : a + 11025] += tone(300 + 40 * i, 0.5)
            if lab[1]:
                sig[a : a + 11025] += noise_bursts(0.5, seed=i)
            if lab[2]:
                sig[a : a + 11025] += chirp(200, 6000, 0.5)
        write_audio(ds / f"long{i}.wav", sig)
        lines.append(f"long{i}.wav,{'test' if i < 4 else 'train'}," + ",".join(map(str, lab)))
    (ds / "labels.csv").write_text("\n".join(lines) + "\n")
    model = make_model(tmp_path / "m.safetensors")
    docs = {}
    for name, cut in (("finer", ["--item-hop", "5", "--event-items", "6"]), ("windows", ["--item-hop", "10", "--event-items", "0"])):
        store = tmp_path / name
        r = CliRunner().invoke(app, ["index", str(ds), "--store", str(store), "-f", "logmel", "-j", "1", "-q", *cut])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(app, ["eval", "-d", str(ds / "labels.csv"), "-m", str(model), "--store", str(store), "--json", "-q", "-j", "1"])
        assert r.exit_code == 0, r.output
        docs[name] = json.loads(r.stdout)
    finer, windows = docs["finer"], docs["windows"]
    # Many more items, the same four recordings on each side.
    assert finer["dataset"]["database_items"] > windows["dataset"]["database_items"] >= 8
    assert finer["database_size"] == windows["database_size"] == 4
    assert finer["dataset"]["query_recordings"] == 4 and sum(finer["queries"].values()) == 4
    # The random baseline depends on recordings only: identical however they were cut.
    for group, by_s in finer["map"].items():
        for s, systems in by_s.items():
            assert systems["random"] == windows["map"][group][s]["random"]
