"""The web app without a browser: JSON twins, exports, uploads (bounded) and what it serves."""

from __future__ import annotations

import json
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
