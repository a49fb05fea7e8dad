"""The paper's log-Mel featurizer, pooled to T steps per item.

Frames: signal at 22050 Hz, zero-padded by n_fft/2 at both ends (librosa's `center=True`,
`pad_mode="constant"`), periodic Hann window of 4096, hop 2048, power spectrum |X|^2, a Slaney
Mel filterbank (librosa's default: Slaney mel scale, area-normalised triangles) of 128 bands,
then log compression

    logmel = 10 * log10(max(mel_power, 1e-10))        (dB re 1.0, floor -100 dB)

so digital silence gives a finite -100 everywhere. A 10 s item has 1 + 220500 // 2048 = 108
frames; they are split into T = 10 contiguous groups and summarised per group by `stats`
(see features.pool_steps), giving (10, 128 * len(stats)); by default mean, std and max,
so (10, 384).

Everything is vectorised over frames, in float32: a strided frame view, then per chunk of 64
frames one batched real FFT (scipy.fft when installed, else numpy.fft) and one matrix product
with the precomputed filterbank.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from soundsearch.errors import FeaturizerError
from soundsearch.features import Featurizer, check_signal, parse_stats, pool_steps

# scipy's pocketfft transforms float32 in float32, about 3x faster here than numpy's FFT
# (which is slower still on float32 than on float64); and each FFT bin feeds at most two
# Mel bands, so a sparse filterbank product is ~2x the dense one. Results agree to float
# rounding. Imported on the first MelPower, not with this module: importing scipy.fft and
# scipy.sparse costs ~0.25 s, which a query of an indexed file (that only needs this module's
# filterbank and window for its fingerprint) would otherwise pay. None: scipy is missing (it is
# optional: numpy gives the same features, only slower).
_UNLOADED: Any = object()
_scipy_fft: Any = _UNLOADED
_scipy_sparse: Any = _UNLOADED


def _load_scipy() -> None:
    global _scipy_fft, _scipy_sparse
    if _scipy_fft is not _UNLOADED and _scipy_sparse is not _UNLOADED:
        return
    try:
        from scipy import fft, sparse
    except ImportError:
        fft = sparse = None
    if _scipy_fft is _UNLOADED:
        _scipy_fft = fft
    if _scipy_sparse is _UNLOADED:
        _scipy_sparse = sparse

AMIN = 1e-10
_CHUNK_FRAMES = 64
LOG_FORMULA = "10*log10(max(mel_power,1e-10))"
# Recorded in params so the identity states them; fixed in this version (a spec asking for
# anything else comes from a newer or foreign featurizer and is refused).
_FIXED = {"log": LOG_FORMULA, "window": "hann", "center": True}


# Slaney mel scale (librosa's htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(freqs: np.ndarray | float, htk: bool = False) -> np.ndarray:
    """Slaney mel scale (librosa's htk=False): linear below 1 kHz, logarithmic above; or with
    `htk=True` the HTK formula 2595 * log10(1 + f / 700)."""
    f = np.asarray(freqs, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log_part, f / _F_SP)


def mel_to_hz(mels: np.ndarray | float, htk: bool = False) -> np.ndarray:
    m = np.asarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


MEL_NORMS = ("slaney", "unit_sum")


@lru_cache(maxsize=8)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool = False, norm: str = "slaney"
) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular filters, float64, read-only.

    norm="slaney" (librosa's default) divides each triangle by its width in Hz; "unit_sum"
    makes each filter's weights sum to one (librosa's norm=1, Essentia's unit_sum).
    """
    if norm not in MEL_NORMS:
        raise FeaturizerError(f"unknown mel filter norm {norm!r}: choose one of {', '.join(MEL_NORMS)}")
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        # Area normalisation, so each band measures energy per Hz whatever its width.
        weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    else:
        sums = weights.sum(axis=1, keepdims=True)
        # An empty filter (too many bands for the FFT size) stays all-zero rather than NaN.
        weights /= np.where(sums > 0.0, sums, 1.0)
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    # Periodic Hann (scipy's fftbins=True), as librosa uses for STFT.
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.setflags(write=False)
    return w


def centered_frames(x: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """(1 + len(x) // hop_length, n_fft) strided view of `x` zero-padded by n_fft/2 at both
    ends (librosa's center=True, pad_mode="constant"): frames without copying."""
    half = n_fft // 2
    padded = np.zeros(x.size + 2 * half, np.float32)
    padded[half : half + x.size] = x
    return np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]


class MelPower:
    """Power Mel spectrogram of windowed frames: rfft, |X|^2, one product with the filterbank."""

    def __init__(self, filterbank: np.ndarray, use_scipy: bool = True) -> None:
        """`use_scipy=False`: numpy's FFT and a dense product, without importing scipy (what a
        few frames are cheaper to transform with than importing it, ~0.2 s)."""
        if use_scipy:
            _load_scipy()
        fb = np.asarray(filterbank, dtype=np.float32)
        self._fb_t = np.ascontiguousarray(fb.T)
        self._fb_sparse = _scipy_sparse.csr_array(fb) if use_scipy and _scipy_sparse is not None else None
        self._fft = _scipy_fft if use_scipy else None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(F, n_mels) float32 Mel power of (F, n_fft) windowed float32 frames (overwritten)."""
        if self._fft is not None:
            spec = self._fft.rfft(frames, axis=-1, workers=1, overwrite_x=True)
        else:
            spec = np.fft.rfft(frames.astype(np.float64), axis=-1)
        power = np.abs(spec).astype(np.float32, copy=False)
        power *= power
        if self._fb_sparse is not None:
            return np.ascontiguousarray((self._fb_sparse @ power.T).T)
        return power @ self._fb_t


# Each step summarises its frames by mean, standard deviation and maximum rather than the paper's
# mean alone: on scenes of sounds it never heard, the presence model trained on mean-only steps
# ranked little better than random, while these statistics (short events survive the max,
# texture shows in the std) generalised (shared/design/QUALITY_PROBES.md, models/README.md).
# The paper's variant stays one flag away: `--param stats=mean`.
DEFAULT_STATS = "mean,std,max"


class LogMel(Featurizer):
    name = "logmel"
    version = 1

    def __init__(
        self,
        sample_rate: int = 22050,
        n_fft: int = 4096,
        hop_length: int = 2048,
        n_mels: int = 128,
        fmin: float = 0.0,
        fmax: float | None = None,
        steps: int = 10,
        stats: str | Sequence[str] = DEFAULT_STATS,
        **fixed: Any,
    ) -> None:
        for key, value in fixed.items():
            if key not in _FIXED:
                raise FeaturizerError(f"unknown logmel parameter {key!r}")
            if value != _FIXED[key]:
                raise FeaturizerError(f"logmel supports {key}={_FIXED[key]!r} only, got {value!r}")
        try:
            sample_rate, n_fft, hop_length, n_mels, steps = (
                int(sample_rate), int(n_fft), int(hop_length), int(n_mels), int(steps)
            )
            fmin = float(fmin)
            fmax = float(sample_rate / 2.0 if fmax is None else fmax)
        except (TypeError, ValueError) as e:
            raise FeaturizerError(f"bad logmel parameter: {e}") from None
        if min(sample_rate, n_fft, hop_length, n_mels, steps) <= 0:
            raise FeaturizerError("logmel sample_rate, n_fft, hop_length, n_mels and steps must be positive")
        if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
            raise FeaturizerError(f"logmel needs 0 <= fmin < fmax <= sample_rate/2, got fmin={fmin}, fmax={fmax}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.fmin = fmin
        self.fmax = fmax
        self.steps = steps
        self.stats = parse_stats(stats)
        self.dim = n_mels * len(self.stats)
        self.frame_samples = n_fft
        self._mel_power = MelPower(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax))
        self._window = _hann(n_fft)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "fmin": self.fmin,
            "fmax": self.fmax,
            "steps": self.steps,
            "stats": ",".join(self.stats),
            **_FIXED,
        }

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length

    def _frame_view(self, x: np.ndarray) -> np.ndarray:
        return centered_frames(x, self.n_fft, self.hop_length)

    def _logmel_of_frames(self, frames: np.ndarray) -> np.ndarray:
        mel = self._mel_power(frames)
        np.maximum(mel, np.float32(AMIN), out=mel)
        np.log10(mel, out=mel)
        mel *= np.float32(10.0)
        return mel

    def frames(self, signal: np.ndarray) -> np.ndarray:
        """(F, n_mels) float32 log-Mel frames of a mono signal, before pooling."""
        view = self._frame_view(check_signal(signal))
        out = np.empty((view.shape[0], self.n_mels), np.float32)
        # Chunks of frames keep the FFT's working set (~2 MB a chunk) in cache; one call
        # over a 30 s signal's 323 frames measured ~3x slower per frame than 64-frame chunks.
        for i in range(0, view.shape[0], _CHUNK_FRAMES):
            out[i : i + _CHUNK_FRAMES] = self._logmel_of_frames(view[i : i + _CHUNK_FRAMES] * self._window)
        return out

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        return pool_steps(self.frames(signal), self.steps, self.stats)
