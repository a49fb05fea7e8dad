"""OpenL3 audio embeddings (Cramer et al. 2019) computed in PyTorch, pooled to T steps per item.

The network is OpenL3's audio model, rebuilt in torch from the authors' Keras weights (read
with h5py, see features.openl3_weights; CC BY 4.0): no TensorFlow, runs on CUDA when there is
one, else on the CPU with torch's threads. Each batch norm after a convolution is folded into
that convolution; the one on the input spectrogram is not (the convolution after it pads the
*normalised* spectrogram with zeros, which a folded bias would turn into a different border),
so it stays a scalar affine step.

Pipeline for one item (mono, 48 kHz):

1. Windows of 1 s every `hop_seconds` (default 1.0 s: indexing speed; OpenL3's own default is
   0.1 s). As in openl3's `center=True`, half a window of zeros goes before the signal, the end
   is zero-padded so every sample is seen, and window i is centred on time i * hop.
2. A Mel spectrogram of each window, 199 frames of hop 242 with n_fft 2048 and a periodic Hann
   window, in dB: 10*log10(max(m, 1e-10)) minus the window's maximum, clipped at -80 dB.
   Two front-ends (parameter `frontend`), which differ by several dB (openl3 issue #80):
   - "kapre-0.1.4" (default): the spectrogram the weights were trained on. kapre 0.1.4's
     Melspectrogram(power_melgram=1.0, htk=True, padding='same'): 'same' padding of 982
     samples each side, m = sqrt(M @ |X|^2) with M the HTK-scale Mel filterbank with
     area-normalised triangles (librosa's norm=1 of that time, `norm='slaney'` today).
   - "openl3-0.4": what the openl3 0.4 package feeds the same weights (kapre 0.3, and its
     own dB step): frames from sample 0 with the end zero-padded (tf.signal.stft pad_end),
     m = M @ |X| with M the Slaney-scale, area-normalised filterbank. Offered so that
     embeddings can be compared with the openl3 package's.
3. BatchNorm, then 4 blocks of (3x3 'same' conv, BN, ReLU) x 2 with 64, 128, 256, 512
   filters, 2x2 max-pool after blocks 1-3; the last convolution (`audio_embedding_layer`)
   has no BN/ReLU. Keras' BatchNorm epsilon, 1e-3, is used.
4. Max-pool ((32, 24) -> 512 or (8, 8) -> 6144 for mel256; (16, 24) / (4, 8) for mel128)
   and a channels-last flatten, as Keras does, give the embedding.

The embeddings of an item are then pooled like logmel's frames (features.pool_steps), so
D = embedding_size * len(stats). The identity records a short hash of the weights file, so
features made with other weights are never mixed with these.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from soundsearch.errors import FeaturizerError
from soundsearch.features import Featurizer, check_signal, parse_stats, pool_steps
from soundsearch.features import openl3_weights as W

SAMPLE_RATE = 48000
WINDOW = SAMPLE_RATE  # 1 s analysis windows
N_FFT = 2048
HOP = 242
N_FRAMES = -(-WINDOW // HOP)  # 199: 'same' padding (and pad_end) give ceil(48000 / 242) frames
PAD_TOTAL = (N_FRAMES - 1) * HOP + N_FFT - WINDOW  # 1964
N_MELS = {"mel128": 128, "mel256": 256}
POOL = {
    ("mel128", 512): (16, 24),
    ("mel128", 6144): (4, 8),
    ("mel256", 512): (32, 24),
    ("mel256", 6144): (8, 8),
}
BN_EPS = 1e-3  # Keras' BatchNormalization default (torch's is 1e-5)
AMIN = 1e-10
DYNAMIC_RANGE = 80.0
FRONTENDS = ("kapre-0.1.4", "openl3-0.4")
DEFAULT_FRONTEND = "kapre-0.1.4"

# Windows per forward pass: block 1 holds ~13 MB of activations per mel256 window, so a chunk
# of 8 stays well inside a small machine's memory; a GPU takes more at once.
_CPU_CHUNK = 8
_CUDA_CHUNK = 64


# --- Mel filterbanks ------------------------------------------------------------------------


def _hz_to_mel_htk(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, htk: bool, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) area-normalised triangular filters from 0 Hz to Nyquist, float64.

    librosa's construction (the one kapre 0.1.4 and 0.3 call), on the HTK mel scale or Slaney's.
    """
    from soundsearch.features.logmel import hz_to_mel, mel_to_hz

    to_mel, to_hz = (_hz_to_mel_htk, _mel_to_hz_htk) if htk else (hz_to_mel, mel_to_hz)
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_f = to_hz(np.linspace(to_mel(0.0), to_mel(sample_rate / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    weights.setflags(write=False)
    return weights


# --- Framing --------------------------------------------------------------------------------


def hop_samples(hop_seconds: float) -> int:
    # openl3 truncates: int(hop_size * 48000).
    return int(hop_seconds * SAMPLE_RATE)


def n_windows(n_samples: int, hop: int) -> int:
    """Windows openl3 (center=True) makes of n_samples: 1 + ceil((n + W/2 - W) / hop), at least 1."""
    n = n_samples + WINDOW // 2
    return 1 if n <= WINDOW else 1 + -(-(n - WINDOW) // hop)


def windows(signal: np.ndarray, hop: int) -> np.ndarray:
    """(n_windows, 48000) float32 read-only view of the centred, end-padded signal."""
    x = check_signal(signal)
    n = n_windows(x.size, hop)
    padded = np.zeros((n - 1) * hop + WINDOW, np.float32)
    padded[WINDOW // 2 : WINDOW // 2 + x.size] = x
    return np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[::hop][:n]


# --- The network ----------------------------------------------------------------------------


def _torch():
    import torch

    return torch


def build_frontend(input_repr: str, frontend: str):
    """torch module: (B, 48000) windows -> (B, 1, n_mels, 199) dB spectrograms."""
    torch = _torch()
    htk = frontend == "kapre-0.1.4"
    fb = mel_filterbank(N_MELS[input_repr], htk).astype(np.float32)

    class MelFrontend(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("fb_t", torch.from_numpy(np.ascontiguousarray(fb.T)))
            n = torch.arange(N_FFT, dtype=torch.float64)
            # Periodic Hann, as librosa's get_window('hann', fftbins=True) and tf.signal.hann_window.
            self.register_buffer("window", (0.5 - 0.5 * torch.cos(2 * torch.pi * n / N_FFT)).float())
            # 'same' convolution padding puts half of it first; tf.signal.stft(pad_end) all at the end.
            self.pad = (PAD_TOTAL // 2, PAD_TOTAL - PAD_TOTAL // 2) if htk else (0, PAD_TOTAL)
            self.htk = htk

        def forward(self, x):
            x = torch.nn.functional.pad(x, self.pad)
            frames = x.unfold(-1, N_FFT, HOP) * self.window  # (B, 199, 2048)
            spec = torch.fft.rfft(frames, dim=-1)
            if self.htk:
                power = torch.view_as_real(spec).square().sum(-1)
                mel = torch.sqrt(power @ self.fb_t)  # kapre 0.1.4, power_melgram=1.0
            else:
                mel = spec.abs() @ self.fb_t  # kapre 0.3 Magnitude -> ApplyFilterbank
            db = 10.0 * torch.log10(torch.clamp(mel, min=AMIN))
            db = db - db.amax(dim=(1, 2), keepdim=True)
            db = torch.clamp(db, min=-DYNAMIC_RANGE)
            return db.transpose(1, 2).unsqueeze(1)

    return MelFrontend()


def build_network(weights: W.AudioWeights, input_repr: str, embedding_size: int):
    """torch module: (B, 1, n_mels, 199) spectrograms -> (B, embedding_size), BN folded."""
    torch = _torch()
    pool = POOL[(input_repr, embedding_size)]

    def affine(bn: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        scale = bn["gamma"].astype(np.float64) / np.sqrt(bn["moving_variance"].astype(np.float64) + BN_EPS)
        return scale, bn["beta"] - bn["moving_mean"] * scale

    class AudioNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            s, b = affine(weights.input_bn)
            self.register_buffer("in_scale", torch.tensor(float(s[0])))
            self.register_buffer("in_shift", torch.tensor(float(b[0])))
            convs = []
            for i, conv in enumerate(weights.convs):
                k = conv["kernel"].astype(np.float64).transpose(3, 2, 0, 1)  # Keras HWIO -> torch OIHW
                bias = conv["bias"].astype(np.float64)
                if i < len(weights.bns):
                    s, b = affine(weights.bns[i])
                    k = k * s[:, None, None, None]
                    bias = bias * s + b
                c = torch.nn.Conv2d(k.shape[1], k.shape[0], 3, padding=1)
                c.weight.data = torch.from_numpy(k.astype(np.float32))
                c.bias.data = torch.from_numpy(bias.astype(np.float32))
                convs.append(c)
            self.convs = torch.nn.ModuleList(convs)
            self.pool = pool

        def forward(self, x):
            # Channels-last (NHWC) activations: oneDNN's CPU convolutions ran this stack ~1.7x
            # faster than in NCHW here (bench/openl3.py), and GPUs prefer it too.
            x = (x * self.in_scale + self.in_shift).contiguous(memory_format=torch.channels_last)
            last = len(self.convs) - 1
            for i, conv in enumerate(self.convs):
                x = conv(x)
                if i < last:
                    x = torch.relu_(x)
                if i in (1, 3, 5):
                    x = torch.nn.functional.max_pool2d(x, 2, 2)
            # Keras pools with padding='same'; these pool sizes divide the (n_mels/8, 24) map exactly.
            x = torch.nn.functional.max_pool2d(x, self.pool, self.pool)
            return x.permute(0, 2, 3, 1).flatten(1)  # Keras flattens channels-last

    net = AudioNet().to(memory_format=torch.channels_last)
    net.requires_grad_(False)
    return net.eval()


def conv_flops(input_repr: str) -> float:
    """Multiply-adds x 2 of the eight convolutions for one window (the bulk of the work)."""
    h, w = N_MELS[input_repr], N_FRAMES
    total = 0.0
    for i, (cin, cout) in enumerate(W.CONV_CHANNELS):
        total += 2.0 * h * w * cin * cout * 9
        if i in (1, 3, 5):
            h, w = h // 2, w // 2
    return total


# --- The featurizer -------------------------------------------------------------------------

_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_LOCK = threading.Lock()


def _device():
    torch = _torch()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _load(path: Path, input_repr: str, embedding_size: int, frontend: str):
    """(sha, frontend module, network) for a weights file, cached per process by file state."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, input_repr, embedding_size, frontend)
    with _MODEL_LOCK:
        hit = _MODEL_CACHE.get(key)
        if hit is None:
            sha = W.file_sha256(path)
            weights = W.read_weights(path)
            device = _device()
            hit = (sha, build_frontend(input_repr, frontend).to(device), build_network(weights, input_repr, embedding_size).to(device))
            _MODEL_CACHE.clear()  # one model per process is the common case; don't hoard 20 MB copies
            _MODEL_CACHE[key] = hit
    return hit


class OpenL3(Featurizer):
    name = "openl3"
    # 2: the torch port (version 1 wrapped the TensorFlow openl3 package).
    version = 2

    def __init__(
        self,
        content_type: str = "env",
        input_repr: str = "mel256",
        embedding_size: int = 512,
        hop_seconds: float = 1.0,
        steps: int = 10,
        stats: str | Sequence[str] = "mean",
        frontend: str = DEFAULT_FRONTEND,
        weights: str | None = None,
        weights_sha: str | None = None,
        sample_rate: int = SAMPLE_RATE,
        center: bool = True,
    ) -> None:
        if sample_rate != SAMPLE_RATE:
            raise FeaturizerError(f"openl3 works at 48000 Hz only, got sample_rate={sample_rate!r}")
        if center is not True:
            raise FeaturizerError("openl3 supports center=True only (windows centred on their timestamps)")
        if content_type not in W.CONTENT_TYPES:
            raise FeaturizerError(f"openl3 content_type must be 'env' or 'music', got {content_type!r}")
        if input_repr not in N_MELS:
            raise FeaturizerError(f"openl3 input_repr must be mel128 or mel256, got {input_repr!r}")
        if embedding_size not in (512, 6144):
            raise FeaturizerError(f"openl3 embedding_size must be 512 or 6144, got {embedding_size!r}")
        if frontend not in FRONTENDS:
            raise FeaturizerError(f"openl3 frontend must be one of {', '.join(FRONTENDS)}, got {frontend!r}")
        try:
            hop_seconds, steps = float(hop_seconds), int(steps)
        except (TypeError, ValueError) as e:
            raise FeaturizerError(f"bad openl3 parameter: {e}") from None
        if hop_samples(hop_seconds) < 1 or steps < 1:
            raise FeaturizerError(f"openl3 needs hop_seconds >= 1/48000 and steps >= 1, got {hop_seconds}, {steps}")
        self.content_type = content_type
        self.input_repr = input_repr
        self.embedding_size = int(embedding_size)
        self.hop_seconds = hop_seconds
        self.hop = hop_samples(hop_seconds)
        self.steps = steps
        self.stats = parse_stats(stats)
        self.frontend_name = frontend
        self.sample_rate = SAMPLE_RATE
        self.frame_samples = WINDOW
        self.dim = self.embedding_size * len(self.stats)
        self._weights_arg = None if weights is None else str(weights)
        self.weights_path = W.find_weights(input_repr, content_type, weights)
        self.weights_sha, self._frontend, self._net = _load(self.weights_path, input_repr, self.embedding_size, frontend)
        if weights_sha is not None and not self.weights_sha.startswith(str(weights_sha)):
            raise FeaturizerError(
                f"the openl3 weights at {self.weights_path} (sha256 {self.weights_sha[:12]}) are not the ones "
                f"these features were made with (sha256 {weights_sha}); put those back or re-index"
            )
        self.device = next(self._net.parameters()).device

    @property
    def params(self) -> dict[str, Any]:
        return {
            "content_type": self.content_type,
            "input_repr": self.input_repr,
            "embedding_size": self.embedding_size,
            "hop_seconds": self.hop_seconds,
            "steps": self.steps,
            "stats": ",".join(self.stats),
            "frontend": self.frontend_name,
            "weights_sha": self.weights_sha[:12],
            "sample_rate": self.sample_rate,
            "center": True,
        }

    def spec(self) -> dict[str, Any]:
        # An explicit weights path travels with the spec (worker processes rebuild the
        # featurizer from it) but stays out of the identity: the hash says which weights.
        spec = super().spec()
        if self._weights_arg is not None:
            spec["params"]["weights"] = self._weights_arg
        return spec

    def frame_times(self, n: int) -> np.ndarray:
        """Timestamps (s) of n embeddings: window i is centred on i * hop."""
        return np.arange(n) * self.hop / SAMPLE_RATE

    def embed_windows(self, wins: np.ndarray) -> np.ndarray:
        """(N, 48000) windows -> (N, embedding_size) float32 embeddings."""
        torch = _torch()
        chunk = _CUDA_CHUNK if self.device.type == "cuda" else _CPU_CHUNK
        out = np.empty((wins.shape[0], self.embedding_size), np.float32)
        with torch.inference_mode():
            for i in range(0, wins.shape[0], chunk):
                x = torch.from_numpy(np.array(wins[i : i + chunk], dtype=np.float32)).to(self.device)  # a writable copy
                out[i : i + chunk] = self._net(self._frontend(x)).cpu().numpy()
        return out

    def spectrograms(self, signal: np.ndarray) -> np.ndarray:
        """(n_windows, n_mels, 199) dB spectrograms of a signal's windows (for checks and plots)."""
        torch = _torch()
        with torch.inference_mode():
            x = torch.from_numpy(np.array(windows(signal, self.hop))).to(self.device)
            return self._frontend(x)[:, 0].cpu().numpy()

    def frames(self, signal: np.ndarray) -> np.ndarray:
        """(n_windows, embedding_size) embeddings of a mono 48 kHz signal, before pooling."""
        return self.embed_windows(windows(signal, self.hop))

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        return pool_steps(self.frames(signal), self.steps, self.stats)

    def batch(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        # All items' windows through the network together: fuller chunks than item by item.
        if not signals:
            return np.zeros((0, self.steps, self.dim), np.float32)
        views = [windows(s, self.hop) for s in signals]
        emb = self.embed_windows(np.concatenate(views) if len(views) > 1 else views[0])
        bounds = np.cumsum([0] + [v.shape[0] for v in views])
        return np.stack(
            [pool_steps(emb[a:b], self.steps, self.stats) for a, b in zip(bounds[:-1], bounds[1:])]
        ).astype(np.float32, copy=False)

