"""aiSFX embeddings (Ma & Lerch 2022), pooled to T steps per item.

Weights: the "X-Sequential-CE" model of Alison B. Ma and Alexander Lerch, "Representation
Learning for the Automatic Indexing of Sound Effects Libraries", ISMIR 2022, released with the
`aisfx` package under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); features made
with them are derived from that work and must credit it. soundsearch does not ship the weights
and does not import `aisfx`: it reads the package's checkpoint safely (no pickled code runs,
see features.weights), converts it once to `<data dir>/weights/aisfx-<sha16>.safetensors`,
and runs the network in its own torch code. Weights are looked for in $SOUNDSEARCH_AISFX_WEIGHTS
(.safetensors or the original .pth), then the converted copy, then the installed package
(`pip install --no-deps aisfx`; its pinned dependencies conflict with soundsearch's).

Front-end (aisfx's librosa path, matched to float32 rounding): the item at 44.1 kHz mono is
peak-normalised (an all-zero item is left as it is, so silence gives finite features); frames
of 2048 samples with a periodic Hann window every 1024 samples, the signal zero-padded by 1024
at both ends (librosa's center=True, pad_mode="constant"), so 1 + n // 1024 frames; power
spectrum through 96 HTK Mel filters from 0 to 22050 Hz, each summing to one; then

    x = log10(1e4 * mel_power + 1) / 9.457798957824707

(the divisor is the maximum over the paper's training spectrograms, aisfx's "original" norm).

Trimming: before blocking, leading and trailing frames whose total Mel power is more than
60 dB below the item's loudest frame are dropped, keeping at least 8 frames, so a 0.3 s
one-shot in a 2 s file is described by the one-shot, not by the silence around it (the net
ends in a max over time, but its convolutions and the mean over blocks still see the
padding). Silence inside the sound is kept.

Blocks: 100 frames (2.3 s) every `hop_frames` frames: 100 by default, blocks side by side, half
the cost of aisfx's own 50 (0.5 overlap), which an index of thousands of files feels (the store
keeps only the mean and max over blocks, which overlap changes little; `hop_frames=50` gives
aisfx's framing). When the
blocks do not end on the last frame, one more block is aligned to the end: aisfx drops that
partial block, losing up to 1.1 s of the tail (a whole short tail sound), and zero-padding it
would describe silence that is not there. A sound shorter than a block is run as one block of
its own frames: the network is convolutional and ends in a max over time, so it takes any
length; it is zero-padded (zero is digital silence after the log) only to 8 frames, the least
its three 2x2 max-pools leave one time step from.

Network (aisfx's EmbeddingNet): four blocks of (3x3 conv, batch norm, ReLU) twice with 64,
128, 256 and 512 channels, 2x2 max-pool after the first three; then mean over frequency and max
over time, 512 values per block. Batch norm is folded into the convolutions; the training
heads are not used. About 3.86 GFLOP per 100-frame block (bench/index.py counts it), so a 10 s
item (8 blocks) costs ~31 GFLOP: this featurizer is ~100x logmel's cost, and uses CUDA when
available.

Per item the block embeddings (B, 512) are pooled to (steps, 512 * len(stats)) by
features.pool_steps; by default mean and max, (10, 1024).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from soundsearch.errors import FeaturizerError
from soundsearch.features import Featurizer, check_signal, parse_stats, pool_steps
from soundsearch.features.logmel import MelPower, _hann, centered_frames, mel_filterbank
from soundsearch.features.weights import WeightSource, Weights, numpy_pickle_globals, resolve_weights

WEIGHTS_ENV = "SOUNDSEARCH_AISFX_WEIGHTS"
INSTALL_HINT = (
    "the aisfx featurizer needs the aiSFX model weights (Ma & Lerch, ISMIR 2022, CC BY 4.0): "
    f"install them with `pip install --no-deps aisfx`, or set {WEIGHTS_ENV} to their "
    ".pth or .safetensors file"
)

SAMPLE_RATE = 44100
N_FFT = 2048
HOP_LENGTH = 1024
N_MELS = 96
BLOCK_FRAMES = 100
# Three 2x2 max-pools: 8 frames is the shortest input that still leaves one time step.
MIN_FRAMES = 8
SPEC_MAX = 9.457798957824707
TRIM_DB = 60.0
BN_EPS = 1e-5
CHANNELS = (64, 128, 256, 512)
DEFAULT_STATS = "mean,max"
# Blocks per forward pass: batching across items amortises per-call overhead, while a block
# costs ~8 MB of activations in the first conv block, so 32 stay well inside memory.
_MAX_BATCH_BLOCKS = 32

_FIXED: dict[str, Any] = {
    "sample_rate": SAMPLE_RATE,
    "n_fft": N_FFT,
    "hop_length": HOP_LENGTH,
    "n_mels": N_MELS,
    "fmin": 0.0,
    "fmax": SAMPLE_RATE / 2.0,
    "mel": "htk,unit_sum",
    "log": f"log10(1e4*x+1)/{SPEC_MAX!r}",
    "normalize": "peak",
    "block_frames": BLOCK_FRAMES,
    "min_frames": MIN_FRAMES,
    "trim_db": TRIM_DB,
    "last_block": "end_aligned",
}

_PREFIX = "embedding_net."


def _extract(checkpoint: Any) -> dict[str, torch.Tensor]:
    # aisfx pickles (state_dict, {dataset: (index, classes)}); only the embedding net is used.
    state = checkpoint[0]
    out = {
        k[len(_PREFIX) :]: v.float()
        for k, v in state.items()
        if k.startswith(_PREFIX) and not k.endswith("num_batches_tracked")
    }
    if not out:
        raise KeyError(f"no {_PREFIX}* tensors")
    return out


WEIGHT_SOURCE = WeightSource(
    name="aisfx",
    env_var=WEIGHTS_ENV,
    package="aisfx",
    package_path="models/checkpoint.pth",
    extract=_extract,
    hint=INSTALL_HINT,
    extra_globals=tuple(numpy_pickle_globals()),
)


def fold_batch_norm(tensors: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(weight, bias)] for the 8 convolutions with each following batch norm folded in."""

    def f64(name: str) -> np.ndarray:
        return tensors[name].detach().cpu().numpy().astype(np.float64)

    layers = []
    for block in range(1, 5):
        for i in (1, 2):
            try:
                w = f64(f"conv_block{block}.conv{i}.weight")
                bn = {k: f64(f"conv_block{block}.bn{i}.{k}") for k in ("weight", "bias", "running_mean", "running_var")}
            except KeyError as e:
                raise FeaturizerError(f"aisfx weights lack {e.args[0]}; {INSTALL_HINT}") from None
            scale = bn["weight"] / np.sqrt(bn["running_var"] + BN_EPS)
            # Folded in float64, so the fold adds no rounding beyond the final cast. In numpy:
            # the same IEEE operations as torch's float64 ones (bit-identical weights), ~7x
            # faster here (0.02 s against 0.16 s of every process that featurizes, a query's too).
            layers.append((
                torch.from_numpy((w * scale[:, None, None, None]).astype(np.float32)),
                torch.from_numpy((bn["bias"] - bn["running_mean"] * scale).astype(np.float32)),
            ))
    expected = [(c_out, c_in) for c_in, c_out in zip((1,) + CHANNELS, CHANNELS) for c_in in (c_in, c_out)]
    got = [tuple(w.shape[:2]) for w, _ in layers]
    if got != expected or any(tuple(w.shape[2:]) != (3, 3) for w, _ in layers):
        raise FeaturizerError(f"aisfx weights have unexpected shapes {got}; {INSTALL_HINT}")
    return layers


def conv_flops(frames: int, n_mels: int = N_MELS) -> int:
    """Multiply-adds x 2 of the conv stack on one (frames, n_mels) block."""
    total, t, f = 0, frames, n_mels
    c_in = 1
    for block, c_out in enumerate(CHANNELS):
        total += 2 * t * f * 9 * (c_in * c_out + c_out * c_out)
        c_in = c_out
        if block < 3:
            t, f = t // 2, f // 2
    return total


class AiSFX(Featurizer):
    name = "aisfx"
    version = 1

    def __init__(
        self,
        steps: int = 10,
        stats: str | Sequence[str] = DEFAULT_STATS,
        hop_frames: int = 100,
        weights: str | None = None,
        device: str | None = None,
        **fixed: Any,
    ) -> None:
        for key, value in fixed.items():
            if key not in _FIXED:
                raise FeaturizerError(f"unknown aisfx parameter {key!r}")
            if value != _FIXED[key]:
                raise FeaturizerError(f"aisfx supports {key}={_FIXED[key]!r} only, got {value!r}")
        try:
            steps, hop_frames = int(steps), int(hop_frames)
        except (TypeError, ValueError) as e:
            raise FeaturizerError(f"bad aisfx parameter: {e}") from None
        if steps <= 0:
            raise FeaturizerError("aisfx steps must be positive")
        if not 1 <= hop_frames <= BLOCK_FRAMES:
            raise FeaturizerError(f"aisfx hop_frames must be 1..{BLOCK_FRAMES}, got {hop_frames}")
        if weights is not None and (not isinstance(weights, str) or not weights):
            raise FeaturizerError(f"aisfx weights must be a checksum string, got {weights!r}")
        self.steps = steps
        self.stats = parse_stats(stats)
        self.hop_frames = hop_frames
        self.sample_rate = SAMPLE_RATE
        self.dim = CHANNELS[-1] * len(self.stats)
        # 1 + n // hop >= MIN_FRAMES: a signal this long needs no padding frames.
        self.frame_samples = (MIN_FRAMES - 1) * HOP_LENGTH
        loaded = resolve_weights(WEIGHT_SOURCE, expected=weights)
        self.weights: Weights = loaded
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Channels-last activations and weights: on this project's CPU runner the conv stack
        # measured ~1.7x faster than in the default NCHW layout (oneDNN's preferred layout).
        self._layers = [
            (w.to(self._device).contiguous(memory_format=torch.channels_last), b.to(self._device))
            for w, b in fold_batch_norm(loaded.tensors)
        ]
        self._window = _hann(N_FFT)
        self._mel_power = MelPower(mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 0.0, SAMPLE_RATE / 2.0, htk=True, norm="unit_sum"))

    @property
    def params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "stats": ",".join(self.stats),
            "hop_frames": self.hop_frames,
            "weights": self.weights.short,
            **_FIXED,
        }

    # -- front-end -------------------------------------------------------------------------

    def mel_power(self, signal: np.ndarray) -> np.ndarray:
        """(F, 96) float32 Mel power of the peak-normalised signal, F = 1 + n // 1024."""
        x = check_signal(signal)
        peak = float(np.max(np.abs(x)))
        if not np.isfinite(peak):
            raise FeaturizerError("cannot featurize a signal with NaN or infinite samples")
        if peak > 0.0:
            x = x / np.float32(peak)
        view = centered_frames(x, N_FFT, HOP_LENGTH)
        out = np.empty((view.shape[0], N_MELS), np.float32)
        for i in range(0, view.shape[0], 64):  # chunks keep the FFT's working set in cache
            out[i : i + 64] = self._mel_power(view[i : i + 64] * self._window)
        return out

    @staticmethod
    def log_scale(mel_power: np.ndarray) -> np.ndarray:
        x = mel_power * np.float32(1e4)
        x += np.float32(1.0)
        np.log10(x, out=x)
        x /= np.float32(SPEC_MAX)
        return x

    @staticmethod
    def active_range(mel_power: np.ndarray) -> tuple[int, int]:
        """[start, stop) of the frames within TRIM_DB of the loudest, widened to MIN_FRAMES."""
        n = mel_power.shape[0]
        energy = mel_power.sum(axis=1, dtype=np.float64)
        peak = energy.max() if n else 0.0
        if peak <= 0.0:
            return 0, n
        active = np.flatnonzero(energy >= peak * 10.0 ** (-TRIM_DB / 10.0))
        start, stop = int(active[0]), int(active[-1]) + 1
        short = MIN_FRAMES - (stop - start)
        if short > 0:
            start = max(0, start - short // 2)
            stop = min(n, start + MIN_FRAMES)
            start = max(0, stop - MIN_FRAMES)
        return start, stop

    def frames(self, signal: np.ndarray) -> np.ndarray:
        """(F', 96) float32 normalised log-Mel frames of the trimmed item, F' >= 8."""
        power = self.mel_power(signal)
        start, stop = self.active_range(power)
        spec = self.log_scale(power[start:stop])
        if spec.shape[0] < MIN_FRAMES:
            spec = np.concatenate([spec, np.zeros((MIN_FRAMES - spec.shape[0], N_MELS), np.float32)])
        return spec

    def block_starts(self, n_frames: int) -> list[int]:
        if n_frames <= BLOCK_FRAMES:
            return [0]
        starts = list(range(0, n_frames - BLOCK_FRAMES + 1, self.hop_frames))
        if starts[-1] + BLOCK_FRAMES < n_frames:
            starts.append(n_frames - BLOCK_FRAMES)
        return starts

    def blocks(self, signal: np.ndarray) -> np.ndarray:
        """(B, L, 96) float32 network inputs; L = 100, or fewer frames for a short sound."""
        spec = self.frames(signal)
        length = min(BLOCK_FRAMES, spec.shape[0])
        return np.stack([spec[s : s + length] for s in self.block_starts(spec.shape[0])])

    # -- network ---------------------------------------------------------------------------

    def embed(self, blocks: np.ndarray) -> np.ndarray:
        """(B, 512) float32 embeddings of (B, L, 96) blocks (all of one length L >= 8)."""
        out = []
        with torch.inference_mode():
            for i in range(0, blocks.shape[0], _MAX_BATCH_BLOCKS):
                x = torch.from_numpy(np.ascontiguousarray(blocks[i : i + _MAX_BATCH_BLOCKS])).to(self._device)
                x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
                for j, (w, b) in enumerate(self._layers):
                    x = F.relu_(F.conv2d(x, w, b, padding=1))
                    if j in (1, 3, 5):
                        x = F.max_pool2d(x, 2)
                out.append(x.mean(dim=3).amax(dim=2).float().cpu().numpy())
        return np.concatenate(out)

    def block_embeddings(self, signal: np.ndarray) -> np.ndarray:
        """(B, 512) embeddings of the item's blocks, before pooling."""
        return self.embed(self.blocks(signal))

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        return pool_steps(self.block_embeddings(signal), self.steps, self.stats)

    def batch(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        if not signals:
            return np.zeros((0, self.steps, self.dim), np.float32)
        per_item = [self.blocks(s) for s in signals]
        # Blocks of equal length from all items go through the network together.
        by_length: dict[int, list[int]] = {}
        for k, b in enumerate(per_item):
            by_length.setdefault(b.shape[1], []).append(k)
        embeddings: list[np.ndarray | None] = [None] * len(per_item)
        for members in by_length.values():
            emb = self.embed(np.concatenate([per_item[k] for k in members]))
            offsets = np.cumsum([0] + [per_item[k].shape[0] for k in members])
            for k, a, z in zip(members, offsets[:-1], offsets[1:]):
                embeddings[k] = emb[a:z]
        return np.stack([pool_steps(e, self.steps, self.stats) for e in embeddings]).astype(np.float32, copy=False)
