"""The web app without a browser: JSON twins, exports, uploads (bounded) and what it serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import chirp, noise_bursts, tone, write_audio

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("multipart")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from starlette.testclient import TestClient

    from soundsearch.indexing import index_paths
    from soundsearch.present.app import create_app

    root = tmp_path_factory.mktemp("serve")
    lib = root / "library"
    for f in (220, 440, 880):
        write_audio(lib / f"tone-{f}.wav", tone(f, 2.0))
    for seed in range(3):
        write_audio(lib / f"bursts-{seed}.flac", noise_bursts(2.0, seed=seed))
    write_audio(lib / "long.wav", np.concatenate([chirp(seconds=5.0)] * 4))
    (root / "outside.wav").write_bytes((lib / "tone-220.wav").read_bytes())
    store = root / "store"
    # Consecutive windows (as stores made before finer items): the item counts below follow.
    index_paths(store, [lib], jobs=1, item_hop=10.0, event_items=0)
    with TestClient(create_app(store, max_upload_mb=1)) as c:
        c.root = root
        c.lib = lib
        yield c


def test_home_and_search_have_json_twins(client):
    info = client.get("/?format=json").json()
    assert info["items"] == 3 + 3 + 2 and info["roots"] == [str(client.lib)]
    page = client.get("/search?row=0&k=3")
    assert page.status_code == 200 and "More like this" in page.text
    doc = client.get("/search?row=0&k=3&format=json").json()
    assert len(doc["results"]) == 3 and not any(r["is_query"] for r in doc["results"])
    assert doc["query"]["self_hidden"] == 1
    # The page embeds the same document.
    start = page.text.index('id="results-data">') + len('id="results-data">')
    embedded = json.loads(page.text[start : page.text.index("</script>", start)])
    assert [r["path"] for r in embedded["results"]] == [r["path"] for r in doc["results"]]


def test_exports(client):
    doc = client.get("/search?row=1&k=4&format=json").json()
    paths = client.get("/search?row=1&k=4&format=paths").text.splitlines()
    assert paths == list(dict.fromkeys(r["path"] for r in doc["results"]))
    m3u = client.get("/search?row=1&k=4&format=m3u").text.splitlines()
    assert m3u[0] == "#EXTM3U" and sum(line.startswith("#EXTINF:") for line in m3u) == 4
    csv_text = client.get("/search?row=1&k=4&format=csv").text.splitlines()
    assert csv_text[0].startswith("rank,path,start,end") and len(csv_text) == 5


def test_upload_search_redirects_to_a_reloadable_page(client):
    data = (client.lib / "tone-440.wav").read_bytes()
    r = client.post("/search", files={"file": ("query.wav", data, "audio/wav")}, data={"k": "2"}, follow_redirects=False)
    assert r.status_code == 303 and "upload=" in r.headers["location"]
    doc = client.get("/" + r.headers["location"] + "&format=json").json()
    assert doc["query"]["name"] == "query.wav" and len(doc["results"]) == 2
    # An identical stored recording is a near-duplicate of the upload.
    assert doc["results"][0]["path"].endswith("tone-440.wav") and doc["results"][0]["duplicate"]


def test_upload_size_is_bounded(client):
    big = b"\0" * (3 * 2**20)
    r = client.post("/search", files={"file": ("big.wav", big, "audio/wav")})
    assert r.status_code == 413


def test_serves_only_files_in_the_indexed_roots(client):
    ok = client.get("/audio", params={"path": str(client.lib / "tone-220.wav")})
    assert ok.status_code == 200 and ok.content[:4] == b"RIFF"
    for path in (str(client.root / "outside.wav"), "/etc/passwd", str(client.lib / ".." / "outside.wav")):
        assert client.get("/audio", params={"path": path}).status_code == 403, path
    assert client.get("/thumb", params={"path": "/etc/passwd"}).status_code == 403
    # A symlink inside a root that points outside is judged by where it leads.
    link = client.lib / "sneaky.wav"
    link.symlink_to(client.root / "outside.wav")
    try:
        assert client.get("/audio", params={"path": str(link)}).status_code == 403
    finally:
        link.unlink()


def test_bad_parameters_are_one_line_errors(client):
    r = client.get("/search?row=0&k=0&format=json")
    assert r.status_code == 400 and "k must be between" in r.json()["error"]
    r = client.get("/search?row=0&require=unicorn&format=json")
    assert r.status_code == 400 and "unknown category" in r.json()["error"]


# ---- query regions (from / to), as `query --start/--end`

SR = 22050
BURST_AT = 27.3  # seconds into the long library recording
QUERY_BURST_AT = 12.0  # seconds into the long uploaded recording


def _ambience(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.02 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def _with_burst(x: np.ndarray, at: float) -> np.ndarray:
    y = x.copy()
    b = tone(1000, 0.5, amp=0.4)
    y[int(at * SR) : int(at * SR) + b.size] += b
    return y


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    import torch
    from starlette.testclient import TestClient

    from soundsearch.indexing import index_paths
    from soundsearch.model.checkpoint import save_model
    from soundsearch.model.config import ModelConfig
    from soundsearch.model.network import PresenceNet
    from soundsearch.present.app import create_app
    from soundsearch.store import Store
    from soundsearch.taxonomy import Taxonomy

    root = tmp_path_factory.mktemp("regions")
    lib = root / "library"
    write_audio(lib / "street.wav", _with_burst(_ambience(40.0, 1), BURST_AT))
    write_audio(lib / "room.wav", _ambience(12.0, 2))
    write_audio(lib / "sweep.wav", chirp(seconds=3.0))
    query = write_audio(root / "other-street.wav", _with_burst(_ambience(20.0, 3), QUERY_BURST_AT))
    store = root / "store"
    index_paths(store, [lib], jobs=1)  # the default cutting: windows and event items
    with Store.open(store) as st:
        feats = np.asarray(st.features())
        spec, identity = st.featurizer_spec, st.featurizer_identity
        street = [(i.row, i.start, i.end) for i in st.items_for_path(lib / "street.wav")]
    # A small random model: the tests rank by sound (mode=acoustic), which does not depend on it.
    torch.manual_seed(0)
    cats = Taxonomy.default()
    config = ModelConfig(steps=feats.shape[1], dim=feats.shape[2], n_categories=len(cats.categories))
    model = root / "tiny.safetensors"
    save_model(model, PresenceNet(config).eval(), config, cats, spec, identity, feats.mean((0, 1)), feats.std((0, 1)) + 1e-3)
    with TestClient(create_app(store, model=str(model), max_upload_mb=5)) as c:
        c.query_file, c.street = query, street
        yield c


def _holds_burst(r: dict, at: float) -> bool:
    return r["moment"]["start"] <= at + 0.5 and r["moment"]["end"] >= at and r["end"] - r["start"] <= 2.0


def test_a_region_of_an_upload_is_the_query(regions):
    r = regions.post("/search", files={"file": ("other-street.wav", regions.query_file.read_bytes(), "audio/wav")},
                     data={"k": "3", "mode": "acoustic", "start": "0:11.8", "end": "13"}, follow_redirects=False)
    assert r.status_code == 303
    where = r.headers["location"]
    assert "start=0%3A11.8" in where and "end=13" in where  # carried in the URL as typed
    doc = regions.get("/" + where + "&format=json").json()
    assert doc["query"]["region"] == {"start": 11.8, "end": 13.0}
    assert doc["query"]["items"] == [{"start": 11.8, "end": 13.0}]
    top = doc["results"][0]
    assert top["display"] == "street.wav" and _holds_burst(top, BURST_AT), top
    # The page shows the region, keeps it in the form and its links, and leaves it out of "more like this".
    page = regions.get("/" + where).text
    assert '<span class="region">0:11.8–0:13</span>' in page
    assert 'name="start" value="0:11.8"' in page and 'name="end" value="13"' in page
    assert "start=0%3A11.8&amp;end=13&amp;" in page  # the JSON / CSV links
    more = re.findall(r'class="more" href="([^"]*)"', page)
    assert more and not any("start=" in h or "end=" in h for h in more)
    # Without the region the whole upload is the query.
    whole = regions.get("/" + where.replace("&start=0%3A11.8", "").replace("&end=13", "") + "&format=json").json()
    assert whole["query"]["region"] is None and len(whole["query"]["items"]) > 1


def test_a_region_of_a_stored_long_recording(regions):
    row = next(row for row, a, b in regions.street if a == 0.0)  # its first window, 0-10 s
    doc = regions.get(f"/search?row={row}&k=3&mode=acoustic&start=27.2&end=28&format=json").json()
    assert doc["query"]["region"] == {"start": 27.2, "end": 28.0}
    top = doc["results"][0]
    # The region's times are the recording's, not the row's: the burst at 27.3 s is the query.
    assert top["display"] == "street.wav" and _holds_burst(top, BURST_AT), top
    page = regions.get(f"/search?row={row}&k=3&mode=acoustic&start=27.2&end=28")
    assert page.status_code == 200 and '<span class="region">0:27.2–0:28</span>' in page.text
    assert 'data-start="27.2"' in page.text  # the query's player starts at the region


@pytest.mark.parametrize("start,end,message", [
    ("1:7x", "", "from '1:7x' is not a time"),
    ("", "-3", "to '-3' is not a time"),
    ("0:30", "0:20", "must end after it starts"),
])
def test_bad_times_are_clear_errors(regions, start, end, message):
    q = f"/search?row=0&k=3&start={start}&end={end}"
    r = regions.get(q + "&format=json")
    assert r.status_code == 400 and message in r.json()["error"], r.text
    page = regions.get(q)
    assert page.status_code == 400 and message.replace("'", "&#x27;") in page.text
    # The form keeps the query and the times as typed, to correct them.
    assert 'name="row" value="0"' in page.text and f'name="start" value="{start}"' in page.text
