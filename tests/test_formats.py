"""Formats libsndfile cannot read (m4a/aac...): decoded through PyAV, or named with the hint."""

from __future__ import annotations

import numpy as np
import pytest

from soundsearch import audio
from soundsearch.errors import AudioError


def _write_m4a(path, seconds=3.0, sr=44100, freq=440.0):
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=sr)
        s.layout = "mono"
        for i in range(0, x.size, 1024):
            frame = av.AudioFrame.from_ndarray(x[None, i : i + 1024], format="fltp", layout="mono")
            frame.rate = sr
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return x


def test_m4a_decodes_through_pyav(tmp_path):
    path = tmp_path / "tone.m4a"
    _write_m4a(path)
    loaded = audio.load(path, 22050)
    assert loaded.info.samplerate == 44100 and loaded.info.channels == 1
    assert abs(loaded.duration - 3.0) < 0.1  # AAC adds a priming frame or so
    assert 0.28 < float(np.max(np.abs(loaded.signal))) < 0.33
    # A 440 Hz tone stays one: the spectrum peaks there.
    spec = np.abs(np.fft.rfft(loaded.signal[:22050]))
    assert abs(np.argmax(spec) * 22050 / 22050 - 440) <= 2
    window, sr = audio.read_seconds(path, 1.0, 2.0)
    assert sr == 44100 and window.size == 44100


def test_m4a_in_a_folder_is_indexed_not_skipped(tmp_path):
    from soundsearch.indexing import index_paths
    from soundsearch.store import Store

    _write_m4a(tmp_path / "lib" / "take.m4a")
    index_paths(tmp_path / "store", [tmp_path / "lib"], jobs=1)
    with Store.open(tmp_path / "store") as st:
        assert [i.path.name for i in st.items()] == ["take.m4a"]


def test_without_pyav_an_m4a_is_named_with_the_hint(tmp_path, monkeypatch):
    import soundsearch.avdecode as avdecode

    path = tmp_path / "take.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 4000)  # an m4a header, no audio
    monkeypatch.setattr(avdecode, "available", lambda: False)
    assert audio.has_audio_extension(path)  # scanned, so never silently skipped
    with pytest.raises(AudioError) as ei:
        audio.load(path, 22050)
    assert "pip install 'soundsearch[formats]'" in str(ei.value) and ".m4a" in str(ei.value)


def test_index_names_undecodable_formats_once_with_the_hint_and_retries_after_install(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    import soundsearch.avdecode as avdecode
    from soundsearch.cli import app

    lib, store = tmp_path / "lib", tmp_path / "store"
    for name in ("a.m4a", "b.m4a"):
        _write_m4a(lib / name, seconds=1.0)
    with monkeypatch.context() as without_av:
        without_av.setattr(avdecode, "available", lambda: False)
        result = CliRunner().invoke(app, ["index", str(lib), "--store", str(store), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    for name in ("a.m4a", "b.m4a"):
        assert f"  failed: {lib / name}: .m4a is not a format libsndfile reads" in lines
    # The hint once, after the list, not on every file.
    assert result.stderr.count("soundsearch[formats]") == 1
    assert "2 files in formats only FFmpeg decodes: pip install 'soundsearch[formats]', then index again" in lines

    # With PyAV there now, the unchanged files are tried again and indexed.
    result = CliRunner().invoke(app, ["index", str(lib), "--store", str(store), "--jobs", "1", "--json"])
    report = json.loads(result.stdout)
    assert (report["updated"], report["failed"], report["still_failed"]) == (2, [], [])
