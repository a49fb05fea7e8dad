"""Finding the moment: finer items for long recordings, results located in time, region queries,
grouping by file, and the best-matching moment of a long query — end to end through the CLI."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import chirp, tone, write_audio
from soundsearch.audio import Cutting, iter_items, parse_time
from soundsearch.cli import app
from soundsearch.errors import SearchError
from soundsearch.model.checkpoint import save_model
from soundsearch.model.config import ModelConfig
from soundsearch.model.network import PresenceNet
from soundsearch.store import Store
from soundsearch.taxonomy import Taxonomy

SR = 22050
BURST_AT = 37.3  # seconds into the long library recording
QUERY_BURST_AT = 12.0  # seconds into the long query recording


def ambience(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.02 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def with_burst(x: np.ndarray, at: float) -> np.ndarray:
    y = x.copy()
    b = tone(1000, 0.5, amp=0.4)
    i = int(at * SR)
    y[i : i + b.size] += b
    return y


@pytest.fixture(scope="module")
def moments(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("moments")
    lib = root / "library"
    write_audio(lib / "street.wav", with_burst(ambience(60.0, 1), BURST_AT))
    write_audio(lib / "low-hum.wav", ambience(2.0, 4) + tone(60, 2.0, amp=0.05))
    write_audio(lib / "sweep.wav", chirp(seconds=3.0))
    write_audio(lib / "room.wav", ambience(20.0, 2))
    outside = root / "outside"
    write_audio(outside / "burst.wav", tone(1000, 0.5, amp=0.4))
    write_audio(outside / "other-street.wav", with_burst(ambience(30.0, 3), QUERY_BURST_AT))
    store = root / "store"
    result = CliRunner().invoke(app, ["index", str(lib), "--store", str(store), "--jobs", "1", "--json"])
    assert result.exit_code == 0, result.output
    with Store.open(store) as st:
        feats = np.asarray(st.features())
        spec, identity = st.featurizer_spec, st.featurizer_identity
    models = root / "models"
    torch.manual_seed(0)
    cats = Taxonomy.default()
    config = ModelConfig(steps=feats.shape[1], dim=feats.shape[2], n_categories=len(cats.categories))
    save_model(models / "tiny.safetensors", PresenceNet(config).eval(), config, cats, spec, identity,
               feats.mean((0, 1)), feats.std((0, 1)) + 1e-3)
    return {"root": root, "lib": lib, "store": store, "models": models, "outside": outside}


def query(m: dict, *args: str):
    # Acoustic ranking: what sounds like the query, independent of the random test model.
    return CliRunner().invoke(
        app, ["query", *args, "--store", str(m["store"]), "--model", str(m["models"] / "tiny.safetensors"), "--mode", "acoustic"]
    )


def query_json(m: dict, *args: str) -> dict:
    result = query(m, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_new_store_records_finer_items_and_cuts_long_recordings_finer(moments):
    with Store.open(moments["store"]) as st:
        assert (st.cutting.item_seconds, st.cutting.hop, st.cutting.event_items) == (10.0, 5.0, 6)
        street = st.items_for_path(moments["lib"] / "street.wav")
        windows = [(i.start, i.end) for i in street if i.end - i.start == pytest.approx(10.0)]
        assert windows[:3] == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0)] and windows[-1] == (50.0, 60.0)
        events = [(i.start, i.end) for i in street if i.end - i.start < 5]
        # The burst is found: an event item starts just before it and holds it whole.
        assert any(a <= BURST_AT and b >= BURST_AT + 0.5 and BURST_AT - a < 0.5 for a, b in events), events
        assert len(events) <= 6  # one minute of audio, at most 6 event items a minute
        assert len(st.items_for_path(moments["lib"] / "low-hum.wav")) == 1  # short files: one item
    status = json.loads(CliRunner().invoke(app, ["status", "--store", str(moments["store"]), "--json"]).stdout)
    assert (status["item_hop"], status["event_items"]) == (5.0, 6)


def test_a_short_sound_is_found_at_its_moment(moments):
    doc = query_json(moments, str(moments["outside"] / "burst.wav"), "-k", "3")
    top = doc["results"][0]
    assert top["display"] == "street.wav"
    assert top["moment"]["start"] <= BURST_AT + 0.5 and top["moment"]["end"] >= BURST_AT
    assert top["moment"]["end"] - top["moment"]["start"] <= 2.0  # an event item, not a 10 s window
    # The burst itself was found inside the recording (search.contains): the moment is that
    # place, to the frame, inside the item that names it.
    assert top["contains"] is not None and abs(top["moment"]["start"] - BURST_AT) < 0.03
    assert top["start"] <= top["moment"]["start"] + 0.05 and top["end"] >= top["moment"]["end"] - 0.05
    assert top["query_moment"] is None  # a one-item query
    # One result per moment: no other result is the same stretch of the same file.
    street = [(r["start"], r["end"]) for r in doc["results"] if r["display"] == "street.wav"]
    for i, (a, b) in enumerate(street):
        for c, d in street[i + 1 :]:
            assert min(b, d) - max(a, c) < 0.5 * min(b - a, d - c)


def test_a_region_of_a_long_file_is_the_query(moments):
    doc = query_json(moments, str(moments["outside"] / "other-street.wav"), "--start", "0:11.8", "--end", "0:13", "-k", "3")
    assert doc["query"]["region"] == {"start": 11.8, "end": 13.0}
    assert doc["query"]["items"] == [{"start": 11.8, "end": 13.0}]
    top = doc["results"][0]
    assert top["display"] == "street.wav"
    assert top["moment"]["start"] <= BURST_AT + 0.5 and top["moment"]["end"] >= BURST_AT
    # The table shows the moment to a tenth of a second.
    result = query(moments, str(moments["outside"] / "other-street.wav"), "--start", "11.8", "--end", "13", "-k", "1")
    assert result.exit_code == 0, result.output
    assert f"0:{top['moment']['start']:04.1f}" in result.stdout
    # The page (query --html) shows the region too, its waveform and player at the region.
    page = moments["root"] / "region.html"
    result = query(moments, str(moments["outside"] / "other-street.wav"), "--start", "11.8", "--end", "13", "-k", "1",
                   "--html", str(page))
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert '<span class="region">0:11.8–0:13</span>' in html and 'data-start="11.8"' in html


def test_a_long_query_names_its_best_moment_per_result(moments):
    doc = query_json(moments, str(moments["outside"] / "other-street.wav"), "-k", "20")
    assert len(doc["query"]["items"]) > 5  # windows every 5 s and event items
    hits = [r for r in doc["results"] if r["display"] == "street.wav" and r["end"] - r["start"] <= 2.0
            and r["start"] <= BURST_AT + 0.5 and r["end"] >= BURST_AT]
    assert hits, [(r["display"], r["start"], r["end"]) for r in doc["results"]]
    qm = hits[0]["query_moment"]
    # The library's burst is matched by the query's own burst moment.
    assert qm["start"] <= QUERY_BURST_AT + 0.5 and qm["end"] >= QUERY_BURST_AT and qm["end"] - qm["start"] <= 2.0


def test_group_by_file_lists_each_file_once_with_its_moments(moments):
    plain = query_json(moments, str(moments["outside"] / "burst.wav"), "-k", "50")
    doc = query_json(moments, str(moments["outside"] / "burst.wav"), "-k", "3", "--group-by", "file")
    assert doc["group_by"] == "file"
    paths = [r["path"] for r in doc["results"]]
    assert len(paths) == len(set(paths)) == 3
    # Each file's row is its best moment, in the order of the ungrouped list's first occurrences.
    firsts = []
    for r in plain["results"]:
        if r["path"] not in [p for p, _ in firsts]:
            firsts.append((r["path"], r["row"]))
    assert [(r["path"], r["row"]) for r in doc["results"]] == firsts[:3]
    # Moments: the file's distinct moments ranked before the first file left out.
    cut = next(i for i, r in enumerate(plain["results"]) if r["path"] == firsts[3][0]) if len(firsts) > 3 else len(plain["results"])
    for r in doc["results"]:
        assert r["moments"] == sum(1 for p in plain["results"][:cut] if p["path"] == r["path"])


def test_bad_times_are_one_line_errors(moments):
    for args, words in (
        (["--start", "1:7x"], "--start '1:7x' is not a time"),
        (["--start", "0:20", "--end", "0:10"], "must end after it starts"),
        (["--start", "5:00"], "holds no audio"),
    ):
        result = query(moments, str(moments["outside"] / "other-street.wav"), *args)
        assert result.exit_code == 1, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_parse_time():
    assert parse_time("95") == 95.0 and parse_time("1:35.5") == 95.5 and parse_time("0:01:35") == 95.0
    for bad in ("", "1:", "-3", "1:75", "a"):
        with pytest.raises(SearchError):
            parse_time(bad)


def test_a_store_without_the_setting_cuts_as_before(tmp_path):
    from soundsearch.features import get_featurizer

    fz = get_featurizer("logmel")
    Store.open(tmp_path / "s", create=True, featurizer=fz).close()
    db = sqlite3.connect(tmp_path / "s" / "catalog.sqlite")
    db.execute("DELETE FROM meta WHERE key IN ('item_hop', 'event_items')")
    db.commit()
    db.close()
    with Store.open(tmp_path / "s") as st:
        assert not st.cutting.finer and st.cutting.hop == st.item_seconds == 10.0
    # And that cutting is today's rule: consecutive windows, a short tail merged.
    p = write_audio(tmp_path / "long.wav", with_burst(ambience(25.5, 0), 3.0))
    _, items, _ = iter_items(p, SR, cutting=Cutting(10.0, None, 0))
    assert [(s.start, s.end) for s in items] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.5)]
    _, items, _ = iter_items(p, SR, cutting=Cutting(10.0, 5.0, 0))
    assert [(s.start, s.end) for s in items] == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.5, 25.5)]
