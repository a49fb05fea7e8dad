"""`soundsearch query` end to end: table at 80 columns, JSON, filters, and one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import chirp, noise_bursts, tone, write_audio
from soundsearch.cli import app
from soundsearch.indexing import index_paths
from soundsearch.model.config import ModelConfig
from soundsearch.model.checkpoint import save_model
from soundsearch.model.network import PresenceNet
from soundsearch.presence import STATES
from soundsearch.store import Store
from soundsearch.taxonomy import Taxonomy

CATS = list(Taxonomy.default().categories)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> dict:
    """A small indexed library (short files and one long windowed recording) and two models."""
    root = tmp_path_factory.mktemp("query")
    lib = root / "library"
    for f in (220, 330, 440, 550, 660):
        write_audio(lib / "tones" / f"tone-{f}.wav", tone(f, 1.5))
    for seed in range(3):
        write_audio(lib / "noise" / f"bursts-{seed}.flac", noise_bursts(2.0, seed=seed))
    deep = lib / "field recordings" / "a rather long folder name for a session" / "take 3"
    write_audio(deep / "street-ambience-with-a-long-descriptive-file-name.wav", np.concatenate([chirp(seconds=4.0)] * 6))
    store_dir = root / "store"
    # Consecutive windows (the cutting of stores made before finer items), so item counts
    # below are those of the files' lengths; test_moments.py searches finer items.
    index_paths(store_dir, [lib], jobs=1, item_hop=10.0, event_items=0)
    with Store.open(store_dir) as st:
        feats = np.asarray(st.features())
        spec, identity = st.featurizer_spec, st.featurizer_identity
        n = feats.shape[0]
    models = root / "models"
    torch.manual_seed(0)
    config = ModelConfig(steps=feats.shape[1], dim=feats.shape[2], n_categories=len(CATS))
    mean, std = feats.mean((0, 1)), feats.std((0, 1)) + 1e-3
    save_model(models / "tiny.safetensors", PresenceNet(config).eval(), config, Taxonomy.default(), spec, identity, mean, std)
    save_model(models / "other-features.safetensors", PresenceNet(config).eval(), config, Taxonomy.default(),
               spec, identity + "-different", mean, std)
    return {"root": root, "lib": lib, "store": store_dir, "models": models, "items": n, "long": deep / "street-ambience-with-a-long-descriptive-file-name.wav"}


@pytest.fixture
def env(library, monkeypatch):
    monkeypatch.setenv("SOUNDSEARCH_STORE", str(library["store"]))
    monkeypatch.setenv("SOUNDSEARCH_MODELS", str(library["models"]))
    monkeypatch.setenv("COLUMNS", "80")
    return library


def run(*args: str):
    return CliRunner().invoke(app, ["query", *args])


def run_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_table_fits_80_columns_and_the_query_ranks_itself_first(env):
    query = env["lib"] / "tones" / "tone-330.wav"
    result = run(str(query), "--model", "tiny", "--include-self")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if re.match(r"^\s*\d+\s+\d/8\s", line)]
    assert len(rows) == 10  # one line per result: nothing wrapped
    # Cut from the left at 80 columns (8 headed category columns take 27): the name stays.
    assert rows[0].split()[0] == "1" and "330.wav (query)" in rows[0]
    # The long recording's windows carry time ranges, its long path is cut from the left.
    windowed = [line for line in rows if "–" in line]
    assert windowed and all("…" in line and ".wav" in line for line in windowed)
    # One headed column per category, one glyph each, saying who has the sound.
    header = next(line for line in lines if line.lstrip().startswith("#"))
    assert header.split()[-8:] == ["eng", "mi", "nmi", "ps", "as", "mus", "hv", "dog"]
    for line in rows:
        glyphs = line.split()[-8:]
        assert all(len(g) == 1 for g in glyphs) and set(glyphs) <= set("●·◐◑")
    assert "eng=engine" in result.stdout and "dog=dog" in result.stdout
    assert "● both have it" in result.stdout and "◐ only the query has it" in result.stdout


def test_the_query_itself_is_hidden_by_default_and_pipes_keep_full_paths(env, monkeypatch):
    query = env["lib"] / "tones" / "tone-330.wav"
    monkeypatch.delenv("COLUMNS")
    result = run(str(query), "--model", "tiny", "-k", "50")
    assert result.exit_code == 0, result.output
    assert "(query)" not in result.stdout and "query's own item hidden" in result.stdout
    rows = [line for line in result.stdout.splitlines() if re.match(r"^\s*\d+\s+\d/8\s", line)]
    assert len(rows) == env["items"] - 1  # every item but the query's own
    # Not a terminal and no COLUMNS: nothing cut, the deep path is whole.
    assert any("a rather long folder name for a session/take 3/street-ambience-with-a-long-descriptive-file-name.wav" in r for r in rows)
    assert "…" not in result.stdout
    paths = run(str(query), "--model", "tiny", "-k", "50", "--paths").stdout.splitlines()
    assert str(query) not in paths and str(env["long"]) in paths and len(paths) == len(set(paths))


def test_exports_and_filter_notes(env, tmp_path):
    query = env["lib"] / "tones" / "tone-330.wav"
    result = run(str(query), "--model", "tiny", "-k", "6", "--csv", str(tmp_path / "r.csv"),
                 "--m3u", str(tmp_path / "r.m3u"), "--html", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.output
    doc = run_json(str(query), "--model", "tiny", "-k", "6")
    csv_lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[1].split(",")[1] == doc["results"][0]["path"]
    m3u = (tmp_path / "r.m3u").read_text().splitlines()
    assert m3u[0] == "#EXTM3U" and [l for l in m3u if not l.startswith("#")] == [r["path"] for r in doc["results"]]
    windowed = [r for r in doc["results"] if r["windowed"]]
    if windowed:
        assert f"#EXTVLCOPT:start-time={windowed[0]['start']:.3f}" in m3u
    page = (tmp_path / "r.html").read_text()
    assert page.count('class="card result"') == 6 and "https://" not in page
    # A filter that removes nothing says why.
    qp = doc["query"]["presence"]
    absent = next(c for c in CATS if qp[c] < 0.5 and all(r["categories"][c]["state"] != "both" for r in doc["results"]))
    doc2 = run_json(str(query), "--model", "tiny", "-k", "6", "--exclude", absent)
    if doc2["filter_effects"]["exclude"][absent] == 0:
        out = run(str(query), "--model", "tiny", "-k", "6", "--exclude", absent).stdout
        assert f"--exclude {absent} removed nothing: the model finds no {absent.replace('-', ' ')} in the query" in out


def test_json_is_one_document_with_probabilities(env):
    query = env["lib"] / "noise" / "bursts-1.flac"
    doc = run_json(str(query), "--model", "tiny", "-k", "4", "--include-self")
    assert doc["query"]["path"] == str(query) and doc["query"]["in_store"] is True
    assert doc["model"]["name"] == "tiny" and doc["store"] == str(env["store"])
    assert doc["featurizer"]["name"] == "aisfx" and doc["categories"] == CATS  # the default featurizer
    assert doc["items_searched"] == env["items"]
    results = doc["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert results[0]["path"] == str(query) and results[0]["is_query"] is True
    # Paired with itself a recording agrees on every category: level C, no "differs" state,
    # and the breakdown is the model's both/neither split (what it thinks the query holds).
    me = results[0]
    assert me["level"] == len(CATS) and me["score"] == pytest.approx(len(CATS))
    assert all(me["categories"][c]["differs"] == 0.0 for c in CATS)
    for r in results:
        assert set(r) >= {"rank", "path", "start", "end", "level", "score", "categories"}
        agree = 0
        for cat in CATS:
            cell = r["categories"][cat]
            probs = [cell[s] for s in STATES]
            assert abs(sum(probs) - 1) < 1e-4
            assert cell["state"] == STATES[int(np.argmax(probs))]
            agree += cell["state"] != "differs"
            r_score = r["score"]
        assert r["level"] == agree
        assert abs(r_score - sum(r["categories"][c]["both"] + r["categories"][c]["neither"] for c in CATS)) < 1e-4
    # The other noise bursts (same gating, another seed) are acoustically the same sound:
    # near-duplicates, right after the query by acoustic cosine; the rest in presence order.
    dups = [r for r in results[1:] if r["duplicate"]]
    assert [r["acoustic"] for r in dups] == sorted((r["acoustic"] for r in dups), reverse=True)
    assert all(r["path"].endswith(".flac") for r in dups)
    others = results[1 + len(dups) :]
    assert not any(r["duplicate"] for r in others)
    keys = [(r["level"], r["score"]) for r in others]
    assert keys == sorted(keys, reverse=True)
    assert doc["mode"] == "presence" and doc["weight"] is None  # the model records no ranking


def test_long_query_scores_all_its_items(env):
    doc = run_json(str(env["long"]), "--model", "tiny", "-k", "3", "--include-self")
    assert len(doc["query"]["items"]) == 3
    assert doc["query"]["items"][0] == {"start": 0.0, "end": 10.0}
    # All three windows of the query recording come first, as the query itself.
    assert all(r["is_query"] and r["path"] == str(env["long"]) for r in doc["results"])
    assert sorted(r["start"] for r in doc["results"]) == [0.0, 10.0, 20.0]


def test_query_from_outside_the_store(env, tmp_path):
    outside = write_audio(tmp_path / "new.wav", tone(440, 1.0) + noise_bursts(1.0, seed=7))
    doc = run_json(str(outside), "--model", "tiny", "-k", "20")
    assert doc["query"]["in_store"] is False
    assert len(doc["results"]) == env["items"] and not any(r["is_query"] for r in doc["results"])


def test_filters_on_the_command_line(env):
    query = str(env["lib"] / "tones" / "tone-220.wav")
    every = run_json(query, "--model", "tiny", "-k", "50")["results"]
    counts = {c: sum(r["categories"][c]["state"] == "both" for r in every) for c in CATS}
    cat = next(c for c in CATS if 0 < counts[c] < len(every))
    kept = run_json(query, "--model", "tiny", "-k", "50", "--require", cat)
    assert kept["matches"] == counts[cat] and all(r["categories"][cat]["state"] == "both" for r in kept["results"])
    dropped = run_json(query, "--model", "tiny", "-k", "50", "--exclude", cat)
    assert dropped["matches"] == len(every) - counts[cat]
    assert all(r["categories"][cat]["state"] != "both" for r in dropped["results"])
    top = max(r["level"] for r in every)
    strong = run_json(query, "--model", "tiny", "-k", "50", "--min-level", str(top))
    assert strong["matches"] == sum(r["level"] >= top for r in every) and strong["filters"]["min_level"] == top
    none = run(query, "--model", "tiny", "--min-level", "8", "--require", "dog", "--require", "music")
    assert none.exit_code == 0


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_category_lists_the_valid_ones(env):
    result = run(str(env["lib"] / "tones" / "tone-220.wav"), "--model", "tiny", "--require", "cat")
    one_line_error(result, "'cat'", "engine", "human-voice", "dog")


def test_bad_query_files(env, tmp_path):
    fake = tmp_path / "not-audio.wav"
    fake.write_text("this is text, not a RIFF file")
    one_line_error(run(str(fake), "--model", "tiny"), "not-audio.wav")
    one_line_error(run(str(tmp_path / "missing.wav"), "--model", "tiny"), "missing.wav", "no such file")
    one_line_error(run(str(tmp_path), "--model", "tiny"), "is a folder")


def test_store_and_model_problems(env, tmp_path, monkeypatch):
    query = str(env["lib"] / "tones" / "tone-220.wav")
    one_line_error(run(query, "--model", "other-features"), "trained on features")
    one_line_error(run(query, "--model", "tiny", "--store", str(tmp_path / "nowhere")), "no store at", "soundsearch index")
    empty = tmp_path / "empty"
    with Store.open(env["store"]) as st:
        Store.open(empty, create=True, featurizer=st.featurizer()).close()
    one_line_error(run(query, "--model", "tiny", "--store", str(empty)), "holds no items")
    one_line_error(run(query, "--model", "no-such-model"), "no model named 'no-such-model'", "tiny")
    # No --model and no shipped default: say what to do.
    import soundsearch.paths

    monkeypatch.setattr(soundsearch.paths, "shipped_models_dirs", lambda: [])
    one_line_error(run(query), "no default model", "--model")


def test_cache_is_reused_between_runs(env):
    query = str(env["lib"] / "tones" / "tone-550.wav")
    first = run_json(query, "--model", "tiny")
    cache = sorted((env["store"] / "cache").glob("search-*.npy"))
    assert cache
    stamp = [p.stat().st_mtime_ns for p in cache]
    second = run(query, "--model", "tiny", "--json")
    assert "preparing the search cache" not in second.stderr
    assert json.loads(second.stdout) == first
    assert [p.stat().st_mtime_ns for p in sorted((env["store"] / "cache").glob("search-*.npy"))] == stamp
