"""Cases from the hardening attack: each test rebuilds the bad file or store and asserts the message."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tone, write_audio
from soundsearch.cli import app
from soundsearch.store import Store

SR = 8000


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def lib(tmp_path):
    root = tmp_path / "lib"
    write_audio(root / "a.wav", tone(440, 1.0, SR), SR)
    write_audio(root / "b.wav", tone(660, 1.2, SR), SR)
    return root


def indexed(lib, store_dir):
    result = run("index", str(lib), "--jobs", "1", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- case 1: pipes and other non-regular files


def test_fifo_is_refused_by_name_not_hung(tmp_path, lib, store_dir):
    fifo = tmp_path / "f.wav"
    os.mkfifo(fifo)
    # Explicitly named: skipped with a named reason; the run still indexes the rest.
    result = run("index", str(fifo), str(lib), "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert "2 added" in result.stderr and "1 skipped" in result.stderr
    assert f"skipped: {fifo}: is a named pipe (FIFO), not a regular file" in result.stderr
    # Inside a folder: the same, in --json.
    os.mkfifo(lib / "g.wav")
    doc = json.loads(run("index", str(lib), "--jobs", "1", "--json").stdout)
    assert doc["skipped"] == [
        {"path": str(lib / "g.wav"), "reason": "is a named pipe (FIFO), not a regular file: only regular files are read"}
    ]
    assert doc["unchanged"] == 2
    # query returns at once with one line (it used to block in open() forever).
    one_line_error(run("query", str(fifo)), f"{fifo}: is a named pipe (FIFO), not a regular file")


def test_audio_load_refuses_a_fifo(tmp_path):
    from soundsearch.audio import load
    from soundsearch.errors import AudioError

    fifo = tmp_path / "f.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioError, match="is a named pipe"):
        load(fifo, 22050)


# ---- case 2: a query file in a folder we may not enter


def test_permission_denied_is_named_not_a_traceback(tmp_path, lib, store_dir, monkeypatch):
    indexed(lib, store_dir)
    locked = tmp_path / "locked"
    target = write_audio(locked / "q.wav", tone(440, 1.0, SR), SR)
    real_stat = os.stat

    def stat(p, *a, **kw):
        # Root reads through mode bits, so simulate the EACCES a user gets under a 0o000 folder.
        if os.fsdecode(p).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", os.fsdecode(p))
        return real_stat(p, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    one_line_error(run("query", str(target)), f"{target}: permission denied")
    one_line_error(run("index", str(target)), f"{target}: permission denied")


# ---- case 3: model files are data; every header field is checked against the weights


def _tiny_model(path: Path):
    import torch

    from soundsearch.model.config import ModelConfig
    from soundsearch.model.checkpoint import save_model
    from soundsearch.model.network import PresenceNet
    from soundsearch.taxonomy import Taxonomy

    torch.manual_seed(0)
    config = ModelConfig(steps=4, dim=3, n_categories=8, tower=(5,), head=(6, 4))
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    return save_model(path, PresenceNet(config).eval(), config, Taxonomy.default(), {"name": "x"}, "x-id", mean, std)


def _tamper(path: Path, header_edit=None, tensor_edit=None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["soundsearch"])
    tensors = load_file(str(path))
    if header_edit:
        header_edit(header)
    if tensor_edit:
        tensor_edit(tensors)
    save_file(tensors, str(path), metadata={"soundsearch": json.dumps(header)})
    return path


def _config(**kw):
    def edit(h):
        h["config"].update(kw)
    return edit


@pytest.mark.parametrize(
    "header_edit, tensor_edit, message",
    [
        (_config(tower=[2147483648] * 3), None, "corrupt model header (config tower=2147483648: expected a whole number from 1 to 16384)"),
        (lambda h: h.update(format_version="abc"), None, "corrupt model header (format_version 'abc' is not a positive integer)"),
        (lambda h: h["taxonomy"].append("ninth"), None, "corrupt model header (9 category names for a network with 8 outputs)"),
        (lambda h: h["taxonomy"].pop(), None, "corrupt model header (7 category names for a network with 8 outputs)"),
        (_config(steps=1e9), None, "corrupt model header (config steps=1000000000.0: expected a whole number from 1 to 10000)"),
        (_config(tower=[7]), None, "weights do not fit the recorded architecture (tower.0.linear.weight has shape (1, 3, 5), the header's config needs (1, 3, 7))"),
        (None, lambda t: t["state.weight"].fill_(float("nan")), "corrupt weights (state.weight holds NaN or infinite values)"),
        (None, lambda t: t["norm.std"].zero_(), "corrupt normalisation statistics"),
        (None, lambda t: t["norm.std"].fill_(float("nan")), "corrupt normalisation statistics"),
    ],
)
def test_bad_model_headers_and_weights_are_refused_by_name(tmp_path, header_edit, tensor_edit, message):
    from soundsearch.errors import ModelError
    from soundsearch.model.arrays import load_arrays
    from soundsearch.model.checkpoint import load_model

    path = _tamper(_tiny_model(tmp_path / "m.safetensors"), header_edit, tensor_edit)
    for load in (load_model, load_arrays):  # with torch, and as arrays (a query's), alike
        with pytest.raises(ModelError) as exc:
            load(path)
        assert str(exc.value).startswith(f"{path}: ")
        assert message in str(exc.value)


def test_query_json_is_never_invalid(monkeypatch):
    from soundsearch.cli.query import json_document
    from soundsearch.errors import SearchError

    assert json_document({"score": 0.5}, "tiny") == '{"score": 0.5}'
    with pytest.raises(SearchError, match="model 'tiny' produced non-finite scores"):
        json_document({"score": float("nan")}, "tiny")


# ---- cases 4, 5, 7: a catalog edited from outside is refused, never "repaired" destructively


def _sql(store_dir: Path, statement: str, *args) -> None:
    db = sqlite3.connect(store_dir / "catalog.sqlite")
    db.execute(statement, args)
    db.commit()
    db.close()


def _array_bytes(store_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store_dir / "arrays").iterdir())}


@pytest.mark.parametrize(
    "statement, message",
    [
        ("DELETE FROM meta WHERE key='n_slots'", "meta row 'n_slots' is missing"),
        ("UPDATE meta SET value='many' WHERE key='n_slots'", "meta row 'n_slots' is 'many', not a whole number >= 0"),
        ("DELETE FROM meta WHERE key='generation'", "meta row 'generation' is missing"),
        ("UPDATE meta SET value='../../etc/passwd' WHERE key='array_file'", "meta row 'array_file' is '../../etc/passwd', not a feature array name"),
        ("UPDATE meta SET value='{' WHERE key='featurizer_spec'", "meta row 'featurizer_spec' is not a JSON object"),
    ],
)
def test_missing_or_garbled_meta_rows_are_named(lib, store_dir, statement, message):
    indexed(lib, store_dir)
    before = _array_bytes(store_dir)
    _sql(store_dir, statement)
    catalog = store_dir / "catalog.sqlite"
    for args in (("status",), ("index", "--jobs", "1"), ("query", str(lib / "a.wav"))):
        one_line_error(run(*args), f"the store catalog {catalog} is damaged: {message}")
    assert _array_bytes(store_dir) == before


def test_edited_steps_is_refused_and_nothing_is_truncated(lib, store_dir):
    indexed(lib, store_dir)
    before = _array_bytes(store_dir)
    with Store.open(store_dir) as st:
        steps, dim = st.steps, st.dim
    _sql(store_dir, "UPDATE meta SET value='5' WHERE key='steps'")
    line = one_line_error(run("index", str(lib), "--jobs", "1"))
    assert line == (
        f"error: the store catalog {store_dir / 'catalog.sqlite'} says items of shape (5, {dim}) float32, but "
        f"{store_dir / 'arrays' / 'features-1.npy'} holds ({steps}, {dim}) float32: the catalog's meta rows "
        f"'steps'/'dim' were changed outside soundsearch; nothing was changed: set them back to ({steps}, {dim}) "
        "or move the store folder away and index again"
    )
    assert _array_bytes(store_dir) == before
    # Set back as the message says: the store is whole again.
    _sql(store_dir, "UPDATE meta SET value=? WHERE key='steps'", str(steps))
    assert indexed(lib, store_dir)["unchanged"] == 2
    assert _array_bytes(store_dir) == before


def test_lowered_n_slots_is_refused_and_nothing_is_truncated(lib, store_dir):
    indexed(lib, store_dir)
    before = _array_bytes(store_dir)
    _sql(store_dir, "UPDATE meta SET value='1' WHERE key='n_slots'")
    one_line_error(run("index", str(lib), "--jobs", "1"), "says 1 feature rows, but its items use row 1", "nothing was changed")
    assert _array_bytes(store_dir) == before


def test_a_missing_current_array_does_not_cost_the_others(lib, store_dir):
    indexed(lib, store_dir)
    arrays = store_dir / "arrays"
    (arrays / "features-1.npy").rename(arrays / "features-7.npy")
    one_line_error(run("index", str(lib), "--jobs", "1"), "features-1.npy that the catalog names is missing")
    assert (arrays / "features-7.npy").is_file()


# ---- case 8: stored features carry checksums; status finds damage, index --verify repairs it


def test_garbage_in_the_array_is_found_and_repaired(lib, store_dir):
    indexed(lib, store_dir)
    array = store_dir / "arrays" / "features-1.npy"
    good = array.read_bytes()
    with Store.open(store_dir) as st:
        row_bytes = st.steps * st.dim * 4
        first = {str(i.path): i.row for i in st.items()}
    # 4 KB of garbage inside b.wav's item (row 1): sizes unchanged, so only checksums see it.
    assert first[str(lib / "b.wav")] == 1
    start = 128 + row_bytes + 16
    with open(array, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * min(4096, row_bytes - 32))
    assert run("status").exit_code == 0  # sizes are right: the cheap check passes
    line = one_line_error(run("status", "--verify"))
    assert line == (
        f"error: the store at {store_dir} is damaged: 1 items of 1 files fail their checksum (first: {lib / 'b.wav'}): "
        "run `soundsearch index --verify` to re-index damaged items, or move the store folder away and index again"
    )
    doc = json.loads(run("index", "--verify", "--jobs", "1", "--json").stdout)
    assert doc["repaired"] == [str(lib / "b.wav")] and doc["updated"] == 1 and doc["unchanged"] == 1
    result = run("status", "--verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["problems"] == []
    # Re-featurized and compacted: the same bytes as before the damage.
    assert array.with_name("features-2.npy").read_bytes()[128:] == good[128:]


def test_status_reports_a_missing_or_short_array(lib, store_dir):
    indexed(lib, store_dir)
    array = store_dir / "arrays" / "features-1.npy"
    data = array.read_bytes()
    array.write_bytes(data[: len(data) // 2])
    line = one_line_error(run("status"), f"the store at {store_dir} is damaged: array file features-1.npy holds")
    assert "too few for 2 rows" in line
    doc = json.loads(run("status", "--json").stdout)
    assert doc["problems"] == [f"array file features-1.npy holds {len(data) // 2} bytes, too few for 2 rows"]
    array.unlink()
    one_line_error(run("status"), "is damaged: array file features-1.npy unreadable")


# ---- cases 11, 12, 15 (rate): audio whose numbers contradict themselves is refused by name


def test_absurd_float_level_is_refused(tmp_path):
    from soundsearch.audio import load
    from soundsearch.errors import AudioError

    path = write_audio(tmp_path / "loud.wav", tone(440, 0.5, SR) * np.float32(1e25 / 0.3), SR, subtype="FLOAT")
    with pytest.raises(AudioError) as exc:
        load(path, 22050)
    assert exc.value.reason == "absurd level: peak 1e+25 times full scale (above 10000); the samples are damaged or mis-scaled"
    # A hot but real float file is fine.
    hot = write_audio(tmp_path / "hot.wav", tone(440, 0.5, SR) * np.float32(4 / 0.3), SR, subtype="FLOAT")
    assert load(hot, SR).signal.max() == pytest.approx(4.0, rel=1e-3)


def test_absurd_level_fails_the_file_in_index(tmp_path, lib, store_dir):
    write_audio(lib / "loud.wav", tone(440, 0.5, SR) * np.float32(1e25 / 0.3), SR, subtype="FLOAT")
    doc = indexed(lib, store_dir)
    assert doc["added"] == 2
    assert doc["failed"] == [{"path": str(lib / "loud.wav"), "reason": "absurd level: peak 1e+25 times full scale (above 10000); the samples are damaged or mis-scaled"}]


def test_one_hertz_header_is_refused(tmp_path):
    from soundsearch.audio import probe
    from soundsearch.errors import AudioError

    path = write_audio(tmp_path / "x.wav", tone(440, 2.75, SR), SR)  # 44 KB
    data = bytearray(path.read_bytes())
    data[24:28] = (1).to_bytes(4, "little")  # fmt chunk sample rate
    data[28:32] = (2).to_bytes(4, "little")  # byte rate
    path.write_bytes(bytes(data))
    with pytest.raises(AudioError) as exc:
        probe(path)
    assert exc.value.reason == "invalid header: sample rate 1 Hz is below 1000 Hz (damaged header?)"


def test_mp3_whose_decode_the_file_size_contradicts_is_refused(tmp_path):
    from soundsearch.audio import load
    from soundsearch.errors import AudioError

    # Stand-in for an AAC stream named .mp3: a few real MP3 frames, then 480 KB the MP3 decoder
    # skips. It decoded as 0.1 s and used to be stored with only a "short" warning.
    good = write_audio(tmp_path / "good.mp3", tone(440, 0.1, SR), SR, format="MP3")
    assert load(good, SR).signal.size == 800
    bad = tmp_path / "aac.mp3"
    bad.write_bytes(good.read_bytes() + np.random.default_rng(0).bytes(480_000))
    with pytest.raises(AudioError) as exc:
        load(bad, SR)
    size = bad.stat().st_size
    assert exc.value.reason == (
        f"not decodable as MP3: only 0.100 s decoded from {size:,} bytes of audio data "
        f"({size * 8 / 0.1 / 1000:,.0f} kbit/s, far above MP3's 320): another format named .mp3, or damaged"
    )
    # A normal MP3 of a few seconds passes.
    longer = write_audio(tmp_path / "long.mp3", tone(440, 5.0, SR), SR, format="MP3")
    assert load(longer, SR).duration == pytest.approx(5.0, abs=0.1)


# ---- case 9: the store's own cache folder is never "foreign"


def test_store_with_emptied_catalog_and_a_cache_is_recovered(lib, store_dir, tmp_path):
    from soundsearch.store.folder import check_foreign

    indexed(lib, store_dir)
    (store_dir / "cache").mkdir(exist_ok=True)  # index leaves the items' copy there (store.itemcache)
    (store_dir / "cache" / "search-old.npy").write_bytes(b"x")
    # Emptied catalog: every table dropped (as a killed creation or a wiped file leaves it).
    _sql(store_dir, "DROP TABLE items")
    for table in ("files", "roots", "meta"):
        _sql(store_dir, f"DROP TABLE {table}")
    check_foreign(store_dir)  # no error
    doc = indexed(lib, store_dir)
    assert doc["added"] == 2
    with Store.open(store_dir) as st:
        assert st.verify() == [] and len(st.items()) == 2


# ---- case 10: one identity per file, its resolved real path


def test_file_reached_through_a_symlinked_folder_is_one_file(tmp_path, store_dir):
    lib = tmp_path / "lib"
    real = write_audio(lib / "real" / "a.wav", tone(440, 1.0, SR), SR)
    (lib / "link").symlink_to(lib / "real", target_is_directory=True)
    first = indexed(lib, store_dir)
    assert first["added"] == 1
    again = json.loads(run("index", str(lib / "real"), "--jobs", "1", "--json").stdout)
    assert (again["added"], again["unchanged"], again["removed"]) == (0, 1, [])
    via_link = json.loads(run("index", str(lib / "link" / "a.wav"), "--jobs", "1", "--json").stdout)
    assert (via_link["added"], via_link["unchanged"], via_link["removed"]) == (0, 1, [])
    refresh = json.loads(run("index", "--jobs", "1", "--json").stdout)
    assert (refresh["unchanged"], refresh["removed"]) == (1, [])
    with Store.open(store_dir) as st:
        assert list(st.files()) == [str(real)]
    # A deletion seen only through the link is still a deletion.
    real.unlink()
    gone = json.loads(run("index", str(lib / "link"), "--jobs", "1", "--json").stdout)
    assert gone["removed"] == [str(real)]


# ---- case 15: messages that say what happened


def test_unreadable_subfolder_is_named_in_the_summary(lib, store_dir, monkeypatch):
    hidden = lib / "private"
    write_audio(hidden / "c.wav", tone(440, 1.0, SR), SR)
    real_scandir = os.scandir

    def scandir(p):
        # Root lists any folder, so simulate the EACCES a user gets listing a 0o000 folder.
        if os.fsdecode(p) == str(hidden):
            raise PermissionError(13, "Permission denied", os.fsdecode(p))
        return real_scandir(p)

    monkeypatch.setattr(os, "scandir", scandir)
    result = run("index", str(lib), "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert "2 added" in result.stderr and "1 skipped" in result.stderr
    assert f"skipped: {hidden}: folder not readable (Permission denied): its files were not indexed" in result.stderr


def test_store_that_is_a_symlink_loop_or_broken_link_is_named(tmp_path, lib):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for args in (("index", str(lib)), ("status",), ("query", str(lib / "a.wav"))):
        line = one_line_error(run(*args, "--store", str(loop)))
        assert line == f"error: {loop} is a symbolic link loop, not a store folder: fix the link or use another --store"
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    one_line_error(run("index", str(lib), "--store", str(broken)), f"{broken} is a broken symbolic link (to {tmp_path / 'nowhere'})")


def test_disk_full_is_said_plainly(tmp_path, monkeypatch):
    import errno as errno_
    import shutil

    from soundsearch.store.catalog import friendly
    from soundsearch.store.folder import os_errors
    from soundsearch.errors import StoreError

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    err = friendly(sqlite3.OperationalError("disk I/O error"), tmp_path)
    assert str(err) == f"disk full: no space left for the store at {tmp_path}"
    with pytest.raises(StoreError) as exc, os_errors(tmp_path, "writing feature rows"):
        raise OSError(errno_.ENOSPC, "No space left on device")
    assert str(exc.value) == f"disk full: no space left for the store at {tmp_path} (writing feature rows failed: No space left on device)"


# ---- Ctrl-C: an interrupted parallel index stops quietly, leaves no workers, and resumes


def _children(pid: int) -> set[int]:
    """Descendants of pid, from /proc (psutil is not installed)."""
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_during_parallel_index_is_quiet_leaves_no_workers_and_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    lib = tmp_path / "lib"
    for i in range(40):
        write_audio(lib / f"f{i:02d}.wav", tone(200 + 20 * i, 2.0, SR), SR)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "soundsearch", "index", str(lib), "--store", str(store), "--jobs", "2",
           "--batch-size", "2", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    catalog = store / "catalog.sqlite"
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline:
        workers |= _children(proc.pid)
        try:
            db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
            n = db.execute("SELECT count(*) FROM files").fetchone()[0]
            db.close()
        except sqlite3.Error:
            n = 0
        if n:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "index finished before it could be interrupted"
    workers |= _children(proc.pid)
    assert workers
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted; ") and lines[0].endswith(
        " files kept, run index again to resume"
    ), stderr
    kept = int(lines[0].split()[1])
    assert 0 < kept < 40
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]
    # Resume: the interrupted store ends identical to an uninterrupted one.
    done = subprocess.run(cmd[:-1] + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["unchanged"] == kept
    fresh = tmp_path / "fresh"
    subprocess.run(cmd[:5] + ["--store", str(fresh), "--jobs", "1", "--quiet"], env=env, check=True, timeout=300)
    with Store.open(store) as a, Store.open(fresh) as b:
        fa = {str(i.path): np.array(a.features()[i.row]) for i in a.items()}
        fb = {str(i.path): np.array(b.features()[i.row]) for i in b.items()}
        assert a.verify() == [] and sorted(fa) == sorted(fb) and len(fa) == 40
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k])


def test_workers_exit_when_index_is_killed_outright(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    lib = tmp_path / "lib"
    for i in range(20):
        write_audio(lib / f"f{i:02d}.wav", tone(200 + 20 * i, 2.0, SR), SR)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "soundsearch", "index", str(lib), "--store", str(tmp_path / "s"), "--jobs", "2", "--quiet"],
        env=env, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(workers) < 2:
        workers |= _children(proc.pid)
        time.sleep(0.05)
    assert workers
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs: the workers must notice by themselves
    proc.wait()
    deadline = time.monotonic() + 60  # a worker still importing torch exits once it starts
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)]
