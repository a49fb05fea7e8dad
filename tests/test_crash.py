"""kill -9 a real `soundsearch index` mid-run: the store must open, be consistent, and finish cleanly."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import chirp, tone, write_audio
from soundsearch.indexing import index_paths
from soundsearch.store import ARRAYS, CATALOG, Store

SR = 8000
HEADER = 128
T, D = 10, 384  # a logmel item: 10 steps of mean, std and max of 128 bands
# Crash safety is the store's business, whatever makes the features: the fast log-Mel
# featurizer keeps hundreds of kills affordable.
FEATURIZER = ["--featurizer", "logmel"]
ROW_BYTES = T * D * 4
ATOL = 1e-2  # dB


def make_files(lib: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sig = tone(float(rng.uniform(100, 3000)), float(rng.uniform(0.05, 0.2)), SR) if i % 2 else chirp(
            100, float(rng.uniform(500, 3500)), float(rng.uniform(0.05, 0.2)), SR
        )
        write_audio(lib / f"d{i % 7}" / f"f{i:04d}.wav", sig, SR)


def rerun_index(lib: Path, store: Path, flag: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """A complete `index` run to the end, as a user re-running after an interruption."""
    return subprocess.run(
        [sys.executable, "-m", "soundsearch", "index", str(lib), "--store", str(store), "--jobs", "1", *FEATURIZER, flag],
        capture_output=True, text=True, timeout=timeout,
    )


def start_index(lib: Path, store: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "soundsearch", "index", str(lib), "--store", str(store),
         "--jobs", "1", "--batch-size", "16", "--quiet", *FEATURIZER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def committed_items(store: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{store / CATALOG}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return 0
    try:
        return db.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet
    finally:
        db.close()


def kill_after(proc: subprocess.Popen, store: Path, at_least: int, extra_delay: float) -> int:
    """SIGKILL the run once `at_least` items are committed (plus a delay); returns what was seen."""
    deadline = time.monotonic() + 120
    while (seen := committed_items(store)) < at_least:
        assert proc.poll() is None, f"index finished before it could be killed: {proc.stderr.read()!r}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(extra_delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen


def stored(store: Path) -> dict[str, np.ndarray]:
    with Store.open(store) as st:
        feats = st.features()
        assert feats.shape == (len(st.items()), T, D)
        out: dict[str, list] = {}
        for it in st.items():
            out.setdefault(str(it.path), []).append(np.array(feats[it.row]))
        return {k: np.stack(v) for k, v in out.items()}


def assert_consistent(store: Path, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checked from the raw catalog and array file, not only through the Store API."""
    db = sqlite3.connect(f"file:{store / CATALOG}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        rows = [r for (r,) in db.execute("SELECT array_row FROM items")]
        paths = [p for (p,) in db.execute("SELECT path FROM files")]
        empty_ok = db.execute(
            "SELECT count(*) FROM files f WHERE status='ok' AND NOT EXISTS (SELECT 1 FROM items WHERE file_id=f.id)"
        ).fetchone()[0]
    finally:
        db.close()
    n_slots = int(meta["n_slots"])
    assert len(rows) == len(set(rows)), "two items share an array row"
    assert all(0 <= r < n_slots for r in rows), "an item points past the committed rows"
    assert len(paths) == len(set(paths)), "a file is catalogued twice"
    assert empty_ok == 0, "a file is marked indexed but has no items"
    array = store / ARRAYS / meta["array_file"]
    assert array.stat().st_size >= HEADER + n_slots * ROW_BYTES
    assert np.load(array, mmap_mode="r", allow_pickle=False).shape[0] >= n_slots
    got = stored(store)
    for path, feats in got.items():
        # Every committed item holds the features a clean run computes: nothing half-written
        # (zeros) or misaligned (another file's tone, tens of dB away). The tolerance only
        # absorbs float noise between processes.
        np.testing.assert_allclose(feats, reference[path], rtol=0, atol=ATOL, err_msg=path)
    return got


@pytest.mark.slow
def test_kill_9_during_index_then_rerun(tmp_path):
    lib = tmp_path / "lib"
    make_files(lib, 240, seed=0)
    (lib / "d0" / "broken.wav").write_bytes(b"RIFF" + os.urandom(100))
    rnd = random.Random(1)

    ref_store = tmp_path / "reference"
    ref_report = index_paths(ref_store, [lib], "logmel", jobs=1)
    reference = stored(ref_store)
    assert len(reference) == 240 and len(ref_report.failed) == 1

    store = tmp_path / "store"
    # First kill as soon as one batch is committed, then again at a random point further on.
    proc = start_index(lib, store)
    seen = kill_after(proc, store, at_least=1, extra_delay=rnd.uniform(0, 0.02))
    partial = assert_consistent(store, reference)
    assert 0 < len(partial) < 240
    proc = start_index(lib, store)
    kill_after(proc, store, at_least=seen + 32, extra_delay=rnd.uniform(0, 0.05))
    partial = assert_consistent(store, reference)
    assert len(partial) < 240

    done = rerun_index(lib, store, "--json")
    assert done.returncode == 0, done.stderr
    final = assert_consistent(store, reference)
    assert set(final) == set(reference)
    with Store.open(store) as st, Store.open(ref_store) as ref:
        assert st.stats().items == ref.stats().items == 240
        assert st.stats().failures == 1
        assert st.verify() == []
        n = len(st.items())
    # What the killed runs appended past their last commit has been cut off again.
    arrays = os.listdir(store / ARRAYS)
    assert len(arrays) == 1
    assert (store / ARRAYS / arrays[0]).stat().st_size == HEADER + n * ROW_BYTES

    # Now a run with changes and deletions (so it leaves holes and compacts), killed mid-way.
    for i in range(0, 240, 3):
        p = lib / f"d{i % 7}" / f"f{i:04d}.wav"
        write_audio(p, tone(5000.0 - i, 0.1, SR), SR)
    for i in range(1, 240, 10):
        (lib / f"d{i % 7}" / f"f{i:04d}.wav").unlink()
    ref2 = tmp_path / "reference2"
    index_paths(ref2, [lib], "logmel", jobs=1)
    reference2 = stored(ref2)
    before = committed_items(store)
    proc = start_index(lib, store)
    # Wait until rows have changed (deletions committed, some updates written), then kill.
    deadline = time.monotonic() + 120
    while committed_items(store) >= before - 12:
        assert proc.poll() is None, "index finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(rnd.uniform(0.0, 0.03))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "index finished before it could be killed"
    # Items of files updated before the kill match the new audio, the rest the old.
    with Store.open(store) as st:
        assert st.verify() == []
        feats = st.features()
        assert len(st.items()) > 0
        for it in st.items():
            candidates = [r[str(it.path)][0] for r in (reference, reference2) if str(it.path) in r]
            assert any(np.allclose(feats[it.row], c, rtol=0, atol=ATOL) for c in candidates), it.path
        # Killed before compacting: the deleted files' rows are holes, read around by a copy.
        assert not isinstance(feats.base, np.memmap)

    done = rerun_index(lib, store, "--quiet")
    assert done.returncode == 0, done.stderr
    final = assert_consistent(store, reference2)
    assert set(final) == set(reference2)
    with Store.open(store) as st:
        assert isinstance(st.features().base, np.memmap)  # compacted again
        assert len(st.items()) == len(reference2)


def test_a_second_index_process_is_refused_or_waits(tmp_path):
    from soundsearch.store import store_lock

    lib = tmp_path / "lib"
    make_files(lib, 4, seed=3)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "soundsearch", "index", str(lib), "--store", str(store), "--jobs", "1"]
    with store_lock(store):
        refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"error: the store at {store} is being updated by another soundsearch process (pid {os.getpid()})")
        waiting = subprocess.Popen(cmd + ["--wait", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert waiting.poll() is None  # queued behind our lock
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert json.loads(out)["added"] == 4


def test_ctrl_c_keeps_the_finished_work(tmp_path):
    lib = tmp_path / "lib"
    make_files(lib, 120, seed=5)
    store = tmp_path / "store"
    proc = start_index(lib, store)
    deadline = time.monotonic() + 120
    while (seen := committed_items(store)) == 0:
        assert proc.poll() is None, "index finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    after = committed_items(store)
    assert seen <= after < 120
    with Store.open(store) as st:
        assert st.verify() == []
        assert len(st.items()) == after
    rerun = rerun_index(lib, store, "--json", timeout=120)
    rep = json.loads(rerun.stdout)
    assert rep["unchanged"] == after and rep["added"] == 120 - after
