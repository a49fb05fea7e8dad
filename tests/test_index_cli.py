"""`soundsearch index` and `status` end to end, plus index_paths' incremental behaviour."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import chirp, noise_bursts, tone, write_audio
from soundsearch.cli import app
from soundsearch.cli._common import FeaturizerName
from soundsearch.features import available_featurizers, featurize_file, get_featurizer
from soundsearch.indexing import index_paths
from soundsearch.store import Store, store_lock

SR = 8000  # small files; the featurizer resamples to its own rate anyway


def make_library(root: Path) -> dict[str, int]:
    """A few short files in several formats; returns the expected item count per file name."""
    write_audio(root / "tone.wav", tone(440, 1.0, SR), SR)
    write_audio(root / "sub" / "noise.flac", noise_bursts(0.8, SR, seed=1), SR)
    write_audio(root / "sub" / "chirp.ogg", chirp(100, 3000, 1.2, SR), SR, format="OGG", subtype="VORBIS")
    write_audio(root / "LOUD.WAV", tone(220, 0.5, SR, amp=0.9), SR, subtype="PCM_24")
    # 23 s at 5 s items: 4 full windows plus a 3 s tail of its own.
    write_audio(root / "long.aiff", chirp(200, 2000, 23.0, SR), SR, format="AIFF")
    return {"tone.wav": 1, "noise.flac": 1, "chirp.ogg": 1, "LOUD.WAV": 1, "long.aiff": 5}


def run(*args: str, **kw):
    return CliRunner().invoke(app, list(args), **kw)


def per_path(store_dir: Path) -> dict[str, np.ndarray]:
    with Store.open(store_dir) as st:
        assert st.verify() == []
        feats = st.features()
        out: dict[str, list] = {}
        for it in st.items():
            out.setdefault(str(it.path), []).append(np.array(feats[it.row]))
        return {k: np.stack(v) for k, v in out.items()}


@pytest.fixture
def library(tmp_path):
    lib = tmp_path / "lib"
    return lib, make_library(lib)


def test_index_then_status(library, store_dir):
    lib, expected = library
    # --item-hop equal to the item length: consecutive windows, the rule of stores made before
    # finer items (test_moments.py covers the default).
    result = run("index", str(lib), "--jobs", "1", "--item-seconds", "5", "--item-hop", "5", "--event-items", "0", "--json")
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert (rep["added"], rep["updated"], rep["unchanged"], rep["removed"], rep["failed"]) == (5, 0, 0, [], [])
    assert rep["items_added"] == sum(expected.values())
    with Store.open(store_dir) as st:
        counts = {}
        for it in st.items():
            counts[it.path.name] = counts.get(it.path.name, 0) + 1
        assert counts == expected
        assert all(it.path.is_absolute() for it in st.items())
        long_items = st.items_for_path(lib / "long.aiff")
        assert [(i.start, i.end) for i in long_items] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
        assert st.features().shape == (9, 10, 1024)  # default aisfx: mean and max of 512-d block embeddings
        # Stored rows are exactly what featurizing the file directly gives, as indexing does
        # (a query's featurizer runs a few blocks in numpy instead: tests/test_aisfx_numpy.py).
        fz = st.featurizer().for_indexing()
        direct = featurize_file(lib / "long.aiff", fz, item_seconds=5.0).features
        np.testing.assert_allclose(st.features()[[i.row for i in long_items]], direct, rtol=0, atol=1e-5)

    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout
    assert doc["files"] == 5 and doc["items"] == 9 and doc["failures"] == 0
    assert doc["featurizer"]["name"] == "aisfx"
    assert doc["duration_seconds"] == pytest.approx(1.0 + 0.8 + 1.2 + 0.5 + 23.0, abs=1e-3)
    assert doc["roots"] == [str(lib)]
    assert doc["store"] == str(store_dir)
    assert doc["bytes_on_disk"] >= 9 * 10 * 1024 * 4

    result = run("status")
    assert result.exit_code == 0
    assert f"store      {store_dir}" in result.stdout
    assert "items      9 (items of up to 5 s)" in result.stdout
    assert "audio      26.5 s" in result.stdout


def test_cli_index_reports_and_is_incremental(library, store_dir, tmp_path):
    lib, _ = library
    result = run("index", str(lib), "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # messages go to stderr
    assert "5 added, 0 updated, 0 unchanged, 0 removed, 0 failed" in result.stderr
    before = per_path(store_dir)
    with Store.open(store_dir) as st:
        fp = st.fingerprint()

    # Unchanged library: nothing decoded, nothing written.
    result = run("index", str(lib), "--jobs", "1", "--json")
    rep = json.loads(result.stdout)
    assert (rep["added"], rep["updated"], rep["unchanged"], rep["items_added"]) == (0, 0, 5, 0)
    with Store.open(store_dir) as st:
        assert st.fingerprint() == fp

    # touch: same bytes, new mtime -> re-featurized, same features
    st_ = os.stat(lib / "tone.wav")
    os.utime(lib / "tone.wav", ns=(st_.st_atime_ns, st_.st_mtime_ns + 5_000_000_000))
    # modify: new content
    write_audio(lib / "sub" / "noise.flac", noise_bursts(0.8, SR, seed=7), SR)
    # delete
    (lib / "LOUD.WAV").unlink()
    result = run("index", str(lib), "--jobs", "1", "--json")
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert (rep["added"], rep["updated"], rep["unchanged"]) == (0, 2, 2)
    assert rep["removed"] == [str(lib / "LOUD.WAV")]
    after = per_path(store_dir)
    assert set(after) == set(before) - {str(lib / "LOUD.WAV")}
    np.testing.assert_array_equal(after[str(lib / "tone.wav")], before[str(lib / "tone.wav")])
    assert not np.allclose(after[str(lib / "sub" / "noise.flac")], before[str(lib / "sub" / "noise.flac")])
    np.testing.assert_array_equal(after[str(lib / "long.aiff")], before[str(lib / "long.aiff")])

    # The same library indexed from scratch gives the same store contents.
    fresh = tmp_path / "fresh"
    index_paths(fresh, [lib], jobs=1)
    clean = per_path(fresh)
    assert set(clean) == set(after)
    for k in clean:
        np.testing.assert_array_equal(clean[k], after[k])
    with Store.open(store_dir) as st:
        assert st.fingerprint() != fp
        assert isinstance(st.features().base, np.memmap)  # compacted: no copy on read


def test_bad_files_are_named_skipped_and_retried_only_when_changed(tmp_path, store_dir):
    lib = tmp_path / "lib"
    write_audio(lib / "good.wav", tone(300, 0.5, SR), SR)
    (lib / "garbage.wav").write_bytes(os.urandom(2000))
    (lib / "empty.wav").write_bytes(b"")
    write_audio(lib / "nan.wav", np.full(800, np.nan, np.float32), SR, subtype="FLOAT")
    write_audio(lib / "silent.wav", np.zeros(4000, np.float32), SR)
    (lib / "notes.txt").write_text("not audio, not reported")

    result = run("index", str(lib), "--jobs", "1")
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "2 added, 0 updated, 0 unchanged, 0 removed, 3 failed, 1 warning (" in err
    # The summary names every failure and warning, with its reason, not just counts them.
    lines = err.splitlines()
    assert f"  warning: {lib / 'silent.wav'}: silent (peak below -100 dBFS)" in lines
    assert f"  failed: {lib / 'empty.wav'}: empty file (0 bytes)" in lines
    assert any(line.startswith(f"  failed: {lib / 'garbage.wav'}: not decodable as audio") for line in lines)
    assert any(line.startswith(f"  failed: {lib / 'nan.wav'}: contains non-finite samples") for line in lines)
    assert "notes.txt" not in err

    status = json.loads(run("status", "--json").stdout)
    assert status["files"] == 2 and status["failures"] == 3
    assert {f["path"] for f in status["failed_files"]} == {str(lib / n) for n in ("empty.wav", "garbage.wav", "nan.wav")}
    assert "failed files:" in run("status").stdout

    # Unchanged failures are not retried, but --strict still counts them.
    result = run("index", str(lib), "--jobs", "1", "--strict", "--json")
    assert result.exit_code == 1
    rep = json.loads(result.stdout)
    assert rep["failed"] == [] and len(rep["still_failed"]) == 3 and rep["unchanged"] == 5
    assert "3 file(s) could not be indexed (--strict)" in result.stderr

    # Repairing a file gets it indexed on the next run.
    write_audio(lib / "empty.wav", tone(500, 0.5, SR), SR)
    rep = json.loads(run("index", str(lib), "--jobs", "1", "--json").stdout)
    assert rep["updated"] == 1 and rep["failed"] == [] and len(rep["still_failed"]) == 2
    with Store.open(store_dir) as st:
        assert len(st.items_for_path(lib / "empty.wav")) == 1
        assert st.stats().failures == 2


def test_failures_past_the_first_few_are_counted(tmp_path, store_dir):
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(13):
        (lib / f"bad{i:02d}.wav").write_bytes(b"RIFF" + bytes(40))
    result = run("index", str(lib), "--jobs", "1")
    assert result.exit_code == 0
    named = [line for line in result.stderr.splitlines() if line.startswith(f"  failed: {lib}")]
    assert named == [f"  failed: {lib / f'bad{i:02d}.wav'}: not decodable as audio (Format not recognised)" for i in range(10)]
    assert "  ... and 3 more failed (--json lists all)" in result.stderr.splitlines()


def test_several_roots_share_a_store(tmp_path, store_dir):
    # "lib" is a string prefix of "lib2": deletions in one must not be applied through the other.
    a, b = tmp_path / "lib", tmp_path / "lib2"
    write_audio(a / "x.wav", tone(300, 0.4, SR), SR)
    write_audio(b / "y.wav", tone(600, 0.4, SR), SR)
    write_audio(b / "z.wav", tone(900, 0.4, SR), SR)
    assert run("index", str(a), "--jobs", "1").exit_code == 0
    assert run("index", str(b), "--jobs", "1").exit_code == 0
    with Store.open(store_dir) as st:
        assert sorted(p.name for p in {i.path for i in st.items()}) == ["x.wav", "y.wav", "z.wav"]
        assert st.roots() == [a, b]

    # A deletion is noticed only when its folder is indexed (or all are refreshed).
    (a / "x.wav").unlink()
    rep = json.loads(run("index", str(b), "--jobs", "1", "--json").stdout)
    assert rep["removed"] == [] and rep["unchanged"] == 2
    (b / "z.wav").unlink()
    rep = json.loads(run("index", str(b / "y.wav"), "--jobs", "1", "--json").stdout)  # a file as root
    assert rep["removed"] == [] and rep["unchanged"] == 1
    write_audio(b / "z.wav", tone(900, 0.4, SR), SR)
    rep = json.loads(run("index", "--jobs", "1", "--json").stdout)  # no PATH: every known folder
    assert rep["removed"] == [str(a / "x.wav")] and rep["unchanged"] == 1 and rep["updated"] == 1

    # A library folder that is not there (an unmounted drive) is skipped, not emptied.
    shutil.move(b, tmp_path / "moved-away")
    result = run("index", "--jobs", "1")
    assert result.exit_code == 0
    assert f"library folder missing, skipped: {b}" in result.stderr
    with Store.open(store_dir) as st:
        assert len(st.items()) == 2


def test_user_errors_exit_1(tmp_path, store_dir, library):
    lib, _ = library
    # Brackets would be rich markup, and a long path must not be wrapped: both verbatim.
    missing = tmp_path / ("[take 1] " + "x" * 90)
    result = run("index", str(missing))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {missing}: no such file or directory"
    (tmp_path / "notes.txt").write_text("x")
    result = run("index", str(tmp_path / "notes.txt"))
    assert result.exit_code == 1 and "not a supported audio file" in result.stderr
    result = run("status")
    assert result.exit_code == 1
    assert f"no store at {store_dir}" in result.stderr
    result = run("index", "--jobs", "1")
    assert result.exit_code == 1 and "give the folders to index" in result.stderr
    # --store pointing at a folder of other files
    result = run("index", str(lib), "--store", str(lib), "--jobs", "1")
    assert result.exit_code == 1 and "holds no soundsearch store" in result.stderr


def test_featurizer_mismatch_is_refused(library, store_dir):
    lib, _ = library
    assert run("index", str(lib / "tone.wav"), "--jobs", "1").exit_code == 0
    result = run("index", str(lib), "--param", "stats=mean", "--jobs", "1")
    assert result.exit_code == 1
    assert "featurizers cannot be mixed in one store" in result.stderr
    # Naming the store's own featurizer is fine.
    assert run("index", str(lib / "tone.wav"), "--featurizer", "aisfx", "--jobs", "1").exit_code == 0


def test_featurizer_params_reach_a_new_store(library, tmp_path):
    lib, _ = library
    result = run("index", str(lib / "tone.wav"), "--store", str(tmp_path / "s"), "-p", "stats=mean", "-j", "1")
    assert result.exit_code == 0, result.output
    with Store.open(tmp_path / "s") as st:
        assert st.featurizer_spec["params"]["stats"] == "mean"
        assert st.features().shape == (1, 10, 512)  # the default aisfx, mean of 512-d embeddings only


def test_second_index_while_locked_is_refused_or_waits(library, store_dir):
    lib, _ = library
    assert run("index", str(lib / "tone.wav"), "--jobs", "1").exit_code == 0
    with store_lock(store_dir):
        result = run("index", str(lib), "--jobs", "1")
    assert result.exit_code == 1
    assert "is being updated by another soundsearch process" in result.stderr
    assert "--wait" in result.stderr

    released = threading.Event()

    def hold():
        with store_lock(store_dir):
            held.set()
            time.sleep(0.5)
        released.set()

    held = threading.Event()
    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    result = run("index", str(lib), "--jobs", "1", "--wait", "--quiet")
    t.join()
    assert result.exit_code == 0, result.output
    assert released.is_set()
    assert result.stderr == ""  # --quiet


def test_parallel_workers_give_the_same_store(library, tmp_path):
    lib, _ = library
    index_paths(tmp_path / "one", [lib], jobs=1)
    rep = index_paths(tmp_path / "two", [lib], jobs=2)
    assert rep.added == 5
    a, b = per_path(tmp_path / "one"), per_path(tmp_path / "two")
    assert set(a) == set(b)
    for k in a:
        # Workers run BLAS with fewer threads, so the last float bits may differ.
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-4)
    with Store.open(tmp_path / "one") as s1, Store.open(tmp_path / "two") as s2:
        assert [(i.path, i.start) for i in s1.items()] == [(i.path, i.start) for i in s2.items()]


def test_featurizer_choices_match_the_registry():
    assert sorted(f.value for f in FeaturizerName) == sorted(available_featurizers())


def test_help_has_examples():
    for cmd in ("index", "status"):
        result = run(cmd, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.stdout


def test_file_names_that_are_not_utf8(tmp_path, store_dir):
    lib = tmp_path / "lib"
    lib.mkdir()
    good = os.fsdecode(os.fsencode(lib) + b"/caf\xe9.wav")
    bad = os.fsdecode(os.fsencode(lib) + b"/br\xfcken.wav")
    os.rename(write_audio(lib / "plain.wav", tone(300, 0.5, SR), SR), good)  # soundfile wants UTF-8 names
    Path(bad).write_bytes(b"not audio at all")
    result = run("index", str(lib), "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert f"{lib}/br\\xfcken.wav: not decodable as audio" in result.stderr
    with Store.open(store_dir) as st:
        assert [os.fsencode(i.path) for i in st.items()] == [os.fsencode(good)]
    doc = json.loads(run("status", "--json").stdout)
    assert doc["failed_files"][0]["path"] == f"{lib}/br\\xfcken.wav"
    # Unchanged on the next run: the bytes of the name round-trip through the catalog.
    rep = json.loads(run("index", str(lib), "--jobs", "1", "--json").stdout)
    assert rep["unchanged"] == 2 and rep["added"] == 0


def test_unavailable_featurizer_fails_before_creating_a_store(library, store_dir):
    pytest.importorskip("soundsearch.features.openl3")
    try:
        get_featurizer("openl3")
    except Exception:  # noqa: BLE001 - any failure to build it is what this test is about
        pass
    else:
        pytest.skip("openl3 is installed here")
    lib, _ = library
    result = run("index", str(lib), "--featurizer", "openl3", "--jobs", "1")
    assert result.exit_code == 1
    assert "soundsearch models fetch openl3" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not store_dir.exists()


def test_progress_line_is_labelled_and_fits_80_columns():
    # The index bar mid-run, on an 80-column terminal, on a clock we control.
    import io

    from rich.console import Console
    from rich.progress import Progress

    from soundsearch.cli._common import progress_columns
    from soundsearch.cli.index import _rate_columns

    now = [100.0]

    def shown() -> str:
        screen = Console(file=io.StringIO(), width=80, force_terminal=True, record=True)
        screen.print(bar.get_renderable())
        return screen.export_text().rstrip("\n")

    bar = Progress(*progress_columns(*_rate_columns()), get_time=lambda: now[0], auto_refresh=False)
    task = bar.add_task("indexing", total=12000, audio=0.0, rate=True)
    for step in range(1, 19):  # 18 s in, 22.4 files and 42 s of audio a second
        now[0] += 1.0
        bar.update(task, completed=round(22.4 * step), audio=42.0 * step)
    line = shown()
    assert "\n" not in line and len(line) <= 80, line
    assert "403/12000" in line
    assert "22 files/s 42× real time" in line
    assert "elapsed 0:18" in line
    assert "left 8:38" in line  # (12000 - 403) / 22.4 files/s
    assert re.search(r"━{8,}", line), line  # a bar worth the name is left over

    # Before the first file: no rates yet, the clock runs, nothing is estimated.
    bar.reset(task, total=12000, description="starting", audio=0.0, rate=True)
    now[0] += 3.0
    line = shown()
    assert line.startswith("starting") and "elapsed 0:03" in line and "left -:--" in line and "files/s" not in line
    assert "\n" not in line and len(line) <= 80, line


def test_index_shows_a_spinner_at_once_and_only_stderr(library, store_dir, monkeypatch):
    # Before any file is done the spinner has already said what is going on; all on stderr.
    from soundsearch.cli import _common

    said = []
    real = _common.waiting

    def spy(quiet, what):
        said.append((quiet, what))
        return real(quiet, what)

    monkeypatch.setattr("soundsearch.cli.index.waiting", spy)
    lib, _ = library
    result = run("index", str(lib), "--jobs", "1")
    assert result.exit_code == 0 and result.stdout == ""
    assert said == [(False, "opening the store")]
    assert "indexing" in result.stderr or "starting" in result.stderr
    result = run("index", str(lib), "--jobs", "1", "--quiet")
    assert result.stdout == "" and result.stderr == "" and said[-1] == (True, "opening the store")
