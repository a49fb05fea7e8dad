"""Write the OpenL3 parity goldens from the reference implementation (openl3 0.4.2 on TensorFlow).

Not run by the test suite (tests never write their own goldens). Run it by hand in a separate
environment (never the project's venv, never committed) that has TensorFlow, openl3 0.4.2 and
kapre 0.3.6, plus the kapre 0.1.4 source. What worked here (Python 3.11, PyPI only):

    python3.11 -m venv /work/tf-venv
    # `tensorflow`, not `tensorflow-cpu`: kapre depends on the former by name. kapre 0.3.6, not
    # 0.3.7, which wants numpy >= 2 while TensorFlow 2.15 (the last with Keras 2) wants < 2.
    /work/tf-venv/bin/pip install tensorflow==2.15.1 kapre==0.3.6 'numpy<2' 'resampy<0.3' \
        soundfile scipy h5py 'librosa<0.11' scikit-learn moviepy scikit-image
    # openl3's setup.py downloads the real weights from GitHub unless the .h5 files already sit
    # beside it, so `pip download openl3==0.4.2` fails offline too (it runs setup.py). Fetch
    # openl3-0.4.2.tar.gz and kapre-0.1.4.tar.gz from the projects' file listings on PyPI and
    # unpack them. The goldens never use the
    # real weights, so empty placeholders let openl3 install:
    cd openl3-0.4.2
    for m in audio image; do for r in linear mel128 mel256; do for c in music env; do
        : > openl3/openl3_${m}_${r}_${c}.h5; done; done; done
    /work/tf-venv/bin/pip install --no-deps .
    cd - && /work/tf-venv/bin/python tests/data/openl3/make_goldens.py --kapre014 /path/to/kapre-0.1.4/kapre

It takes ~30 s on two cores and is deterministic: a second run writes identical arrays.

What it does, with the seeded random weights and signals of `reference_inputs.py`:

1. Builds openl3 0.4.2's own Keras audio network (openl3.models, both mel128 and mel256),
   sets the random weights layer by layer, saves them with Keras' `save_weights` (.h5, in a
   temporary folder) and records that file's layout (layer and weight names) in goldens.json,
   so the test writes its own copy of the file in the same layout.
2. "openl3-0.4": loads that file through openl3's `load_audio_embedding_model_from_path`
   (kapre front-end) and runs `openl3.get_audio_embedding(..., center=True, hop_size=0.5)`
   on each signal, for embedding size 512, and 6144 for the noise signal (the larger pooling
   and the channels-last flatten need one signal; 6144-d goldens weigh 24 KB a window).
3. "kapre-0.1.4": the training-time front-end. Runs kapre 0.1.4's own `Melspectrogram` layer
   (n_dft 2048, n_hop 242, power_melgram 1.0, htk True, return_decibel_melgram, padding 'same',
   as the OpenL3 training code configured it) on openl3's windows of each signal, and feeds the
   spectrograms to the same network without front-end (openl3's `frontend='librosa'` model, whose
   input is the spectrogram). kapre 0.1.4 is loaded from source with two shims for Keras 2.15
   (`keras.engine.Layer`/`InputSpec` and `keras.utils.conv_utils` moved) and one for librosa:
   librosa < 0.7 (what kapre 0.1.4 ran on) read `norm=1` as area normalisation, which
   librosa >= 0.8 spells `norm='slaney'` (its `norm=1` is now an L1 norm).
   The mel128 spectrograms of each signal's second window are kept too (spectrogram-stage check).

Output: goldens.npz (embeddings, timestamps, spectrograms) and goldens.json (versions, layouts).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reference_inputs as ref  # noqa: E402

REPRS = ("mel128", "mel256")
SIZES = (512, 6144)


def load_kapre014(src: Path):
    import keras
    import librosa

    engine = types.ModuleType("keras.engine")
    engine.Layer = keras.layers.Layer
    engine.InputSpec = keras.layers.InputSpec
    sys.modules["keras.engine"] = engine
    keras.engine = engine
    from keras.src.utils import conv_utils

    sys.modules["keras.utils.conv_utils"] = conv_utils

    spec = importlib.util.spec_from_file_location("kapre014", src / "__init__.py", submodule_search_locations=[str(src)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kapre014"] = mod
    spec.loader.exec_module(mod)
    assert mod.__version__ == "0.1.4", mod.__version__

    def mel(sr, n_dft, n_mels=128, fmin=0.0, fmax=None, htk=False, norm=1):
        norm = "slaney" if norm == 1 else norm  # librosa < 0.7's meaning of norm=1
        return librosa.filters.mel(sr=sr, n_fft=n_dft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm).astype(
            np.float32
        )

    mod.backend.mel = mel
    return mod


def set_random_weights(model) -> list[dict]:
    """Assign reference_inputs.random_weights() to the model's layers with weights, in order."""
    weights = ref.random_weights()
    layers = [layer for layer in model.layers if layer.weights]
    assert len(layers) == len(weights), (len(layers), len(weights))
    layout = []
    for layer, arrays in zip(layers, weights):
        assert [tuple(w.shape) for w in layer.get_weights()] == [a.shape for a in arrays], layer.name
        layer.set_weights(arrays)
        layout.append({"layer": layer.name, "weights": [w.name for w in layer.weights]})
    return layout


def h5_layout(path: Path) -> list[dict]:
    import h5py

    with h5py.File(path, "r") as f:
        out = []
        for name in f.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            wn = [w.decode() if isinstance(w, bytes) else w for w in f[name].attrs["weight_names"]]
            out.append({"layer": name, "weights": wn})
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kapre014", type=Path, required=True, help="folder of kapre 0.1.4's package source")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()

    import kapre
    import keras
    import librosa
    import openl3
    import tensorflow as tf
    from openl3 import core as ol3core
    from openl3 import models as ol3models

    k014 = load_kapre014(args.kapre014.resolve())
    sigs = ref.signals()
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "versions": {
            "tensorflow": tf.__version__, "keras": keras.__version__, "openl3": openl3.__version__,
            "kapre": kapre.__version__, "kapre_training": k014.__version__, "librosa": librosa.__version__,
            "numpy": np.__version__,
        },
        "seed": ref.SEED, "signal_seed": ref.SIGNAL_SEED, "hop_seconds": ref.HOP_SECONDS,
        "signals": list(sigs), "layouts": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for ir in REPRS:
            bare = ol3models.AUDIO_MODELS[ir](include_frontend=False)
            set_random_weights(bare)
            path = Path(tmp) / f"openl3_audio_{ir}_env.h5"
            bare.save_weights(str(path))
            meta["layouts"][ir] = h5_layout(path)
            n_mels = int(ir[3:])
            melspec = k014.time_frequency.Melspectrogram(
                n_dft=2048, n_hop=242, n_mels=n_mels, sr=48000, power_melgram=1.0, htk=True,
                return_decibel_melgram=True, padding="same", input_shape=(1, 48000),
            )
            for size in SIZES:
                with_frontend = ol3models.load_audio_embedding_model_from_path(str(path), ir, size, frontend="kapre")
                no_frontend = ol3models.load_audio_embedding_model_from_path(str(path), ir, size, frontend="librosa")
                for name, x in sigs.items():
                    if size == 6144 and name != "noise":
                        continue  # 6144-d goldens are 24 KB a window: the pooling is checked on one signal
                    emb, ts = openl3.get_audio_embedding(
                        x, ref.SAMPLE_RATE, model=with_frontend, hop_size=ref.HOP_SECONDS, center=True,
                        frontend="kapre", verbose=False,
                    )
                    arrays[f"openl3-0.4/{ir}/{size}/{name}"] = np.asarray(emb, np.float32)
                    arrays[f"timestamps/{name}"] = np.asarray(ts, np.float64)
                    wins = ol3core._preprocess_audio_batch(x, ref.SAMPLE_RATE, center=True, hop_size=ref.HOP_SECONDS)
                    spec = melspec(tf.constant(wins, tf.float32)).numpy()  # (n, n_mels, 199, 1)
                    assert spec.shape[1:] == (n_mels, 199, 1), spec.shape
                    if size == 6144:
                        continue  # the front-end does not depend on the size: 512 checks it
                    arrays[f"kapre-0.1.4/{ir}/{size}/{name}"] = no_frontend.predict(spec, verbose=0).astype(np.float32)
                    if ir == "mel128" and size == 512:
                        arrays[f"spectrogram/kapre-0.1.4/{ir}/{name}"] = spec[1, :, :, 0].astype(np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "goldens.npz", **arrays)
    (args.out / "goldens.json").write_text(json.dumps(meta, indent=1) + "\n")
    for k, v in sorted(arrays.items()):
        print(f"{k:40s} {str(v.shape):16s} mean {float(np.mean(v)):+.4f} std {float(np.std(v)):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
