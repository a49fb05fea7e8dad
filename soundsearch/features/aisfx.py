"""aiSFX embeddings (Ma & Lerch 2022), pooled to T steps per item.

Weights: the "X-Sequential-CE" model of Alison B. Ma and Alexander Lerch, "Representation
Learning for the Automatic Indexing of Sound Effects Libraries", ISMIR 2022, released with the
`aisfx` package under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); features made
with them are derived from that work and must credit it. soundsearch does not ship the weights
and does not import `aisfx`: it reads the package's checkpoint safely (no pickled code runs,
see features.weights), converts it once to `<data dir>/weights/aisfx-<sha16>.safetensors`,
and runs the network in its own torch or numpy code (below). Weights are looked for in
$SOUNDSEARCH_AISFX_WEIGHTS (.safetensors or the original .pth), then the converted copy, then
the installed package (`pip install --no-deps aisfx`; its pinned dependencies conflict with
soundsearch's).

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
heads are not used. The folded weights' shapes are the network's one description here (widths,
depth and pools are read from them and checked, `_check_layers`). About 3.86 GFLOP per
100-frame block (bench/index.py counts it), so a 10 s item (8 blocks) costs ~31 GFLOP: this
featurizer is ~100x logmel's cost.

Two implementations of it, equal to float rounding (tests/test_aisfx_numpy.py): torch (batched,
channels-last, CUDA when available), which indexing uses throughout (`for_indexing`); and numpy
(im2col and one matrix product per convolution, one BLAS thread), which spares a query importing
torch (~1 s of a cold `soundsearch query`). The folded weights are kept as
`<weights dir>/aisfx-<sha16>.folded.npz` whenever they are loaded with torch (features.weights:
save_derived), and a featurizer built for a store's spec (which names the weights' checksum)
reads them from there without torch. It then runs its first NUMPY_MAX_BLOCKS blocks in numpy,
its front-end's FFT with them (numpy's, sparing scipy's import), and imports torch for the rest:
~0.04-0.1 s a block either way on a busy 2-core machine, so a query of up to ~30 s (32 blocks) is
done before importing torch would have paid off, where more cores speed torch's threads.

Per item the block embeddings (B, 512) are pooled to (steps, 512 * len(stats)) by
features.pool_steps; by default mean and max, (10, 1024).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from soundsearch.errors import FeaturizerError
from soundsearch.features import Featurizer, check_signal, parse_stats, pool_steps
from soundsearch.features.logmel import MelPower, _hann, centered_frames, mel_filterbank
from soundsearch.features.weights import (
    DIGEST_CHARS,
    WeightSource,
    Weights,
    load_derived,
    numpy_pickle_globals,
    resolve_weights,
    save_derived,
)

if TYPE_CHECKING:
    import torch

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
DEFAULT_STATS = "mean,max"
# Blocks per forward pass: batching across items amortises per-call overhead, while a block
# costs ~8 MB of activations in the first conv block, so 32 stay well inside memory.
_MAX_BATCH_BLOCKS = 32
# Blocks a featurizer runs in numpy before it imports torch (module docstring, "Network").
NUMPY_MAX_BLOCKS = 32
# The derived weights file's kind: weights_dir/aisfx-<sha16>.folded.npz (features.weights).
FOLDED = "folded"

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

# A layer is (kernel (3, 3, in, out), bias (out,)), float32: the layout the numpy forward pass
# multiplies by as it is, and the one the folded weights file keeps.
Layer = tuple[np.ndarray, np.ndarray]


def fold_batch_norm(tensors: Mapping[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(weight (out, in, 3, 3), bias (out,))] float32 of the checkpoint's convolutions in order
    (conv_block1.conv1, .conv2, conv_block2.conv1, ...), each with its batch norm folded in."""

    def f64(name: str) -> np.ndarray:
        return np.asarray(tensors[name], dtype=np.float64)

    layers = []
    for block in range(1, 1 + len({k.split(".")[0] for k in tensors if k.startswith("conv_block")})):
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
                (w * scale[:, None, None, None]).astype(np.float32),
                (bn["bias"] - bn["running_mean"] * scale).astype(np.float32),
            ))
    return layers


def _to_layers(folded: list[tuple[np.ndarray, np.ndarray]]) -> list[Layer]:
    return [(np.ascontiguousarray(w.transpose(2, 3, 1, 0)), b) for w, b in folded]


def _to_arrays(layers: list[Layer]) -> dict[str, np.ndarray]:
    """The folded weights file's arrays: conv{j}.weight (3, 3, in, out), conv{j}.bias (out,)."""
    return {f"conv{j}.{part}": a for j, layer in enumerate(layers) for part, a in zip(("weight", "bias"), layer)}


def _from_arrays(arrays: Mapping[str, np.ndarray]) -> list[Layer] | None:
    n = len(arrays) // 2
    try:
        layers = [(arrays[f"conv{j}.weight"], arrays[f"conv{j}.bias"]) for j in range(n)]
    except KeyError:
        return None
    return layers if layers and 2 * n == len(arrays) else None


def _check_layers(layers: list[Layer]) -> list[Layer]:
    """`layers` when they are aisfx's EmbeddingNet: pairs of 3x3 convolutions from one input
    channel, each taking the previous one's channels, with a 2x2 max-pool after every pair but
    the last, as many pools as MIN_FRAMES allows (8 frames: three). The shapes are the network's
    one description; nothing else here states its widths."""
    shapes = [(tuple(w.shape), tuple(b.shape)) for w, b in layers]
    ok = (
        len(layers) >= 2
        and len(layers) % 2 == 0
        and 2 ** _n_pools(len(layers)) == MIN_FRAMES
        and all(len(w) == 4 and w[:2] == (3, 3) and b == (w[3],) for w, b in shapes)
        and shapes[0][0][2] == 1
        and all(a[0][3] == b[0][2] for a, b in zip(shapes, shapes[1:]))
        and all(w.dtype == b.dtype == np.float32 for w, b in layers)
    )
    if not ok:
        raise FeaturizerError(f"aisfx weights have unexpected shapes {[w for w, _ in shapes]}; {INSTALL_HINT}")
    return layers


def _n_pools(n_layers: int) -> int:
    return n_layers // 2 - 1


def _pools_after(j: int, n_layers: int) -> bool:
    """Whether a 2x2 max-pool follows convolution j (of n_layers): after every pair but the last."""
    return j % 2 == 1 and j < n_layers - 1


def conv_flops(frames: int, layers: Sequence[Layer], n_mels: int = N_MELS) -> int:
    """Multiply-adds x 2 of the conv stack `layers` on one (frames, n_mels) block."""
    total, t, f = 0, frames, n_mels
    for j, (w, _) in enumerate(layers):
        kh, kw, c_in, c_out = w.shape
        total += 2 * t * f * kh * kw * c_in * c_out
        if _pools_after(j, len(layers)):
            t, f = t // 2, f // 2
    return total


def _conv3x3_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ReLU(conv2d(x, w, padding=1) + b) on channels-last (B, T, F, C) float32, as torch's
    conv2d (a correlation): im2col, then one matrix product with the (9 C, O) kernel."""
    n, t, f, c = x.shape
    padded = np.zeros((n, t + 2, f + 2, c), np.float32)
    padded[:, 1:-1, 1:-1] = x
    col = np.empty((n, t, f, 3, 3, c), np.float32)
    for i in range(3):
        for j in range(3):
            col[:, :, :, i, j] = padded[:, i : i + t, j : j + f]
    out = col.reshape(n * t * f, 9 * c) @ w.reshape(9 * c, -1)
    out += b
    np.maximum(out, 0.0, out=out)
    return out.reshape(n, t, f, -1)


def _max_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool of (B, T, F, C), an odd last row or column dropped (torch's floor mode)."""
    n, t, f, c = x.shape
    return x[:, : t // 2 * 2, : f // 2 * 2].reshape(n, t // 2, 2, f // 2, 2, c).max(axis=(2, 4))


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
        # 1 + n // hop >= MIN_FRAMES: a signal this long needs no padding frames.
        self.frame_samples = (MIN_FRAMES - 1) * HOP_LENGTH
        self._device_name = device
        self._weights: Weights | None = None
        self._torch_layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        # The weights with batch norm folded in, read without torch when a store's spec names
        # them (`weights`) and they were folded before; else loaded with torch, folded, and
        # kept for next time (features.weights: load_derived, save_derived).
        derived = load_derived(WEIGHT_SOURCE, weights, FOLDED) if device is None else None
        layers = _from_arrays(derived[0]) if derived is not None else None
        if layers is not None:
            digest = derived[1]
        else:
            loaded = resolve_weights(WEIGHT_SOURCE, expected=weights)
            layers, digest = _to_layers(fold_batch_norm(loaded.tensors)), loaded.digest
            self._weights = loaded
        self._layers = _check_layers(layers)
        self.weights_digest = digest
        if self._weights is not None:
            save_derived(WEIGHT_SOURCE, self._weights, FOLDED, _to_arrays(self._layers))
            self._torch_network()  # torch is imported: the network runs there (embed)
        self.dim = self._layers[-1][0].shape[3] * len(self.stats)
        # Blocks left to run in numpy before torch is imported for the rest (embed).
        self.numpy_blocks_left = 0 if device is not None else NUMPY_MAX_BLOCKS
        self._window = _hann(N_FFT)
        fb = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 0.0, SAMPLE_RATE / 2.0, htk=True, norm="unit_sum")
        self._filterbank = fb
        self._mel_power: MelPower | None = None  # scipy's float32 FFT: made on first use
        self._mel_power_numpy = MelPower(fb, use_scipy=False)

    @property
    def weights(self) -> Weights:
        """The weights as torch tensors (loaded with torch on first use when folded ones were read)."""
        if self._weights is None:
            self._weights = resolve_weights(WEIGHT_SOURCE, expected=self.weights_digest[:DIGEST_CHARS])
        return self._weights

    def for_indexing(self) -> AiSFX:
        """Indexing runs the network in torch from the first block: batched, and on CUDA when
        there is one; numpy only spares a short query importing torch."""
        self.numpy_blocks_left = 0
        self._torch_network()
        return self

    def conv_flops(self, frames: int) -> int:
        """Multiply-adds x 2 of the network on one block of `frames` frames."""
        return conv_flops(frames, self._layers)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "stats": ",".join(self.stats),
            "hop_frames": self.hop_frames,
            "weights": self.weights_digest[:DIGEST_CHARS],
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
        # While the network runs in numpy (a short query), so does the FFT: importing scipy
        # (~0.2 s) costs more than numpy's slower FFT of a few hundred frames; equal to rounding.
        if self._numpy_next():
            mel = self._mel_power_numpy
        else:
            if self._mel_power is None:
                self._mel_power = MelPower(self._filterbank)
            mel = self._mel_power
        out = np.empty((view.shape[0], N_MELS), np.float32)
        for i in range(0, view.shape[0], 64):  # chunks keep the FFT's working set in cache
            out[i : i + 64] = mel(view[i : i + 64] * self._window)
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

    def _numpy_next(self) -> bool:
        return self._torch_layers is None and self.numpy_blocks_left > 0

    def embed(self, blocks: np.ndarray, backend: str | None = None) -> np.ndarray:
        """(B, 512) float32 embeddings of (B, L, 96) blocks (all of one length L >= 8).

        `backend` None: numpy while torch is not loaded and the blocks fit in what is left of
        NUMPY_MAX_BLOCKS, else torch (imported now if need be); "numpy" or "torch" to choose."""
        if backend is None:
            backend = "numpy" if self._numpy_next() and blocks.shape[0] <= self.numpy_blocks_left else "torch"
        if backend == "numpy":
            self.numpy_blocks_left = max(0, self.numpy_blocks_left - blocks.shape[0])
            return self._embed_numpy(blocks)
        if backend != "torch":
            raise ValueError(f"unknown backend {backend!r}")
        return self._embed_torch(blocks)

    def _embed_numpy(self, blocks: np.ndarray) -> np.ndarray:
        """embed in numpy: block by block (a block's im2col of its first convolutions is ~22 MB),
        with one BLAS thread: for the matrix sizes of one block that was fastest on this
        project's shared 2-core runner (0.04-0.1 s a block, against 0.3 s with two threads
        competing with other work), and it is the same work torch does in ~1 s of importing."""
        from threadpoolctl import threadpool_limits

        n = len(self._layers)
        out = np.empty((blocks.shape[0], self._layers[-1][0].shape[3]), np.float32)
        with threadpool_limits(1, user_api="blas"):
            for k in range(blocks.shape[0]):
                x = np.ascontiguousarray(blocks[k : k + 1, :, :, None], dtype=np.float32)
                for j, (w, b) in enumerate(self._layers):
                    x = _conv3x3_relu(x, w, b)
                    if _pools_after(j, n):
                        x = _max_pool2(x)
                out[k] = x[0].mean(axis=1).max(axis=0)  # mean over frequency, max over time
        return out

    def _torch_network(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The folded layers as torch tensors on the device (torch imported here)."""
        if self._torch_layers is None:
            import torch

            self._device = torch.device(self._device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
            # Channels-last activations and weights: on this project's CPU runner the conv
            # stack measured ~1.7x faster than in the default NCHW layout (oneDNN's preferred).
            self._torch_layers = [
                (
                    torch.from_numpy(w).permute(3, 2, 0, 1).to(self._device).contiguous(memory_format=torch.channels_last),
                    torch.from_numpy(b).to(self._device),
                )
                for w, b in self._layers
            ]
        return self._torch_layers

    def _embed_torch(self, blocks: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        layers = self._torch_network()
        out = []
        with torch.inference_mode():
            for i in range(0, blocks.shape[0], _MAX_BATCH_BLOCKS):
                x = torch.from_numpy(np.ascontiguousarray(blocks[i : i + _MAX_BATCH_BLOCKS])).to(self._device)
                x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
                for j, (w, b) in enumerate(layers):
                    x = F.relu_(F.conv2d(x, w, b, padding=1))
                    if _pools_after(j, len(layers)):
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
