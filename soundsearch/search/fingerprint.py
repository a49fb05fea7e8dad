"""Time-aware fingerprints: what tells a copy of the query from another take of its source.

The acoustic cosine (ranking.acoustic_vectors) compares whole-item statistics of the store's
features. It cannot tell a copy from another take of the same source: measured on the real
corpus, other takes scored up to 0.975 while a 3% slower copy of a 0.3 s snarl scored 0.59 and
a copy with light noise over a one-shot's silences 0.47. A copy keeps the *time course* of the
original; another take does not. So near-duplicates are confirmed on the sound itself:

    fingerprint   the item decoded again at 16 kHz mono; power spectrum (1024-sample Hann
                  frames every 256 samples, 16 ms) through 40 Mel bands; dB; frames more than
                  TRIM_DB below the loudest frame trimmed from both ends (a copy may carry
                  more or less silence); clipped at FLOOR_DB below the loudest frame (light
                  noise in a one-shot's silences sits below it).
    similarity    the best Pearson correlation of the two dB images over the time lags at
                  which most of the item lines up with the query, after undoing each speed
                  change of STRETCHES in time and frequency together (a copy played up to 12%
                  faster or slower, as resampling or varispeed does).

DUPLICATE_FINGERPRINT was chosen on a validation set of copies (bench/duplicates.py: other
corpus recordings; MP3, trimmed end, -12 dB, +2%/-4% speed, pitched down 10% by resampling,
35 dB noise, 22.05 kHz): every trial right and every copy flagged with no false alarm at 0.90
(0.85 let 4 other items through). Reported on tests/test_duplicates.py's set, which no choice
saw: 38/40 queries rank every copy before every other recording (36/40 by acoustic cosine
alone), 332/350 copies flagged, and the one other recording flagged is an edit of the query's
recording (the same truck with and without a horn, 0.99), a near-duplicate by any definition.

Fingerprints are computed at query time, only for the few stored items that the acoustic cosine
already puts near the query (ranking.order_items takes the scores), so nothing changes in the
store. An item whose file cannot be read any more keeps the acoustic rule.
"""

from __future__ import annotations

import os

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 256
N_MELS = 40
TRIM_DB = 30.0
FLOOR_DB = 40.0
# Speed factors tried (log-spaced, 1/1.12 .. 1.12, 1 among them): a copy played faster or slower
# ("varispeed", resampled: a horn pitched down 10% is also 10% longer) is undone in time and
# frequency together. 13 steps keep neighbours within 2% of each other.
STRETCHES: tuple[float, ...] = tuple(float(x) for x in np.exp(np.linspace(-np.log(1.12), np.log(1.12), 13)))
# At least this share of the stored item must line up with the query: a one-shot is not a copy
# of the long recording it occurs in.
MIN_COVER = 0.75
# At or above: a copy of the query (see the module docstring for how it was chosen).
DUPLICATE_FINGERPRINT = 0.90
# Which stored items are fingerprinted: the CANDIDATES best by acoustic cosine among those at or
# above CANDIDATE_COSINE (the loosest copy measured scored 0.47).
CANDIDATES = 24
CANDIDATE_COSINE = 0.45
# A longer query keeps the acoustic rule alone: its fingerprint would cost more than it tells.
MAX_QUERY_SECONDS = 60.0

_FILTERS: np.ndarray | None = None


def _filters() -> np.ndarray:
    global _FILTERS
    if _FILTERS is None:
        from soundsearch.features.logmel import mel_filterbank

        _FILTERS = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 50.0, SAMPLE_RATE / 2).astype(np.float32)
    return _FILTERS


def fingerprint(signal: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """(frames, N_MELS) float32 dB image of a mono signal; None when it is silent."""
    from soundsearch.features.logmel import _hann

    x = np.asarray(signal, dtype=np.float32).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)) or not np.any(x):
        return None
    if sample_rate != SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, sample_rate, SAMPLE_RATE).astype(np.float32)
    if x.size < N_FFT:
        x = np.pad(x, (0, N_FFT - x.size))
    n = 1 + (x.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(x, (n, N_FFT), (x.strides[0] * HOP, x.strides[0]))
    power = np.abs(np.fft.rfft(frames * _hann(N_FFT), axis=1)) ** 2
    mel = power @ _filters().T
    loud = 10 * np.log10(np.maximum(power.sum(1), 1e-20))
    top = float(loud.max())
    kept = np.flatnonzero(loud > top - TRIM_DB)
    mel = mel[kept[0] : kept[-1] + 1]
    db = 10 * np.log10(np.maximum(mel, 1e-20))
    return np.maximum(db, db.max() - FLOOR_DB).astype(np.float32)


def read_signal(path, start: float, end: float) -> np.ndarray | None:
    """[start, end) of a file, mono float32 at SAMPLE_RATE; None when it cannot be read."""
    from soundsearch.audio import read_seconds
    from soundsearch.errors import SoundsearchError

    try:
        x, sr = read_seconds(path, start, end)
    except (SoundsearchError, OSError, RuntimeError, ValueError):
        return None
    if sr != SAMPLE_RATE and x.size:
        import soxr

        x = soxr.resample(x, sr, SAMPLE_RATE).astype(np.float32)
    return x


def read_fingerprint(path, start: float, end: float) -> np.ndarray | None:
    """The fingerprint of [start, end) of a file; None when it cannot be read or is silent."""
    x = read_signal(path, start, end)
    return None if x is None else fingerprint(x, SAMPLE_RATE)


_CENTRES: np.ndarray | None = None


def _band_centres() -> np.ndarray:
    global _CENTRES
    if _CENTRES is None:
        from soundsearch.features.logmel import hz_to_mel, mel_to_hz

        edges = np.linspace(hz_to_mel(50.0, False), hz_to_mel(SAMPLE_RATE / 2, False), N_MELS + 2)
        _CENTRES = np.asarray(mel_to_hz(edges, False), dtype=np.float64)[1:-1]
    return _CENTRES


def _unspeed(f: np.ndarray, factor: float) -> np.ndarray:
    """The dB image of a sound played `factor` times faster, brought back: time stretched by
    `factor`, and each band read where its frequency x `factor` lies."""
    if factor == 1.0:
        return f
    n = max(2, int(round(f.shape[0] * factor)))
    src = np.linspace(0.0, f.shape[0] - 1.0, n)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, f.shape[0] - 1)
    w = (src - i0)[:, None].astype(np.float32)
    t = f[i0] * (1 - w) + f[i1] * w
    centres = _band_centres()
    pos = np.interp(centres * factor, centres, np.arange(N_MELS, dtype=np.float64))
    b0 = np.floor(pos).astype(np.int64)
    b1 = np.minimum(b0 + 1, N_MELS - 1)
    wb = (pos - b0)[None, :].astype(np.float32)
    return t[:, b0] * (1 - wb) + t[:, b1] * wb


def _overlap_correlation(query: np.ndarray, item: np.ndarray) -> float:
    """Best Pearson correlation of the two dB images over the time lags at which they overlap
    by at least MIN_COVER of the item: an item that is a window of a longer copy matches its
    stretch of the query; a short query does not match a long item that merely contains it."""
    a = query.astype(np.float64)
    b = item.astype(np.float64)
    na, nb, bands = a.shape[0], b.shape[0], a.shape[1]
    need = max(1, int(np.ceil(MIN_COVER * nb)))
    if min(na, nb) < need:
        return -1.0
    size = 1 << (na + nb - 1).bit_length()
    full = np.fft.irfft((np.fft.rfft(a, size, axis=0) * np.conj(np.fft.rfft(b, size, axis=0))).sum(1), size)
    lags = np.arange(-(nb - 1), na)  # b[t] against a[t + lag]
    cross = full[lags % size]
    a0, a1 = np.maximum(lags, 0), np.minimum(na, lags + nb)
    b0, b1 = np.maximum(-lags, 0), np.minimum(nb, na - lags)
    n = (a1 - a0) * bands
    ok = (a1 - a0) >= need
    if not ok.any():
        return -1.0

    def window_sums(x):
        c1 = np.concatenate([[0.0], np.cumsum(x.sum(1))])
        c2 = np.concatenate([[0.0], np.cumsum((x * x).sum(1))])
        return c1, c2

    ca1, ca2 = window_sums(a)
    cb1, cb2 = window_sums(b)
    sa, sqa = ca1[a1] - ca1[a0], ca2[a1] - ca2[a0]
    sb, sqb = cb1[b1] - cb1[b0], cb2[b1] - cb2[b0]
    nn = np.maximum(n, 1)
    num = cross - sa * sb / nn
    den = np.sqrt(np.maximum(sqa - sa * sa / nn, 0.0) * np.maximum(sqb - sb * sb / nn, 0.0))
    r = np.where(ok & (den > 1e-9), num / np.maximum(den, 1e-300), -1.0)
    return float(r.max())


def similarity(query: np.ndarray | None, item: np.ndarray | None) -> float:
    """How much the stored item is a copy of (a stretch of) the query, in [-1, 1]; nan when
    either fingerprint is missing. Each speed change of STRETCHES is undone on the item."""
    if query is None or item is None:
        return float("nan")
    return max(_overlap_correlation(query, _unspeed(item, factor)) for factor in STRETCHES)


def compare_candidates(query_path, segments, items, cosine: np.ndarray, eligible: np.ndarray) -> np.ndarray | None:
    """(N,) similarity of the query's sound with the CANDIDATES `eligible` stored items best by
    `cosine` (those at or above CANDIDATE_COSINE), nan for every other item; None when the
    query is not a file, spans more than MAX_QUERY_SECONDS or cannot be fingerprinted.

    `segments`: the query's (start, end) items; `items`: the store's ItemRecords, by row."""
    from soundsearch.search.ranking import top_by_score

    if query_path is None or not segments:
        return None
    start, end = min(s for s, _ in segments), max(e for _, e in segments)
    if end - start > MAX_QUERY_SECONDS:
        return None
    query = read_fingerprint(query_path, start, end)
    if query is None:
        return None
    cosine = np.asarray(cosine, dtype=np.float64)
    out = np.full(cosine.shape[0], np.nan)
    pool = np.flatnonzero(np.asarray(eligible, dtype=bool) & (cosine >= CANDIDATE_COSINE))
    rows = pool[top_by_score(cosine[pool], CANDIDATES)].tolist()

    def compare(row: int) -> float:
        item = items[row]
        return similarity(query, read_fingerprint(item.path, item.start, item.end))

    # Decoding dominates; soundfile, soxr and numpy's FFT release the GIL, so threads overlap it.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(4, len(rows), os.cpu_count() or 1))) as pool_:
        for row, value in zip(rows, pool_.map(compare, rows)):
            out[row] = value
    return out


__all__ = [
    "CANDIDATES",
    "CANDIDATE_COSINE",
    "DUPLICATE_FINGERPRINT",
    "MAX_QUERY_SECONDS",
    "compare_candidates",
    "fingerprint",
    "read_fingerprint",
    "similarity",
]
