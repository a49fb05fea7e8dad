"""The results page and the web app in a real browser (headless Chromium over DevTools).

Skipped when no Chromium is installed (.ci/run installs Debian's) or websockets is missing.
Checks what a person relies on: the page loads without console errors, shows K results, every
player has a source the browser can load (file:// for the static page, the app's /audio for the
served one, a windowed item starting at its window), and "more like this" brings new results.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cdp import PLAYERS_JS, Browser, find_chromium
from conftest import REPO, chirp, write_audio

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
]
pytest.importorskip("websockets")

K = 5


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """The bundled example scenes plus one 25 s session recording cut into windows."""
    from soundsearch.indexing import index_paths

    root = tmp_path_factory.mktemp("pages")
    lib = root / "library"
    shutil.copytree(REPO / "examples" / "library", lib / "scenes")
    write_audio(lib / "sessions" / "long session.wav", np.concatenate([chirp(seconds=5.0)] * 5))
    store = root / "store"
    index_paths(store, [lib], jobs=1)
    return {"root": root, "lib": lib, "store": store}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _check_page(b: Browser, k: int) -> list[dict]:
    errors = b.console_errors()
    assert errors == [], errors
    assert b.eval("document.querySelectorAll('li.card.result').length") == k
    players = b.eval(PLAYERS_JS, timeout=40)
    assert len(players) == k + 1  # the query's player, then one per result
    bad = [p for p in players if not p["ok"]]
    assert bad == [], bad
    return players


def test_static_page_plays_every_result(library, browser, monkeypatch):
    from soundsearch.cli import app

    monkeypatch.setenv("SOUNDSEARCH_STORE", str(library["store"]))
    page = library["root"] / "results.html"
    query = library["lib"] / "scenes" / "scene-04-music.ogg"
    runner = CliRunner()
    result = runner.invoke(app, ["query", str(query), "-k", str(K), "--html", str(page), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # offline: no CDN, no fonts
    browser.navigate(page.as_uri())
    players = _check_page(browser, K)
    # The page's data is the --json document; the players play those files.
    embedded = browser.eval("JSON.parse(document.getElementById('results-data').textContent)")
    assert [r["path"] for r in embedded["results"]] == [r["path"] for r in doc["results"]]
    assert [p["src"].split("#")[0] for p in players[1:]] == [Path(r["path"]).as_uri() for r in doc["results"]]
    assert browser.eval("document.querySelectorAll('li.card.result svg.wave').length") == K
    assert not any(r["is_query"] for r in doc["results"])  # the query's own item is hidden


@pytest.fixture(scope="module")
def server(library):
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    from soundsearch.present.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(library["store"]), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


def test_app_more_like_this_updates_the_results(library, browser, server, tmp_path):
    from soundsearch.store import Store

    with Store.open(library["store"]) as st:
        items = st.items()
    row = next(i.row for i in items if i.path.name == "scene-04-music.ogg")
    browser.navigate(f"{server}search?row={row}&k={K}")
    _check_page(browser, K)
    first = browser.eval("document.querySelector('li.card.result').dataset.path")
    before = browser.eval("Array.from(document.querySelectorAll('li.card.result')).map(e => e.dataset.path)")
    browser.click_and_wait("li.card.result a.more")
    _check_page(browser, K)
    # The page now searches with the clicked result: its name heads the page, and the list
    # (which leaves the query's own item out) is a different one.
    assert Path(first).name in browser.eval("document.querySelector('h1').textContent")
    after = browser.eval("Array.from(document.querySelectorAll('li.card.result')).map(e => e.dataset.path)")
    assert first not in after and after != before
    browser.screenshot(tmp_path / "app-1280.png", 1280)
    assert (tmp_path / "app-1280.png").stat().st_size > 10_000


def test_app_windowed_player_starts_at_its_window(library, browser, server):
    from soundsearch.store import Store

    with Store.open(library["store"]) as st:
        windows = [i for i in st.items() if i.path.name == "long session.wav"]
    assert len(windows) >= 2
    w = windows[1]
    browser.navigate(f"{server}search?row={w.row}&k={K}&include_self=1")
    _check_page(browser, K)
    # The query is that window: its player starts at the window, not at 0.
    start = browser.eval(
        "new Promise(r => { const a = document.querySelector('section.query audio');"
        " const f = () => r(a.currentTime); if (a.readyState >= 1) setTimeout(f, 300); else a.addEventListener('loadedmetadata', () => setTimeout(f, 300)); })"
    )
    assert start == pytest.approx(w.start, abs=0.5)
