"""Audio decoding, validation, folder scanning and item splitting, on synthesized files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import chirp, noise_bursts, tone, write_audio
from soundsearch import audio
from soundsearch.audio import decode, validate
from soundsearch.audio import AUDIO_EXTENSIONS, iter_items, load, probe, scan, split_items
from soundsearch.errors import AudioError, AudioWarning, printable

SR = 22050


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * sr / x.size)


# ---- decoding every format ------------------------------------------------------------------

LOSSLESS = [
    ("wav", "PCM_U8", 2e-2),  # 8-bit WAV is unsigned by definition
    ("wav", "PCM_16", 1e-4),
    ("wav", "PCM_24", 1e-6),
    ("wav", "PCM_32", 1e-6),
    ("wav", "FLOAT", 1e-7),
    ("wav", "DOUBLE", 1e-7),
    ("flac", "PCM_16", 1e-4),
    ("flac", "PCM_24", 1e-6),
    ("aiff", "PCM_16", 1e-4),
    ("aiff", "PCM_24", 1e-6),
]


@pytest.mark.parametrize("ext,subtype,tol", LOSSLESS)
def test_lossless_formats_decode_to_the_written_samples(tmp_path, ext, subtype, tol):
    x = chirp(seconds=0.5)
    p = write_audio(tmp_path / f"s.{ext}", x, SR, subtype=subtype)
    got = load(p, SR)
    assert got.signal.dtype == np.float32 and got.signal.ndim == 1
    assert got.signal.size == x.size
    assert np.max(np.abs(got.signal - x)) < tol
    assert got.info.samplerate == SR and got.info.channels == 1 and got.info.frames == x.size
    assert got.warnings == []


@pytest.mark.parametrize(
    "ext,fmt,subtype,sr",
    [("ogg", "OGG", "VORBIS", 22050), ("opus", "OGG", "OPUS", 48000), ("mp3", "MP3", "MPEG_LAYER_III", 44100)],
)
def test_lossy_formats_decode_to_the_right_pitch_and_length(tmp_path, ext, fmt, subtype, sr):
    x = tone(1000.0, seconds=1.0, sr=sr)
    p = write_audio(tmp_path / f"s.{ext}", x, sr, subtype=subtype, format=fmt)
    got = load(p, SR)
    # Codecs add a little encoder delay/padding; the length must still be about 1 s.
    assert abs(got.signal.size / SR - 1.0) < 0.1
    assert abs(dominant_hz(got.signal, SR) - 1000.0) < 5.0
    assert 0.15 < np.sqrt(np.mean(got.signal[2000:-2000] ** 2)) < 0.3  # 0.3 amplitude sine: RMS 0.21


def test_upper_case_extension_and_probe(tmp_path):
    p = write_audio(tmp_path / "LOUD.WAV", tone(seconds=0.25), SR, subtype="PCM_16")
    info = probe(p)
    assert (info.samplerate, info.channels, info.frames) == (SR, 1, int(0.25 * SR))
    assert info.duration == pytest.approx(int(0.25 * SR) / SR)
    assert list(scan([tmp_path])) == [p]


@pytest.mark.parametrize("sr_in", [8000, 192000])
def test_resampling_keeps_pitch_and_duration(tmp_path, sr_in):
    x = tone(1000.0, seconds=0.5, sr=sr_in)
    p = write_audio(tmp_path / "r.wav", x, sr_in, subtype="FLOAT")
    got = load(p, SR)
    assert abs(got.signal.size - SR // 2) <= 2
    assert abs(dominant_hz(got.signal, SR) - 1000.0) < 3.0
    # A real resampler keeps the level: 0.3-amplitude sine stays ~0.3 in the middle.
    assert np.max(np.abs(got.signal[1000:-1000])) == pytest.approx(0.3, abs=0.01)


def test_six_channels_mix_to_their_mean(tmp_path):
    n = SR // 4
    chans = np.stack([np.full(n, 0.1 * (c + 1), np.float32) for c in range(6)], axis=1)
    p = write_audio(tmp_path / "six.wav", chans, SR, subtype="FLOAT")
    got = load(p, SR)
    assert got.info.channels == 6
    assert np.allclose(got.signal, np.mean([0.1 * (c + 1) for c in range(6)]), atol=1e-6)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_integer_and_float_reads_mix_to_the_same_mono(tmp_path, subtype):
    # Integer PCM is read as integers and scaled by us (faster); it must equal libsndfile's
    # own float conversion averaged over channels.
    x = np.stack([chirp(seconds=0.3), tone(200.0, seconds=0.3), noise_bursts(seconds=0.3)], axis=1)
    p = write_audio(tmp_path / "three.wav", x, SR, subtype=subtype)
    reference = sf.read(p, dtype="float64")[0].mean(axis=1)
    got = load(p, SR).signal
    assert got.dtype == np.float32
    assert np.max(np.abs(got - reference)) < 1e-6


# ---- bad and odd inputs ---------------------------------------------------------------------


def _assert_audio_error(path, *words):
    with pytest.raises(AudioError) as ei:
        load(path, SR)
    msg = str(ei.value)
    assert printable(path) in msg
    for w in words:
        assert w in ei.value.reason
    return ei.value


def test_empty_file_is_an_error(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    _assert_audio_error(p, "empty file")
    with pytest.raises(AudioError):
        probe(p)


@pytest.mark.parametrize("ext", ["wav", "mp3", "flac", "ogg", "aiff"])
def test_random_bytes_with_an_audio_extension_are_an_error(tmp_path, ext):
    p = tmp_path / f"noise.{ext}"
    p.write_bytes(np.random.default_rng(1).bytes(4000))
    err = _assert_audio_error(p, "not decodable")
    assert "does not exist" not in err.reason  # libsndfile's MP3 wording, misleading here


def test_truncated_header_is_an_error(tmp_path):
    good = write_audio(tmp_path / "good.wav", tone(seconds=0.1), SR, subtype="PCM_16")
    p = tmp_path / "trunc.wav"
    p.write_bytes(good.read_bytes()[:20])
    _assert_audio_error(p, "not decodable")


def test_truncated_data_keeps_what_is_there(tmp_path):
    good = write_audio(tmp_path / "good.wav", tone(seconds=0.1), SR, subtype="PCM_16")
    p = tmp_path / "cut.wav"
    p.write_bytes(good.read_bytes()[: 44 + 2 * 1000])  # header promises 2205 frames, 1000 remain
    got = load(p, SR)
    assert got.signal.size == 1000
    assert np.max(np.abs(got.signal - tone(seconds=0.1)[:1000])) < 1e-4


def test_zero_frame_file_is_an_error(tmp_path):
    p = tmp_path / "zero.wav"
    with sf.SoundFile(p, "w", SR, 1, "PCM_16"):
        pass  # a valid 44-byte header announcing no frames
    assert p.stat().st_size == 44
    _assert_audio_error(p, "zero length")
    with pytest.raises(AudioError, match="zero length"):
        probe(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_an_error(tmp_path, bad):
    x = tone(seconds=0.2)
    x[1234] = bad
    p = write_audio(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    _assert_audio_error(p, "non-finite")


def test_missing_file_and_directory_are_errors(tmp_path):
    _assert_audio_error(tmp_path / "nope.wav", "no such file")
    d = tmp_path / "dir.wav"
    d.mkdir()
    _assert_audio_error(d, "directory")


def test_broken_link_is_an_error_and_skipped_by_scan(tmp_path):
    link = tmp_path / "broken.wav"
    link.symlink_to(tmp_path / "gone.wav")
    _assert_audio_error(link, "no such file")
    assert list(scan([tmp_path])) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_is_an_error(tmp_path):
    p = write_audio(tmp_path / "locked.wav", tone(seconds=0.1), SR, subtype="PCM_16")
    p.chmod(0)
    try:
        _assert_audio_error(p, "permission denied")
    finally:
        p.chmod(0o644)


def test_permission_denied_is_named_as_such(tmp_path, monkeypatch):
    # Runs as root too: libsndfile and open() are made to fail the way they do for a user
    # without read permission (root reads anything, so chmod alone cannot show it).
    p = write_audio(tmp_path / "locked.wav", tone(seconds=0.1), SR, subtype="PCM_16")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode.sf, "SoundFile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("System error")))
    monkeypatch.setattr(validate, "open", refuse, raising=False)
    _assert_audio_error(p, "permission denied")


def test_silent_audio_warns_but_loads(tmp_path):
    p = write_audio(tmp_path / "quiet.wav", np.zeros(SR // 2, np.float32), SR, subtype="PCM_16")
    got = load(p, SR)
    assert got.signal.size == SR // 2
    assert len(got.warnings) == 1 and isinstance(got.warnings[0], AudioWarning)
    assert "silent" in got.warnings[0].reason


def test_quiet_but_not_silent_audio_does_not_warn(tmp_path):
    p = write_audio(tmp_path / "soft.wav", tone(seconds=0.2, amp=1e-3), SR, subtype="PCM_16")
    assert load(p, SR).warnings == []


@pytest.mark.parametrize("sr_in", [22050, 8000, 192000])
def test_one_sample_file_loads_and_warns_as_short(tmp_path, sr_in):
    p = write_audio(tmp_path / "one.wav", np.array([0.5], np.float32), sr_in, subtype="FLOAT")
    got = load(p, SR, min_samples=4096)
    assert got.signal.size >= 1 and np.isfinite(got.signal).all()
    assert any("shorter than one analysis frame" in w.reason for w in got.warnings)


def test_non_utf8_file_name_round_trips(tmp_path):
    raw_dir = os.fsencode(tmp_path)
    raw = os.path.join(raw_dir, b"caf\xe9-\xff.wav")  # Latin-1 bytes: not valid UTF-8
    sf.write(raw, tone(seconds=0.2), SR, subtype="PCM_16")
    found = list(scan([tmp_path]))
    assert len(found) == 1
    assert os.fsencode(found[0]) == raw
    got = load(found[0], SR)
    assert got.signal.size == int(0.2 * SR)
    assert os.fsencode(got.info.path) == raw
    assert load(raw, SR).signal.size == got.signal.size  # bytes paths work too
    shown = printable(found[0])
    shown.encode("utf-8")  # printable: lone surrogates would raise here
    assert "\\xe9" in shown and "\\xff" in shown


def test_errors_about_a_non_utf8_name_keep_the_path_and_print_cleanly(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"bad-\xe9.wav")
    with open(raw, "wb") as fh:
        fh.write(b"not audio at all")
    with pytest.raises(AudioError) as ei:
        load(raw, SR)
    assert os.fsencode(ei.value.path) == raw
    str(ei.value).encode("utf-8")
    assert "bad-\\xe9.wav: not decodable" in str(ei.value)


def test_long_file_streams_in_blocks(tmp_path, monkeypatch):
    # Small blocks stand in for an hour-long file: many blocks, resampler state carried across.
    monkeypatch.setattr(decode, "BLOCK_SECONDS", 0.37)
    x = noise_bursts(seconds=3.0, sr=44100)
    p = write_audio(tmp_path / "long.wav", x, 44100, subtype="FLOAT")
    streamed = load(p, SR).signal
    monkeypatch.setattr(decode, "BLOCK_SECONDS", 1000.0)
    whole = load(p, SR).signal
    assert abs(streamed.size - whole.size) <= 1
    n = min(streamed.size, whole.size)
    assert np.max(np.abs(streamed[:n] - whole[:n])) < 1e-4


def test_load_copes_with_a_header_that_undercounts(tmp_path, monkeypatch):
    # MP3 and truncated files can announce fewer frames than they decode to.
    x = chirp(seconds=1.0)
    p = write_audio(tmp_path / "x.wav", x, SR, subtype="FLOAT")
    real_info_of = decode.header_info

    def lying(f, path):
        info = real_info_of(f, path)
        return audio.AudioInfo(info.path, info.samplerate, info.channels, 10, 10 / info.samplerate)

    monkeypatch.setattr(decode, "header_info", lying)
    monkeypatch.setattr(decode, "BLOCK_SECONDS", 0.1)
    got = load(p, SR)
    assert got.signal.size == x.size and np.array_equal(got.signal, x)


# ---- scanning -------------------------------------------------------------------------------


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    write_audio(root / "b.wav", tone(seconds=0.05), SR, subtype="PCM_16")
    write_audio(root / "A.FLAC", tone(seconds=0.05), SR, subtype="PCM_16")
    write_audio(root / "sub" / "deep" / "c.ogg", tone(seconds=0.05), SR, format="OGG", subtype="VORBIS")
    write_audio(root / ".hidden.wav", tone(seconds=0.05), SR, subtype="PCM_16")
    write_audio(root / ".cache" / "d.wav", tone(seconds=0.05), SR, subtype="PCM_16")
    (root / "notes.txt").write_text("not audio")
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    (root / "noext").write_bytes(b"RIFF")
    (root / "sub" / "loop").symlink_to(root)  # a directory symlink loop
    (root / "sub" / "self.wav").symlink_to(root / "sub" / "self.wav")  # ELOOP on open
    (root / "sub" / "dangling.mp3").symlink_to(root / "missing.mp3")
    os.link(root / "b.wav", root / "sub" / "b-hardlink.wav")  # same file twice
    (root / "sub" / "b-symlink.wav").symlink_to(root / "b.wav")
    return root


def test_scan_recurses_skips_noise_and_survives_links(tmp_path):
    root = _tree(tmp_path)
    found = list(scan([root]))
    names = [p.relative_to(root).as_posix() for p in found]
    # b.wav, its hard link and its symlink are one real file: the first in sorted order wins.
    assert names == ["A.FLAC", "b.wav", "sub/deep/c.ogg"]
    assert all(p.is_absolute() for p in found)


def test_scan_is_sorted_deduplicated_across_roots_and_takes_explicit_files(tmp_path):
    root = _tree(tmp_path)
    explicit = root / ".hidden.wav"  # named explicitly, so not skipped as hidden
    found = list(scan([root / "sub", root, explicit, root / "notes.txt"]))
    assert found == sorted(found, key=str)
    assert [p.name for p in found] == [".hidden.wav", "A.FLAC", "b.wav", "c.ogg"]


def test_scan_relative_paths_become_absolute(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    monkeypatch.chdir(root)
    # sub/loop leads back up to lib, so lib's own files are reached through it (once each),
    # and named by their real paths; b.wav (reached via the loop and via b-symlink.wav) and its
    # hard link are one file, the first real path in sorted order.
    assert list(scan(["sub"])) == [
        root / "A.FLAC",
        root / "b.wav",
        root / "sub" / "deep" / "c.ogg",
    ]


def test_scan_missing_root_is_an_error(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        list(scan([tmp_path / "absent"]))


def test_extensions_are_lower_case_with_dot():
    assert {".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3"} <= AUDIO_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTENSIONS)


# ---- items ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds,expected",
    [
        (25.0, [(0, 10), (10, 20), (20, 25)]),
        (21.0, [(0, 10), (10, 20), (20, 21)]),  # a 1 s tail is kept
        (20.5, [(0, 10), (10, 20.5)]),  # a shorter tail merges into the window before it
        (20.0, [(0, 10), (10, 20)]),
        (10.0, [(0, 10)]),
        (10.4, [(0, 10.4)]),
        (3.0, [(0, 3)]),
    ],
)
def test_split_items_rule(seconds, expected):
    sr = 100
    x = np.arange(int(seconds * sr), dtype=np.float32)
    segs = split_items(x, sr)
    assert [(s.start, s.end) for s in segs] == [(float(a), float(b)) for a, b in expected]
    assert np.array_equal(np.concatenate([s.signal for s in segs]), x)  # nothing lost, nothing doubled


def test_split_single_sample_is_one_item():
    segs = split_items(np.ones(1, np.float32), SR)
    assert len(segs) == 1 and segs[0].signal.size == 1 and segs[0].end == pytest.approx(1 / SR)


@pytest.mark.parametrize("block_seconds", [0.3, 1.0, 2.5, 100.0])
@pytest.mark.parametrize("seconds", [0.5, 2.0, 2.05, 4.2, 5.99, 6.0, 6.1])
def test_iter_items_streams_the_same_items_as_split_items(tmp_path, monkeypatch, block_seconds, seconds):
    monkeypatch.setattr(decode, "BLOCK_SECONDS", block_seconds)
    sr = 8000
    x = np.random.default_rng(0).uniform(-0.5, 0.5, int(seconds * sr)).astype(np.float32)
    p = write_audio(tmp_path / "x.wav", x, sr, subtype="FLOAT")
    info, items, warnings = iter_items(p, sr, item_seconds=2.0, min_last_seconds=0.5)
    streamed = list(items)
    reference = split_items(x, sr, item_seconds=2.0, min_last_seconds=0.5)
    assert [(s.start, s.end) for s in streamed] == [(s.start, s.end) for s in reference]
    for a, b in zip(streamed, reference):
        assert np.array_equal(a.signal, b.signal)
    assert info.frames == x.size and warnings == []


def test_iter_items_reports_nan_found_late(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "BLOCK_SECONDS", 0.5)
    x = tone(seconds=3.0)
    x[-10] = np.nan
    p = write_audio(tmp_path / "late.wav", x, SR, subtype="FLOAT")
    _, items, _ = iter_items(p, SR, item_seconds=1.0)
    with pytest.raises(AudioError, match="non-finite"):
        list(items)
