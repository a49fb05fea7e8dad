"""The evaluation protocol: groups, baselines, the model through the search engine, the corpus."""

from __future__ import annotations

import csv as csvlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from soundsearch import evaluate as ev
from soundsearch import metrics
from soundsearch.errors import DatasetError, ModelError, SoundsearchError

from conftest import chirp, noise_bursts, tone, write_audio
from test_metrics import ref_ap

CATS = ("tone", "noise", "chirp")


def make_dataset(root: Path, n: int = 24, seed: int = 0) -> Path:
    """Short synthesized recordings whose labels say which of three sounds were mixed in.

    Every label combination occurs, in both splits, so single-, multi- and no-category
    queries all exist.
    """
    rng = np.random.default_rng(seed)
    combos = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    lines = ["path,split," + ",".join(CATS)]
    sr = 22050
    for i in range(n):
        lab = combos[i % len(combos)]
        sig = 0.003 * rng.standard_normal(sr // 2).astype(np.float32)
        if lab[0]:
            sig += tone(250 + 40 * (i % 5), 0.5)
        if lab[1]:
            sig += noise_bursts(0.5, seed=i)
        if lab[2]:
            sig += chirp(200, 6000, 0.5)
        write_audio(root / f"s{i:02d}.wav", sig)
        split = "test" if (i // len(combos)) == 0 else "train"
        lines.append(f"s{i:02d}.wav,{split}," + ",".join(map(str, lab)))
    path = root / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_model(path: Path, categories=CATS, seed: int = 0) -> Path:
    """An untrained but complete model file (eval must rank with whatever it is given)."""
    import torch

    from soundsearch.features import get_featurizer
    from soundsearch.model.config import ModelConfig
    from soundsearch.model.checkpoint import save_model
    from soundsearch.model.network import PresenceNet
    from soundsearch.taxonomy import Taxonomy

    fz = get_featurizer("logmel")
    cfg = ModelConfig(steps=fz.steps, dim=fz.dim, n_categories=len(categories), tower=(32, 32), head=(32, 16))
    torch.manual_seed(seed)
    net = PresenceNet(cfg).eval()
    return save_model(
        path, net, cfg, Taxonomy(tuple(categories)), fz.spec(), fz.identity,
        np.full(fz.dim, -8.0, np.float32), np.full(fz.dim, 3.0, np.float32), {"seed": seed},
    )


# ------------------------------------------------------------------ building blocks


def test_query_groups():
    g = ev.query_groups(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1]]))
    assert g["single"].tolist() == [0, 3] and g["multi"].tolist() == [1, 4] and g["none"].tolist() == [2]


def test_top_order_matches_full_stable_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(7, 50)).astype(np.float32)  # many ties
    full = np.argsort(-scores, axis=1, kind="stable")
    np.testing.assert_array_equal(ev.top_order(scores, 10), full[:, :10])
    np.testing.assert_array_equal(ev.top_order(scores, 80), full)
    big = rng.integers(0, 6, size=(5, 400)).astype(np.float32)
    np.testing.assert_array_equal(ev.top_order(big, 30), np.argsort(-big, axis=1, kind="stable")[:, :30])


def test_pooled_and_cosine():
    feats = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mean, std = ev.feature_norm(feats)
    np.testing.assert_allclose(mean, feats.reshape(-1, 2).mean(0))
    z = (feats - mean) / std
    got = ev.pooled(feats, mean, std, ("mean", "std", "max"))
    np.testing.assert_allclose(got, np.concatenate([z.mean(1), z.std(1), z.max(1)], axis=1), rtol=1e-6)
    c = ev.cosine_scores(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    np.testing.assert_allclose(c, [[1.0, 0.0, np.sqrt(0.5)]])


def test_parse_ints():
    assert ev.parse_ints(["1,5", "10", "5"], "--k") == (1, 5, 10)
    assert ev.parse_ints(None, "--k") is None
    with pytest.raises(DatasetError, match="'x' is not a whole number"):
        ev.parse_ints(["1,x"], "--k")


# ------------------------------------------------------------------ the protocol on a small dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One synthesized dataset, an untrained model, and their evaluation, shared by the tests."""
    root = tmp_path_factory.mktemp("small")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUNDSEARCH_DATA", str(root / "data"))
        mp.setenv("SOUNDSEARCH_STORE", str(root / "store"))
        mp.setenv("SOUNDSEARCH_MODELS", str(root / "models"))
        # Near-duplicates of a query rank ahead of the model's order by design; these synthetic
        # tones have some, and tests/test_duplicates.py covers them: none count as such here,
        # so the model row is the model's own order (test_evaluate_small_dataset checks it).
        import soundsearch.search.ranking

        mp.setattr(soundsearch.search.ranking, "DUPLICATE_COSINE", 1.5)
        csv = make_dataset(root / "ds")
        model = make_model(root / "m.safetensors")
        report = ev.evaluate(str(csv), models=[str(model)], ks=(1, 3, 10), jobs=1)
        yield {"root": root, "csv": csv, "model": model, "report": report}


def _reference_cosine_map(feats_q, feats_d, q_labels, d_labels, idx, s, k):
    """Plain-Python cosine ranking + the paper's AP, for one group."""
    d_flat = feats_d.reshape(-1, feats_d.shape[-1]).astype(np.float64)
    mean, std = d_flat.mean(0), d_flat.std(0)
    std = np.where(std > 1e-8, std, 1.0)

    def vec(x):
        return ((x - mean) / std).mean(0)

    dvecs = [vec(x) for x in feats_d]
    aps = []
    for qi in idx:
        qv = vec(feats_q[qi])
        sims = []
        for i, dv in enumerate(dvecs):
            sims.append((-(qv @ dv) / (np.linalg.norm(qv) * np.linalg.norm(dv)), i))
        order = [i for _, i in sorted(sims)]
        rels = [sum(int(a == b) for a, b in zip(q_labels[qi], d_labels[i])) for i in order]
        aps.append(ref_ap(rels, s, k))
    return sum(aps) / len(aps)


def test_evaluate_small_dataset(small, monkeypatch):
    from soundsearch.datasets import dataset_features, feature_cache_dir, load_dataset
    from soundsearch.features import get_featurizer
    from soundsearch.model.checkpoint import load_model

    monkeypatch.setenv("SOUNDSEARCH_DATA", str(small["root"] / "data"))
    csv, model, report = small["csv"], small["model"], small["report"]

    assert report.thresholds == (3, 2) and report.ks == (1, 3, 10)
    assert {g: len(i) for g, i in report.groups.items()} == {"single": 3, "multi": 4, "none": 1}
    assert report.database_size == 16
    assert [s.name for s in report.systems] == ["m", "random", "cosine (mean)", "cosine (mean+std+max)", "cosine (whole-item stats)"]
    assert report.notes and "1 queries hold no category" in report.notes[0]

    # Every figure against independent computations on the same cached features.
    ds = load_dataset(str(csv))
    fz = get_featurizer("logmel")
    feats = dataset_features(ds, fz, cache_store_dir=feature_cache_dir(fz, dataset=ds), jobs=1)
    agree = metrics.agreement(feats.test_labels, feats.train_labels)
    for g, idx in report.groups.items():
        for s in (3, 2):
            exact = [np.mean([metrics.expected_random_ap(16, int((agree[q] >= s).sum()), k) for q in idx]) for k in (1, 3, 10)]
            np.testing.assert_allclose(report.map("random", g, s), exact, atol=1e-12)
            ref = [
                _reference_cosine_map(feats.test_feats, feats.train_feats, feats.test_labels, feats.train_labels, idx, s, k)
                for k in (1, 3, 10)
            ]
            np.testing.assert_allclose(report.map("cosine (mean)", g, s), ref, atol=1e-9)

    # The model row ranks by the model's own predicted level: brute-force pair scoring must
    # give a non-increasing level down each ranking the engine produced (no near-duplicates
    # here: see the fixture).
    lm = load_model(model)
    from soundsearch.store import Store

    with Store.open(feature_cache_dir(fz, dataset=ds)) as store:
        db_rows = np.array([it.row for it in feats.train_items])
        order = ev.model_order(lm, store, db_rows, feats.test_feats, 16)
    assert sorted(order[0].tolist()) == list(range(16))
    for q in range(len(feats.test_feats)):
        levels = lm.score_pairs(feats.test_feats[q], feats.train_feats).level
        ranked = levels[order[q]]
        assert (np.diff(ranked) <= 0).all(), ranked
    aps = {s: metrics.ap_at_k(agree, order, s, (1, 3, 10)) for s in (3, 2)}
    for g, idx in report.groups.items():
        np.testing.assert_allclose(report.map("m", g, 3), metrics.mean_ap(aps[3][idx]))

    doc = report.to_json()
    json.dumps(doc)  # serialisable
    assert doc["queries"] == {"single": 3, "multi": 4, "none": 1} and doc["database_size"] == 16
    assert doc["map"]["multi"]["2"]["cosine (mean)"]["10"] == pytest.approx(report.map("cosine (mean)", "multi", 2)[2], abs=1e-6)
    assert doc["systems"][0]["kind"] == "model" and doc["systems"][0]["path"] == str(model)
    assert doc["dataset"]["categories"] == list(CATS)
    # single-label queries by category: one per category here, and they average to the group
    by_cat = doc["single_by_category"]
    assert {c: v["queries"] for c, v in by_cat.items()} == {"tone": 1, "noise": 1, "chirp": 1}
    for s in ("3", "2"):
        mean = np.mean([by_cat[c][s]["random"]["10"] for c in CATS])
        assert mean == pytest.approx(doc["map"]["single"][s]["random"]["10"], abs=1e-5)


def test_evaluate_refuses_mismatched_taxonomy(small, tmp_path, store_dir):
    other = make_model(tmp_path / "other.safetensors", categories=("dog", "engine", "music"))
    with pytest.raises(DatasetError) as exc:
        ev.evaluate(str(small["csv"]), models=[str(other)], jobs=1)
    msg = str(exc.value)
    assert "categories (tone, noise, chirp) do not match the expected ones (dog, engine, music)" in msg
    assert "not expected: chirp, noise, tone; missing: dog, engine, music" in msg


def test_evaluate_bad_thresholds_and_ks(small, store_dir):
    csv, model = small["csv"], str(small["model"])
    with pytest.raises(DatasetError, match="between 1 and the number of categories \\(3\\)"):
        ev.evaluate(str(csv), models=[model], thresholds=(4,), jobs=1)
    with pytest.raises(DatasetError, match="K values must be positive"):
        ev.evaluate(str(csv), models=[model], ks=(0, 5), jobs=1)


def test_evaluate_without_default_model(small, store_dir, monkeypatch):
    from soundsearch import paths

    monkeypatch.setattr(paths, "shipped_models_dirs", lambda: [])
    with pytest.raises(ModelError, match="no default model"):
        ev.evaluate(str(small["csv"]), jobs=1)


def test_plot_report(small, tmp_path):
    png = ev.plot_report(small["report"], tmp_path / "out" / "fig.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_without_matplotlib(small, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(SoundsearchError, match=r"pip install 'soundsearch\[plot\]'"):
        ev.plot_report(small["report"], tmp_path / "fig.png")
    assert not (tmp_path / "fig.png").exists()


def test_variants_are_trained_and_reported(tmp_path, store_dir):
    from soundsearch.training.config import TrainConfig

    csv = make_dataset(tmp_path / "ds", n=40)
    small = TrainConfig(seed=0, epochs=1, refit=False, pairs_per_side=2, tower=(8,), head=(8, 8), threads=1)
    report = ev.evaluate(str(csv), variants=True, variant_config=small, ks=(1, 5), jobs=1)
    names = [s.name for s in report.systems]
    assert names[:8] == [
        "variant siamese+single+attention", "variant siamese+single+mean-pool",
        "variant siamese+per-category+attention", "variant siamese+per-category+mean-pool",
        "variant no-siamese+single+attention", "variant no-siamese+single+mean-pool",
        "variant no-siamese+per-category+attention", "variant no-siamese+per-category+mean-pool",
    ]
    assert names[8:] == ["random", "cosine (mean)", "cosine (mean+std+max)", "cosine (whole-item stats)"]
    for s in report.systems[:8]:
        assert s.kind == "variant" and s.details["train_seconds"] >= 0
        assert all(np.isfinite(report.map(s, "multi", 2)))


# ------------------------------------------------------------------ scale


def test_paper_sized_scoring_is_cheap():
    """426 queries x 2,351 items, 8 categories: agreement, random and every AP, bounded work."""
    rng = np.random.default_rng(0)
    q = (rng.random((426, 8)) < 0.25).astype(np.uint8)
    d = (rng.random((2351, 8)) < 0.25).astype(np.uint8)
    metrics._expected_random_ap.cache_clear()
    agree = metrics.agreement(q, d)
    assert agree.shape == (426, 2351)
    order = ev.top_order(rng.random((426, 2351)), 100)
    assert order.shape == (426, 100)  # only the top K is ranked, not all 2,351
    distinct = 0
    for s in (8, 7):
        ap = metrics.ap_at_k(agree, order, s)
        assert ap.shape == (426, len(metrics.DEFAULT_KS)) and np.isfinite(ap).all()
        metrics.random_ap(agree, s)
        distinct += len(np.unique((agree >= s).sum(1)))
    # The exact random expectation is computed once per distinct hit count and K, not per query.
    assert metrics._expected_random_ap.cache_info().misses <= distinct * len(metrics.DEFAULT_KS)


# ------------------------------------------------------------------ the real corpus


def corpus_labels(corpus: Path, out: Path, per_category: int = 40) -> Path:
    """A labels CSV over the corpus's shortest recordings per category (ambiences left out).

    Ambiences hold no category; with them every single-label query would count them as
    near-matches at s = C - 1 and the test would measure little.
    """
    with (corpus / "manifest.csv").open(newline="") as fh:
        rows = list(csvlib.DictReader(fh))
    per: dict[str, int] = {}
    lines = ["path,labels"]
    for r in sorted(rows, key=lambda r: (float(r["duration_s"]), r["file"])):
        if r["category"] == "background":
            continue
        per[r["category"]] = per.get(r["category"], 0) + 1
        if per[r["category"]] > per_category:
            continue
        labels = [r["category"]] + [x for x in r["also"].split(";") if x and x != "background"]
        lines.append(f"{corpus / r['file']},{';'.join(dict.fromkeys(labels))}")
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.slow
def test_trained_model_beats_random_on_corpus(corpus, tmp_path, store_dir):
    from soundsearch.datasets import check_trainable, dataset_features, load_dataset
    from soundsearch.features import get_featurizer
    from soundsearch.training.fit import fit
    from soundsearch.training.config import TrainConfig

    labels = corpus_labels(corpus, tmp_path / "corpus.csv")
    ds = load_dataset(str(labels), seed=0)
    check_trainable(ds)
    fz = get_featurizer("logmel")
    feats = dataset_features(ds, fz, jobs=1)
    # A reduced recipe (narrower net, fewer pairs and epochs) so the test stays in CI's time,
    # with item context statistics, which carry over to unheard recordings. Measured mAP_7@10
    # margin over random for seeds 0-3: +0.15, +0.12, +0.10, +0.16 (random 0.31).
    cfg = TrainConfig(
        seed=0, epochs=5, refit=False, pairs_per_side=8, batch_size=256, lr=2e-3,
        tower=(64, 64, 64), head=(128, 64), context="stats", threads=1,
    )
    result = fit(feats.train_feats, feats.train_labels, ds.taxonomy, fz.spec(), fz.identity, cfg, groups=feats.train_example)
    model_path = result.model.save(tmp_path / "corpus-model.safetensors")

    report = ev.evaluate(str(labels), models=[str(model_path)], ks=(1, 5, 10), seed=0, jobs=1)
    assert len(report.groups["single"]) >= 30
    model = report.map("corpus-model", "single", 7)[2]
    rand = report.map("random", "single", 7)[2]
    assert model > rand + 0.05, (model, rand)


def test_same_named_models_are_kept_apart(small, tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDSEARCH_DATA", str(small["root"] / "data"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = make_model(tmp_path / "a" / "random.safetensors", seed=1)
    two = make_model(tmp_path / "b" / "random.safetensors", seed=2)
    report = ev.evaluate(str(small["csv"]), models=[str(one), str(two)], ks=(1, 5), jobs=1)
    names = [s.name for s in report.systems]
    assert names == ["random (2)", "random (3)", "random", "cosine (mean)", "cosine (mean+std+max)", "cosine (whole-item stats)"]
    doc = report.to_json()
    assert set(doc["map"]["multi"]["3"]) == set(names)
    assert doc["systems"][0]["path"] == str(one) and doc["systems"][1]["path"] == str(two)
