"""search.fingerprint on synthesized sounds: copies match, other takes of a source do not."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

from soundsearch.search import fingerprint as fp

SR = 44100


def _take(seed: int, seconds: float = 3.0) -> np.ndarray:
    """A 'source' recorded once: chirped tone bursts over a quiet bed, at times of this take."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = np.zeros_like(t)
    for _ in range(6):
        on = rng.uniform(0, seconds - 0.4)
        dur = rng.uniform(0.1, 0.35)
        f0 = rng.uniform(300, 1200)
        m = (t >= on) & (t < on + dur)
        tt = t[m] - on
        x[m] += np.sin(2 * np.pi * (f0 + 400 * tt) * tt) * np.hanning(m.sum())
    x += 0.003 * rng.standard_normal(t.size)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def _speed(x: np.ndarray, factor: float) -> np.ndarray:
    return soxr.resample(x, SR, SR / factor).astype(np.float32)


def test_copies_match_and_other_takes_do_not():
    original = _take(1)
    q = fp.fingerprint(original, SR)
    rng = np.random.default_rng(0)
    power = float(np.mean(original.astype(np.float64) ** 2))
    copies = {
        "gain": original * np.float32(0.3),
        "trim": original[int(0.05 * original.size) :],
        "faster3": _speed(original, 1.03),
        "slower3": _speed(original, 1 / 1.03),
        "noise40": original + (rng.standard_normal(original.size) * np.sqrt(power / 1e4)).astype(np.float32),
        "resampled": soxr.resample(original, SR, 22050).astype(np.float32),
        # Pitched down 10% by resampling (varispeed), and quieter.
        "down10": _speed(original, 1 / 1.10) * np.float32(0.5),
        "up8": _speed(original, 1.08),
    }
    for name, y in copies.items():
        sr = 22050 if name == "resampled" else SR
        assert fp.similarity(q, fp.fingerprint(y, sr)) >= fp.DUPLICATE_FINGERPRINT, name
    # Other takes: the same kind of sound (same generator), other events at other times.
    others = [fp.similarity(q, fp.fingerprint(_take(seed), SR)) for seed in range(2, 12)]
    assert max(others) < fp.DUPLICATE_FINGERPRINT, others
    # An identical copy is a perfect match.
    assert fp.similarity(q, fp.fingerprint(original.copy(), SR)) > 0.999


def test_a_short_query_does_not_match_a_long_item_that_contains_it():
    long = np.concatenate([_take(5), _take(1), _take(6)])
    short = _take(1)
    # The query inside the item covers a third of it: not a copy of the item.
    assert fp.similarity(fp.fingerprint(short, SR), fp.fingerprint(long, SR)) == -1.0
    # The other way round (a window of a copy of a longer query) it matches.
    assert fp.similarity(fp.fingerprint(long, SR), fp.fingerprint(short, SR)) > 0.99


def test_silence_and_unreadable_files_give_no_fingerprint(tmp_path):
    assert fp.fingerprint(np.zeros(SR, np.float32), SR) is None
    assert fp.fingerprint(np.zeros(0, np.float32), SR) is None
    assert np.isnan(fp.similarity(None, fp.fingerprint(_take(1), SR)))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert fp.read_fingerprint(bad, 0.0, 1.0) is None
    assert fp.read_fingerprint(tmp_path / "missing.wav", 0.0, 1.0) is None


class _Item:
    def __init__(self, path, start, end):
        self.path, self.start, self.end = path, start, end


def test_compare_candidates_fingerprints_only_the_acoustic_best(tmp_path, monkeypatch):
    paths = []
    for i, x in enumerate([_take(1), _speed(_take(1), 1.02), _take(2), _take(3)]):
        p = tmp_path / f"{i}.wav"
        sf.write(p, x, SR)
        paths.append(p)
    items = [_Item(p, 0.0, 3.5) for p in paths]
    cosine = np.array([1.0, 0.95, 0.6, 0.2])
    eligible = np.array([False, True, True, True])  # row 0 is the query's own item
    monkeypatch.setattr(fp, "CANDIDATES", 1)
    out = fp.compare_candidates(paths[0], [(0.0, 3.0)], items, cosine, eligible)
    # Only the best eligible candidate by cosine was compared; below CANDIDATE_COSINE never.
    assert np.isnan(out[0]) and np.isnan(out[2]) and np.isnan(out[3])
    assert out[1] >= fp.DUPLICATE_FINGERPRINT
    monkeypatch.setattr(fp, "CANDIDATES", 24)
    out = fp.compare_candidates(paths[0], [(0.0, 3.0)], items, cosine, eligible)
    assert out[2] < fp.DUPLICATE_FINGERPRINT and np.isnan(out[3])
    # No file, or a query longer than MAX_QUERY_SECONDS: the acoustic rule stays.
    assert fp.compare_candidates(None, [(0.0, 3.0)], items, cosine, eligible) is None
    assert fp.compare_candidates(paths[0], [(0.0, fp.MAX_QUERY_SECONDS + 1)], items, cosine, eligible) is None
