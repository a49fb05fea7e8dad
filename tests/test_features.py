"""Featurizer registry, the log-Mel featurizer against librosa, pooling, featurize_file."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import chirp, noise_bursts, tone, write_audio
from soundsearch.errors import AudioError, FeaturizerError
from soundsearch.features import (
    DEFAULT_FEATURIZER,
    available_featurizers,
    featurize_file,
    featurizer_from_spec,
    get_featurizer,
    pool_steps,
)
from soundsearch.features.logmel import LogMel, hz_to_mel, mel_filterbank, mel_to_hz

librosa = pytest.importorskip("librosa")

SR = 22050


def assert_close_to_librosa(ours: np.ndarray, ref: np.ndarray) -> None:
    # Both sides compute in float32, whose rounding floor sits ~120 dB under a frame's loudest
    # band; there the two FFTs' rounding differs by a few tenths of a dB. Within 80 dB of the
    # frame's peak band (all that matters after standardisation) they agree to 1e-3 dB.
    assert ours.shape == ref.shape
    audible = ref > ref.max(axis=1, keepdims=True) - 80.0
    assert np.max(np.abs(ours - ref)[audible]) < 1e-3
    assert np.max(np.abs(ours - ref)) < 0.5


def librosa_logmel(x: np.ndarray, sr=SR, n_fft=4096, hop=2048, n_mels=128, fmin=0.0, fmax=None) -> np.ndarray:
    S = librosa.feature.melspectrogram(
        y=x, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax,
        power=2.0, center=True, pad_mode="constant", window="hann",
    )
    return librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=None).T


# ---- against librosa ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax",
    [(22050, 4096, 128, 0.0, 11025.0), (16000, 1024, 64, 50.0, 7000.0), (44100, 2048, 40, 0.0, 22050.0)],
)
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64)
    assert ours.shape == ref.shape == (n_mels, 1 + n_fft // 2)
    # Tolerance: 1e-6 of the largest weight (both are float64 evaluations of the same formula).
    assert np.max(np.abs(ours - ref)) <= 1e-6 * np.max(np.abs(ref))


def test_mel_scale_matches_librosa_and_inverts():
    hz = np.array([0.0, 200.0, 999.0, 1000.0, 1001.0, 4000.0, 11025.0])
    assert np.allclose(hz_to_mel(hz), librosa.hz_to_mel(hz, htk=False), rtol=1e-12, atol=1e-12)
    assert np.allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(
    "signal",
    [
        tone(440.0, seconds=2.0) + 0.05 * noise_bursts(seconds=2.0, seed=3),
        chirp(80.0, 9000.0, seconds=1.3),
        noise_bursts(seconds=0.9, seed=7),
    ],
    ids=["tone+noise", "chirp", "bursts"],
)
def test_logmel_frames_match_a_librosa_pipeline(signal):
    ours = LogMel().frames(signal)
    ref = librosa_logmel(signal)
    assert ours.shape == ref.shape == (1 + signal.size // 2048, 128)
    assert_close_to_librosa(ours, ref)


def test_logmel_frames_match_librosa_with_other_params():
    x = chirp(100.0, 7000.0, seconds=1.0, sr=16000)
    f = get_featurizer("logmel", sample_rate=16000, n_fft=1024, hop_length=256, n_mels=64, fmin=50, fmax=7500)
    ref = librosa_logmel(x, sr=16000, n_fft=1024, hop=256, n_mels=64, fmin=50.0, fmax=7500.0)
    assert_close_to_librosa(f.frames(x), ref)


def test_tone_peaks_in_the_band_holding_its_frequency():
    f = LogMel(stats="mean")
    fb = mel_filterbank(22050, 4096, 128, 0.0, 11025.0)
    centre_bin = int(round(1000.0 * 4096 / 22050))
    expected_band = int(np.argmax(fb[:, centre_bin]))
    steps = f(tone(1000.0, seconds=3.0))
    assert np.all(np.argmax(steps, axis=1) == expected_band)


# ---- shapes, lengths, silence ---------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 100, 2047, 2048, 4095, 4096, 20480, 22050, 220500, 300001])
def test_any_length_gives_ten_by_128_float32(n):
    x = np.random.default_rng(n).uniform(-0.3, 0.3, n).astype(np.float32)
    out = get_featurizer("logmel", stats="mean")(x)
    assert out.shape == (10, 128) and out.dtype == np.float32 and np.isfinite(out).all()


def test_ten_second_item_has_108_frames_split_into_ten_groups():
    f = LogMel(stats="mean")
    x = noise_bursts(seconds=10.0, seed=1)
    frames = f.frames(x)
    assert frames.shape == (108, 128)
    out = f(x)
    bounds = [0, 10, 21, 32, 43, 54, 64, 75, 86, 97, 108]  # floor(k * 108 / 10)
    for t in range(10):
        assert np.allclose(out[t], frames[bounds[t] : bounds[t + 1]].mean(axis=0), atol=1e-4)


def test_silence_gives_the_finite_floor():
    out = get_featurizer("logmel", stats="mean")(np.zeros(22050, np.float32))
    assert np.allclose(out, -100.0, atol=1e-4)


def test_non_mono_or_empty_signal_is_refused():
    f = get_featurizer("logmel")
    with pytest.raises(FeaturizerError, match="mono"):
        f(np.zeros((100, 2), np.float32))
    with pytest.raises(FeaturizerError, match="empty"):
        f(np.zeros(0, np.float32))


def test_batch_equals_one_by_one():
    f = get_featurizer("logmel", stats="mean,std,max")
    sigs = [tone(300.0, seconds=2.5), np.ones(7, np.float32) * 0.1, chirp(seconds=10.0), noise_bursts(seconds=0.3)]
    batched = f.batch(sigs)
    assert batched.shape == (4, 10, 384) and batched.dtype == np.float32
    for b, s in zip(batched, sigs):
        assert np.allclose(b, f(s), atol=1e-4)
    assert f.batch([]).shape == (0, 10, 384)


# ---- pooling --------------------------------------------------------------------------------


def reference_pool(frames: np.ndarray, steps: int, stats) -> np.ndarray:
    n = frames.shape[0]
    rows = []
    for t in range(steps):
        if n >= steps:
            group = frames[(t * n) // steps : ((t + 1) * n) // steps]
        else:
            group = frames[int((t + 0.5) * n / steps)][None]
        fn = {"mean": np.mean, "std": np.std, "max": np.max, "min": np.min}
        rows.append(np.concatenate([fn[s](group, axis=0) for s in stats]))
    return np.array(rows)


@pytest.mark.parametrize("n_frames", [1, 3, 9, 10, 11, 108, 1001])
def test_pool_steps_matches_a_plain_loop(n_frames):
    frames = np.random.default_rng(n_frames).normal(-40, 10, (n_frames, 5)).astype(np.float32)
    stats = ("mean", "std", "max", "min")
    ours = pool_steps(frames, 10, stats)
    assert ours.shape == (10, 20)
    assert np.allclose(ours, reference_pool(frames.astype(np.float64), 10, stats), atol=1e-4)


def test_stats_widen_d_and_keep_the_mean_block():
    x = noise_bursts(seconds=4.0, seed=2)
    mean = get_featurizer("logmel", stats="mean")(x)
    f = get_featurizer("logmel", stats="max, mean")
    assert f.dim == 256 and f.params["stats"] == "mean,max"
    both = f(x)
    assert both.shape == (10, 256)
    assert np.allclose(both[:, :128], mean, atol=1e-5)
    assert np.all(both[:, 128:] >= both[:, :128] - 1e-4)
    three = get_featurizer("logmel", stats="mean,std,max")(x)
    assert three.shape == (10, 384) and np.all(three[:, 128:256] >= 0)


@pytest.mark.parametrize("bad", ["", "median", "mean,mean", "mean;max"])
def test_bad_stats_are_refused(bad):
    with pytest.raises(FeaturizerError, match="stats"):
        get_featurizer("logmel", stats=bad)


# ---- registry, identity, specs --------------------------------------------------------------


def test_default_identity_is_stable():
    # A literal on purpose: stores and models compare this string, so a change must be deliberate
    # (bump LogMel.version) and show up here.
    f = get_featurizer("logmel")
    assert f.name == "logmel" and DEFAULT_FEATURIZER == "aisfx"
    assert (f.sample_rate, f.steps, f.dim) == (22050, 10, 384)
    assert f.identity == (
        'logmel/1:{"center":true,"fmax":11025.0,"fmin":0.0,"hop_length":2048,'
        '"log":"10*log10(max(mel_power,1e-10))","n_fft":4096,"n_mels":128,"sample_rate":22050,'
        '"stats":"mean,std,max","steps":10,"window":"hann"}'
    )
    assert json.loads(json.dumps(f.spec())) == f.spec()


@pytest.mark.parametrize(
    "change",
    [{"sample_rate": 16000}, {"n_fft": 2048}, {"hop_length": 1024}, {"n_mels": 64}, {"fmin": 20.0},
     {"fmax": 8000.0}, {"steps": 5}, {"stats": "mean,max"}],
)
def test_every_param_changes_the_identity(change):
    assert get_featurizer("logmel", **change).identity != get_featurizer("logmel").identity


def test_spec_round_trips_and_equal_params_are_equal_featurizers():
    f = get_featurizer("logmel", stats="max,mean", n_mels=64)
    g = featurizer_from_spec(json.loads(json.dumps(f.spec())))
    assert g == f and g.identity == f.identity and g.dim == 128
    assert get_featurizer("LogMel", stats="mean,max", n_mels=64) == f


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"name": "nope", "params": {}}, "unknown featurizer"),
        ({"name": "logmel", "params": {"bogus": 1}}, "bogus"),
        ({"name": "logmel", "params": {"log": "ln"}}, "log"),
        ({"name": "logmel", "params": {"n_mels": 0}}, "positive"),
        ({"name": "logmel", "params": {"fmax": 99999}}, "fmax"),
        ({"name": "logmel", "params": {"n_fft": "big"}}, "bad logmel parameter"),
        ({"params": {}}, "not a featurizer spec"),
    ],
)
def test_bad_specs_raise_featurizer_error(spec, match):
    with pytest.raises(FeaturizerError, match=match):
        featurizer_from_spec(spec)


def test_openl3_is_registered_but_explains_how_to_get_it(monkeypatch, tmp_path):
    from soundsearch.features import openl3_weights

    assert available_featurizers() == ["aisfx", "logmel", "openl3"]  # the default first
    # As if no weights had been fetched: no env var, no openl3 package, an empty data folder.
    monkeypatch.delenv(openl3_weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setattr(openl3_weights, "_openl3_package_file", lambda name: None)
    with pytest.raises(FeaturizerError) as ei:
        get_featurizer("openl3")
    assert "soundsearch models fetch openl3 --content-type env --input-repr mel256" in str(ei.value)
    assert "--featurizer logmel" in str(ei.value)
    assert get_featurizer("logmel", stats="mean")(tone(seconds=0.5)).shape == (10, 128)  # everything else still works


def test_importing_features_stays_light():
    import subprocess

    code = "import sys, soundsearch.features; print(sorted(m for m in ('soundfile','soxr','torch','librosa') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- featurize_file -------------------------------------------------------------------------


def test_featurize_file_cuts_items_and_matches_direct_featurizing(tmp_path):
    from soundsearch.audio import load

    x = np.stack([chirp(seconds=25.0, sr=44100), tone(300.0, seconds=25.0, sr=44100)], axis=1)
    p = write_audio(tmp_path / "long.flac", x, 44100, subtype="PCM_16")
    f = get_featurizer("logmel")
    ff = featurize_file(p, f)
    assert ff.segments == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert ff.features.shape == (3, 10, 384) and ff.features.dtype == np.float32
    assert ff.warnings == [] and ff.info.channels == 2 and ff.duration == pytest.approx(25.0, abs=1e-3)
    whole = load(p, SR).signal
    assert np.allclose(ff.features[1], f(whole[10 * SR : 20 * SR]), atol=1e-3)


def test_featurize_file_one_sample_warns_and_pads(tmp_path):
    p = write_audio(tmp_path / "blip.wav", np.array([0.25], np.float32), SR, subtype="FLOAT")
    ff = featurize_file(p, get_featurizer("logmel", stats="mean"))
    assert ff.features.shape == (1, 10, 128) and np.isfinite(ff.features).all()
    assert [w.reason.split(" (")[0] for w in ff.warnings] == ["shorter than one analysis frame"]


def test_featurize_file_silent_warns_and_is_usable(tmp_path):
    p = write_audio(tmp_path / "hush.wav", np.zeros(SR, np.float32), SR, subtype="PCM_16")
    ff = featurize_file(p, get_featurizer("logmel", stats="mean"))
    assert ff.features.shape == (1, 10, 128) and np.allclose(ff.features, -100.0, atol=1e-4)
    assert ["silent" in w.reason for w in ff.warnings] == [True]


def test_featurize_file_bad_audio_raises_audio_error(tmp_path):
    p = tmp_path / "junk.wav"
    p.write_bytes(b"RIFF0000WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="junk.wav"):
        featurize_file(p, get_featurizer("logmel", stats="mean"))


def test_numpy_fft_fallback_gives_the_same_features(monkeypatch):
    from soundsearch.features import logmel

    x = tone(440.0, seconds=2.0) + 0.05 * noise_bursts(seconds=2.0, seed=5)
    with_scipy = LogMel()(x)
    monkeypatch.setattr(logmel, "_scipy_fft", None)
    monkeypatch.setattr(logmel, "_scipy_sparse", None)
    plain = LogMel()
    assert plain._mel_power._fb_sparse is None
    assert np.allclose(plain(x), with_scipy, atol=1e-3)


@pytest.mark.parametrize("stats", ["mean,std,max", "mean,std,max,min", "mean", "max,min", "mean,max"])
def test_item_stats_equal_the_statistics_of_all_frames(stats):
    # 120 frames in 10 steps: equal groups of 12, where the identities are exact.
    fz = get_featurizer("logmel", stats=stats)
    rng = np.random.default_rng(3)
    frames = [rng.normal(-40, 9, (120, 128)).astype(np.float32) * rng.uniform(0.5, 2, 128) for _ in range(3)]
    stored = np.stack([pool_steps(f, fz.steps, fz.stats) for f in frames])
    direct = {
        "mean": [f.astype(np.float64).mean(0) for f in frames],
        "std": [f.astype(np.float64).std(0) for f in frames],
        "max": [f.max(0) for f in frames],
        "min": [f.min(0) for f in frames],
    }
    # Whole-item std is recoverable only with the step means alongside the step stds.
    want = [s for s in fz.stats if s != "std" or "mean" in fz.stats]
    expect = np.stack([np.concatenate([direct[s][i] for s in want]) for i in range(3)])
    got = fz.item_stats(stored)
    assert got.dtype == np.float32 and got.shape == (3, 128 * len(want))
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=2e-3)


def test_item_stats_without_declared_stats_take_mean_and_max_over_steps():
    from soundsearch.features import Featurizer

    feats = np.random.default_rng(0).normal(size=(4, 10, 6)).astype(np.float32)
    got = Featurizer().item_stats(feats)
    np.testing.assert_allclose(got, np.concatenate([feats.mean(1), feats.max(1)], axis=1), rtol=1e-6)


def test_index_options_name_what_departs_from_the_defaults():
    from soundsearch.features import departures, index_options

    plain = get_featurizer("logmel").identity
    assert index_options(plain) == "--featurizer logmel"
    paper = get_featurizer("logmel", stats="mean").identity
    assert departures(paper) == ("logmel", ["stats=mean"])
    assert index_options(paper) == "--featurizer logmel -p stats=mean"
