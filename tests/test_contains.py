"""The query's own sound found inside long recordings (search.contains, search.prints): located
to the frame, ranked right after the query's copies, named in the table, JSON and page."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import chirp, tone, write_audio
from soundsearch.cli import app
from soundsearch.model.checkpoint import save_model
from soundsearch.model.config import ModelConfig
from soundsearch.model.network import PresenceNet
from soundsearch.search.contains import CONTAINS_SCORE, places, scan
from soundsearch.search.prints import PRINTS_DIR, dequantise, quantise, signal_print
from soundsearch.store import Store
from soundsearch.taxonomy import Taxonomy

SR = 22050
CALL_AT = (12.5, 41.25)  # where the call is mixed into the street recording, at 0 dB
GARDEN_AT = (5.0, 22.0)  # and into the garden recording, 12 dB over its background


def bed(seconds: float, seed: int) -> np.ndarray:
    """Traffic-like noise: low-passed, slowly swelling."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * SR))
    x = np.convolve(x, np.ones(8) / 8, mode="same")
    swell = 1.0 + 0.5 * np.sin(2 * np.pi * np.arange(x.size) / SR / 7.0)
    return (0.05 * x * swell).astype(np.float32)


def call() -> np.ndarray:
    """A bird-like call: three rising chirps with gaps, 0.9 s."""
    gap = np.zeros(int(0.1 * SR), np.float32)
    parts = [chirp(1500, 3000, 0.2, amp=0.3), gap, chirp(2000, 4000, 0.2, amp=0.3), gap, chirp(1800, 3500, 0.3, amp=0.3)]
    return np.concatenate(parts)


def mix(x: np.ndarray, event: np.ndarray, at: float, ratio_db: float = 0.0) -> np.ndarray:
    """`event` added at `at` s, its RMS `ratio_db` over the bed's there."""
    y = x.copy()
    i = int(at * SR)
    seg = y[i : i + event.size]
    gain = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) * 10 ** (ratio_db / 20) / np.sqrt(np.mean(event.astype(np.float64) ** 2))
    y[i : i + event.size] += (gain * event).astype(np.float32)
    return y


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("contains")
    library = root / "library"
    street = bed(70.0, 1)
    for at in CALL_AT:
        street = mix(street, call(), at, 0.0)
    write_audio(library / "street.wav", street)
    garden = bed(30.0, 5)
    for at in GARDEN_AT:
        garden = mix(garden, call(), at, 12.0)
    write_audio(library / "garden.wav", garden)
    write_audio(library / "park.wav", bed(30.0, 2))  # long, without the call
    write_audio(library / "sweep.wav", chirp(seconds=2.0))
    write_audio(library / "beep.wav", tone(2500, 0.6))
    outside = root / "outside"
    write_audio(outside / "call.wav", call())
    write_audio(outside / "other-call.wav", np.concatenate([tone(1200, 0.3), np.zeros(2205, np.float32), tone(900, 0.3)]))
    store = root / "store"
    result = CliRunner().invoke(app, ["index", str(library), "--store", str(store), "--featurizer", "logmel", "--jobs", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    with Store.open(store) as st:
        feats = np.asarray(st.features())
        spec, identity = st.featurizer_spec, st.featurizer_identity
    torch.manual_seed(0)
    cats = Taxonomy.default()
    config = ModelConfig(steps=feats.shape[1], dim=feats.shape[2], n_categories=len(cats.categories))
    model = root / "models" / "tiny.safetensors"
    save_model(model, PresenceNet(config).eval(), config, cats, spec, identity, feats.mean((0, 1)), feats.std((0, 1)) + 1e-3)
    return {"root": root, "lib": library, "store": store, "model": model, "outside": outside, "report": report}


def query(m: dict, *args: str):
    return CliRunner().invoke(app, ["query", *args, "--store", str(m["store"]), "--model", str(m["model"]), "--mode", "acoustic"])


def query_json(m: dict, *args: str) -> dict:
    result = query(m, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_index_prints_long_recordings_only(lib):
    assert lib["report"]["prints"] == 3  # street, garden and park; the one-shots get none
    prints = sorted((lib["store"] / PRINTS_DIR).glob("*.npy"))
    assert len(prints) == 3
    frames = sorted(np.load(p).shape[0] for p in prints)
    assert frames[0] == frames[1] == 1 + (30 * 16000 - 1024) // 256 and frames[2] == 1 + (70 * 16000 - 1024) // 256


def test_the_call_is_found_at_both_places_it_was_mixed_in(lib):
    doc = query_json(lib, str(lib["outside"] / "call.wav"), "-k", "6")
    top = doc["results"][:4]
    found = sorted((r["display"], r["moment"]["start"]) for r in top)
    # Located to the 16 ms frame, though the items are 10 s windows and event items.
    assert [name for name, _ in found] == ["garden.wav", "garden.wav", "street.wav", "street.wav"]
    for (_, start), at in zip(found, GARDEN_AT + CALL_AT):
        assert start == pytest.approx(at, abs=0.03)
    # Louder over its background, the call matches better: the garden's places come first.
    assert [r["display"] for r in top[:2]] == ["garden.wav", "garden.wav"]
    for r in top:
        assert r["contains"] >= CONTAINS_SCORE
        assert r["moment"]["end"] - r["moment"]["start"] == pytest.approx(0.9, abs=0.1)
        assert r["start"] <= r["moment"]["start"] + 0.05 and r["end"] >= r["moment"]["end"] - 0.05  # its item holds it
    assert all(r["contains"] is None for r in doc["results"][4:])


def test_a_sound_that_is_not_there_is_claimed_nowhere(lib):
    doc = query_json(lib, str(lib["outside"] / "other-call.wav"), "-k", "10")
    assert doc["results"] and all(r["contains"] is None for r in doc["results"])


def test_a_region_query_finds_the_other_place_but_not_itself(lib):
    a, b = GARDEN_AT
    doc = query_json(lib, str(lib["lib"] / "garden.wav"), "--start", f"{a - 0.05:.2f}", "--end", f"{a + 0.95:.2f}", "-k", "4")
    # The call's other occurrence in the same recording ranks among the first two: as a copy
    # (an event item cut around it) or as a place holding it (a window).
    other = [r for r in doc["results"][:2]
             if r["display"] == "garden.wav" and r["moment"]["start"] < b + 0.9 and r["moment"]["end"] > b]
    assert other and (other[0]["duplicate"] or other[0]["contains"] is not None)
    # The region itself is never claimed as a place the query's sound was found.
    assert not [r for r in doc["results"] if r["contains"] is not None and r["display"] == "garden.wav"
                and r["moment"]["start"] < a + 0.95 and r["moment"]["end"] > a - 0.05]


def test_table_and_page_show_the_place(lib):
    result = query(lib, str(lib["outside"] / "call.wav"), "-k", "3")
    assert result.exit_code == 0, result.output
    assert "⊃ 0:05–0:05.9" in result.stdout and "the query's own sound was found there" in result.stdout
    page = lib["root"] / "call.html"
    result = query(lib, str(lib["outside"] / "call.wav"), "-k", "3", "--html", str(page))
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert html.count(">holds the query</span>") == 3
    import re

    starts = [float(x) for x in re.findall(r'data-start="([0-9.]+)"', html)]
    # Each player starts at the place found, not at its item's start; so does the playlist.
    assert any(abs(x - GARDEN_AT[0]) < 0.03 for x in starts) and any(abs(x - GARDEN_AT[1]) < 0.03 for x in starts)
    m3u = lib["root"] / "call.m3u"
    assert query(lib, str(lib["outside"] / "call.wav"), "-k", "1", "--m3u", str(m3u)).exit_code == 0
    starts = [float(x) for x in re.findall(r"start-time=([0-9.]+)", m3u.read_text())]
    assert len(starts) == 1 and abs(starts[0] - GARDEN_AT[1]) < 0.03


def test_prints_follow_the_recording(lib, tmp_path):
    # A changed recording gets a new print on the next index, and the old one goes.
    import shutil

    library = tmp_path / "library"
    shutil.copytree(lib["lib"], library)
    store = tmp_path / "store"
    assert CliRunner().invoke(app, ["index", str(library), "--store", str(store), "--featurizer", "logmel", "--jobs", "1"]).exit_code == 0
    before = {p.name for p in (store / PRINTS_DIR).glob("*.npy")}
    street = mix(bed(70.0, 1), call(), 30.0, 0.0)
    write_audio(library / "street.wav", street)
    os.utime(library / "street.wav", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    assert CliRunner().invoke(app, ["index", str(library), "--store", str(store), "--jobs", "1"]).exit_code == 0
    after = {p.name for p in (store / PRINTS_DIR).glob("*.npy")}
    assert len(after) == 3 and len(after & before) == 2  # park's and garden's kept, street's replaced
    # A print lost from the folder is made again by the next search, which still finds the call.
    for p in (store / PRINTS_DIR).glob("*.npy"):
        p.unlink()
    m = dict(lib, store=store)
    doc = query_json(m, str(lib["outside"] / "call.wav"), "-k", "3")
    street = [r for r in doc["results"] if r["display"] == "street.wav"]
    assert street and street[0]["moment"]["start"] == pytest.approx(30.0, abs=0.03)
    assert len(list((store / PRINTS_DIR).glob("*.npy"))) == 3


def test_scan_scores_the_exact_place_highest_and_flat_stretches_zero():
    rng = np.random.default_rng(0)
    q = rng.uniform(-10, 10, (20, 40)).astype(np.float32)
    host = rng.uniform(-30, -20, (300, 40)).astype(np.float32)
    host[100:120] = q
    host[200:260] = -40.0  # digital silence's clipped floor: no shape to follow
    s = scan(q, quantise(host))
    assert s.shape == (281,)
    assert int(np.argmax(s)) == 100 and s[100] > 0.99
    assert np.all(s[200:241] == 0.0)
    assert places(s, 20) == [(100, pytest.approx(float(s[100])))]
    assert scan(q, quantise(host[:10])).size == 0  # a print shorter than the query holds nothing


def test_print_is_the_same_whatever_the_blocks():
    x = bed(65.0, 3)[: 65 * 16000]  # treated as 16 kHz samples here
    whole = signal_print([x])
    pieces = signal_print(np.array_split(x, 37))
    assert whole.shape == (1 + (x.size - 1024) // 256, 40)
    np.testing.assert_array_equal(whole, pieces)
    assert np.abs(dequantise(quantise(np.array([-3.3, 20.1]))) - [-3.5, 20.0]).max() <= 0.25


def test_a_prefiltered_search_still_scores_the_places_found(lib):
    # The prefilter's candidates come from acoustic closeness, which a call under traffic
    # lacks; the items holding the query's sound are scored whatever the prefilter picks.
    doc = query_json(lib, str(lib["outside"] / "call.wav"), "-k", "4", "--candidates", "2")
    assert 4 <= doc["candidates"] < 43  # the prefilter ran: two candidates and the four places
    found = sorted((r["display"], round(r["moment"]["start"], 1)) for r in doc["results"] if r["contains"] is not None)
    assert found == [("garden.wav", 5.0), ("garden.wav", 22.0), ("street.wav", 12.5), ("street.wav", 41.2)]


def test_stores_with_many_hours_of_long_recordings_scan_only_when_asked(lib, monkeypatch):
    import soundsearch.constants as constants

    # 1.8 minutes of long recordings here; pretend the limit is below them.
    monkeypatch.setattr(constants, "INSIDE_MAX_HOURS", 0.01)
    doc = query_json(lib, str(lib["outside"] / "call.wav"), "-k", "4")
    assert doc["inside_skipped_hours"] == pytest.approx(130 / 3600, abs=1e-3)
    assert all(r["contains"] is None for r in doc["results"])
    result = query(lib, str(lib["outside"] / "call.wav"), "-k", "2")
    assert "was not looked for inside the store's 0.0 hours" in result.stdout and "--inside does" in result.stdout
    doc = query_json(lib, str(lib["outside"] / "call.wav"), "-k", "4", "--inside")
    assert doc["inside_skipped_hours"] is None and sum(r["contains"] is not None for r in doc["results"]) == 4
    monkeypatch.setattr(constants, "INSIDE_MAX_HOURS", 100.0)
    doc = query_json(lib, str(lib["outside"] / "call.wav"), "-k", "4", "--no-inside")
    assert doc["inside_skipped_hours"] is None and all(r["contains"] is None for r in doc["results"])


def test_a_quieter_copy_under_other_sound_is_confirmed_and_other_sound_is_not():
    from soundsearch.search.contains import Scanner

    rng = np.random.default_rng(1)
    q = np.full((40, 40), -40.0)
    q[rng.random((40, 40)) < 0.3] = 0.0  # a sparse, patterned sound: loud bins here and there
    q += rng.normal(0, 1.0, q.shape)
    background = rng.normal(-25, 4, (600, 40))  # louder than the quiet part of the query
    host = background.copy()
    at = 333
    # The query 10 dB down, added in power to the background at `at`.
    host[at : at + 40] = 10 * np.log10(10 ** ((q - 10) / 10) + 10 ** (background[at : at + 40] / 10))
    u8 = quantise(host)
    found = Scanner(q).places(u8)
    assert found and abs(found[0][0] - at) <= 1 and found[0][1] >= CONTAINS_SCORE
    assert all(abs(o - at) <= 1 for o, _ in found)  # nothing claimed in the background alone


def test_index_leaves_prints_to_the_first_inside_query_past_the_hours_limit(lib, tmp_path, monkeypatch):
    import shutil

    import soundsearch.constants as constants

    monkeypatch.setattr(constants, "INSIDE_MAX_HOURS", 0.01)  # below this library's 130 s
    library = tmp_path / "library"
    shutil.copytree(lib["lib"], library)
    store = tmp_path / "store"
    r = CliRunner().invoke(app, ["index", str(library), "--store", str(store), "--featurizer", "logmel", "--jobs", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["prints"] == 0 and not list((store / PRINTS_DIR).glob("*.npy"))
    doc = query_json(dict(lib, store=store), str(lib["outside"] / "call.wav"), "-k", "4", "--inside")
    assert sum(r["contains"] is not None for r in doc["results"]) == 4
    assert len(list((store / PRINTS_DIR).glob("*.npy"))) == 3  # made by that query, kept
