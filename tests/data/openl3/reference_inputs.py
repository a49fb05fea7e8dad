"""The inputs of the OpenL3 parity goldens, rebuilt bit for bit from seeds (numpy only).

Shared by `make_goldens.py` (run in a separate TensorFlow environment, it writes the goldens)
and `tests/test_openl3.py` (which rebuilds the same weights and signals and checks the torch
port against the goldens), so the 19 MB of random weights never need to be stored.

Weight order: the layers with weights of OpenL3's audio network in model order, each
layer's arrays in Keras order (`layer.get_weights()`):

    0: input BatchNormalization (1 channel): gamma, beta, moving_mean, moving_variance
    1, 3, 5, ..., 15: Conv2D i (8 of them, channels in soundsearch.features.openl3_weights.
       CONV_CHANNELS): kernel (3, 3, in, out), bias (out,)
    2, 4, ..., 14: BatchNormalization after each of the first 7 convolutions (out channels)

All drawn in that order from one numpy Generator (PCG64, `np.random.default_rng(SEED)`).
"""

from __future__ import annotations

import numpy as np

SEED = 20190512
SIGNAL_SEED = 7
SAMPLE_RATE = 48000
HOP_SECONDS = 0.5
CONV_CHANNELS = ((1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512))


def _bn(rng: np.random.Generator, c: int, first: bool) -> list[np.ndarray]:
    gamma = rng.uniform(0.5, 1.5, c)
    beta = rng.normal(0.0, 0.2, c)
    if first:
        # The input is a dB spectrogram in [-80, 0]: statistics of that order keep the
        # activations in a realistic range (and make folding mistakes visible).
        mean = rng.uniform(-50.0, -30.0, c)
        var = rng.uniform(150.0, 400.0, c)
    else:
        mean = rng.normal(0.0, 0.3, c)
        var = rng.uniform(0.3, 2.0, c)
    return [a.astype(np.float32) for a in (gamma, beta, mean, var)]


def random_weights(seed: int = SEED) -> list[list[np.ndarray]]:
    """Per layer with weights, in model order, its arrays in Keras order (see module doc)."""
    rng = np.random.default_rng(seed)
    layers = [_bn(rng, 1, first=True)]
    for i, (cin, cout) in enumerate(CONV_CHANNELS):
        kernel = rng.normal(0.0, np.sqrt(2.0 / (9 * cin)), (3, 3, cin, cout)).astype(np.float32)
        bias = rng.normal(0.0, 0.05, cout).astype(np.float32)
        layers.append([kernel, bias])
        if i < len(CONV_CHANNELS) - 1:
            layers.append(_bn(rng, cout, first=False))
    return layers


def signals() -> dict[str, np.ndarray]:
    """Three 1.5 s float32 test signals at 48 kHz: seeded noise, a chirp, a tone burst."""
    sr = SAMPLE_RATE
    t = np.arange(int(1.5 * sr)) / sr
    rng = np.random.default_rng(SIGNAL_SEED)
    noise = 0.1 * rng.standard_normal(t.size)
    f0, f1 = 60.0, 20000.0  # exponential sweep over nearly the whole band
    k = np.log(f1 / f0) / 1.5
    chirp = 0.3 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    burst = np.where((t >= 0.4) & (t < 0.7), 0.5 * np.sin(2 * np.pi * 1000.0 * t), 0.0)
    return {k: v.astype(np.float32) for k, v in (("noise", noise), ("chirp", chirp), ("burst", burst))}
