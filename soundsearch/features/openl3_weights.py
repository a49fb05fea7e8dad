"""OpenL3 audio-model weights: where they are found, how they are read and checked, how they are fetched.

The weights are the OpenL3 authors' (Cramer, Wu, Salamon and Bello, "Look, Listen and Learn
More", ICASSP 2019; github.com/marl/openl3), released under the Creative Commons Attribution
4.0 licence (CC BY 4.0). soundsearch does not ship them: `soundsearch models fetch openl3`
downloads them from the upstream release, and an installed `openl3` package's copies are used
as they are.

File format: the Keras-2 weights-only HDF5 that `Model.save_weights` writes (a full-model save,
with the same layout under `model_weights/`, is read too). Read with h5py alone, no TensorFlow:
the root attribute `layer_names` lists the layers in model order, each layer group's attribute
`weight_names` lists its arrays. The audio network's layers with weights are, in that order:

    batch_normalization (1 channel, on the input spectrogram)
    conv 1->64, bn 64, conv 64->64, bn 64,          (block 1)
    conv 64->128, bn 128, conv 128->128, bn 128,    (block 2)
    conv 128->256, bn 256, conv 256->256, bn 256,   (block 3)
    conv 256->512, bn 512, conv 512->512            (block 4; the last is `audio_embedding_layer`)

Conv kernels are (3, 3, in, out) with a bias; batch norms hold gamma, beta, moving_mean and
moving_variance. The layer structure does not depend on mel128/mel256 or env/music, so a file
is recognised by this structure and its name, and featurizers record a hash of its bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from soundsearch.errors import DownloadError, FeaturizerError

WEIGHTS_ENV = "SOUNDSEARCH_OPENL3_WEIGHTS"
BASE_URL_ENV = "SOUNDSEARCH_OPENL3_URL"
# The upstream repository's `models` branch holds the gzipped weight files of each release.
UPSTREAM_URL = "https://github.com/marl/openl3/raw/models"
MODEL_VERSION = "v0_4_0"
CONTENT_TYPES = ("env", "music")
INPUT_REPRS = ("mel128", "mel256")
LICENCE = "CC BY 4.0 (Cramer et al. 2019, github.com/marl/openl3)"

# (in, out) channels of the eight 3x3 convolutions, in model order.
CONV_CHANNELS = ((1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512))
EMBEDDING_LAYER = "audio_embedding_layer"
BN_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")
CONV_KEYS = ("kernel", "bias")

Progress = Callable[[str, int, int], None]


def weight_filename(input_repr: str, content_type: str) -> str:
    """The name upstream (and an installed openl3 package) gives the file."""
    return f"openl3_audio_{input_repr}_{content_type}.h5"


def user_weights_dir() -> Path:
    """Where `soundsearch models fetch openl3` stores the weights: the folder of every
    pretrained featurizer's weights (paths.user_weights_dir), under openl3/."""
    from soundsearch import paths

    return paths.user_weights_dir() / "openl3"


def fetch_command(input_repr: str, content_type: str) -> str:
    return f"soundsearch models fetch openl3 --content-type {content_type} --input-repr {input_repr}"


def _openl3_package_file(name: str) -> Path | None:
    # Located without importing the package (importing openl3 imports TensorFlow).
    from soundsearch.features.weights import package_file

    return package_file("openl3", name)


def find_weights(input_repr: str, content_type: str, weights: str | os.PathLike | None = None) -> Path:
    """The weights file to use, in order: `weights` (a file, or a folder holding the file), else
    $SOUNDSEARCH_OPENL3_WEIGHTS (the same), else an installed openl3 package's copy, else the
    per-user data folder. FeaturizerError naming the fetch command when there is none.
    """
    name = weight_filename(input_repr, content_type)
    explicit = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        what = "the weights parameter" if weights is not None else f"${WEIGHTS_ENV}"
        if p.is_dir():
            p = p / name
        if not p.is_file():
            raise FeaturizerError(
                f"openl3 weights not found at {p} (from {what}); fetch them with "
                f"`{fetch_command(input_repr, content_type)}` or point {what} at the .h5 file"
            )
        return p
    for c in (_openl3_package_file(name), user_weights_dir() / name):
        if c is not None and c.is_file():
            return c
    raise FeaturizerError(
        f"openl3 weights {name} not found (looked in ${WEIGHTS_ENV}, an installed openl3 package and "
        f"{user_weights_dir()}): get them with `{fetch_command(input_repr, content_type)}`, "
        "or use the built-in `--featurizer logmel`"
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class AudioWeights:
    """The audio network's arrays in model order, as Keras stores them (channels-last kernels)."""

    input_bn: dict[str, np.ndarray]
    convs: list[dict[str, np.ndarray]]  # 8 convolutions: kernel (3, 3, in, out), bias (out,)
    bns: list[dict[str, np.ndarray]]  # 7 batch norms, after each convolution but the last
    layer_names: list[str]


def _short_name(weight_name: str) -> str:
    # "conv2d_3/kernel:0" -> "kernel"
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _decode(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_weights(path: Path) -> AudioWeights:
    """Read and check an OpenL3 audio weights file; FeaturizerError saying what does not fit."""
    try:
        import h5py
    except ImportError:
        raise FeaturizerError(
            "reading the openl3 weights needs h5py: install it with `pip install 'soundsearch[openl3]'`"
        ) from None
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FeaturizerError(f"{path}: not a readable HDF5 weights file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise FeaturizerError(f"{path}: not a Keras weights file (no layer_names attribute)")
        layers: list[tuple[str, dict[str, np.ndarray]]] = []
        for raw in root.attrs["layer_names"]:
            lname = _decode(raw)
            group = root[lname]
            wnames = [_decode(w) for w in group.attrs.get("weight_names", [])]
            if not wnames:
                continue  # activation, pooling, permute ... layers carry no weights
            arrays = {_short_name(w): np.asarray(group[w], dtype=np.float32) for w in wnames}
            layers.append((lname, arrays))
    return _check_structure(path, layers)


def _check_structure(path: Path, layers: list[tuple[str, dict[str, np.ndarray]]]) -> AudioWeights:
    # A spectrogram layer saved with its fixed DFT/mel matrices (kapre 0.1.4 models kept them as
    # weights) comes first; the matrices are recomputed here, so it is skipped.
    while layers and "spectrogram" in layers[0][0].lower():
        layers = layers[1:]
    expected = 1 + 2 * len(CONV_CHANNELS) - 1
    if len(layers) != expected:
        raise FeaturizerError(
            f"{path}: not an OpenL3 audio model: {len(layers)} layers with weights, expected {expected} "
            "(an input batch norm, then 8 convolutions each but the last followed by a batch norm)"
        )

    def bn(i: int, channels: int) -> dict[str, np.ndarray]:
        lname, arrays = layers[i]
        if set(arrays) != set(BN_KEYS):
            raise FeaturizerError(f"{path}: layer {i} ({lname}) should be a batch norm, has {sorted(arrays)}")
        for k in BN_KEYS:
            if arrays[k].shape != (channels,):
                raise FeaturizerError(
                    f"{path}: layer {i} ({lname}) {k} has shape {arrays[k].shape}, expected ({channels},)"
                )
        return arrays

    def conv(i: int, cin: int, cout: int) -> dict[str, np.ndarray]:
        lname, arrays = layers[i]
        if set(arrays) != set(CONV_KEYS):
            raise FeaturizerError(f"{path}: layer {i} ({lname}) should be a convolution, has {sorted(arrays)}")
        if arrays["kernel"].shape != (3, 3, cin, cout) or arrays["bias"].shape != (cout,):
            raise FeaturizerError(
                f"{path}: layer {i} ({lname}) has kernel {arrays['kernel'].shape} and bias "
                f"{arrays['bias'].shape}, expected (3, 3, {cin}, {cout}) and ({cout},)"
            )
        return arrays

    input_bn = bn(0, 1)
    convs, bns = [], []
    for j, (cin, cout) in enumerate(CONV_CHANNELS):
        convs.append(conv(1 + 2 * j, cin, cout))
        if j < len(CONV_CHANNELS) - 1:
            bns.append(bn(2 + 2 * j, cout))
    if layers[-1][0] != EMBEDDING_LAYER:
        raise FeaturizerError(f"{path}: the last convolution is named {layers[-1][0]!r}, expected {EMBEDDING_LAYER!r}")
    for lname, arrays in layers:
        for k, a in arrays.items():
            if not np.isfinite(a).all():
                raise FeaturizerError(f"{path}: layer {lname} {k} holds non-finite values")
    return AudioWeights(input_bn, convs, bns, [n for n, _ in layers])


def upstream_url(input_repr: str, content_type: str, base: str | None = None) -> str:
    root = (base or os.environ.get(BASE_URL_ENV) or UPSTREAM_URL).rstrip("/")
    stem = weight_filename(input_repr, content_type)[: -len(".h5")]
    return f"{root}/{stem}-{MODEL_VERSION}.h5.gz"


def fetch_weights(
    input_repr: str,
    content_type: str,
    dest_dir: Path | None = None,
    *,
    base: str | None = None,
    on_progress: Progress | None = None,
) -> Path:
    """Download the upstream `.h5.gz` (resumably), unpack it, check its structure, and only then
    put it in place as `dest_dir/openl3_audio_<repr>_<type>.h5`. Returns that path.

    Upstream publishes no checksums, so the check is structural (every layer's kind and shape);
    a file that fails it is removed and never used.
    """
    from soundsearch.datasets import download

    if input_repr not in INPUT_REPRS:
        raise DownloadError(f"openl3 input_repr must be one of {', '.join(INPUT_REPRS)}, got {input_repr!r}")
    if content_type not in CONTENT_TYPES:
        raise DownloadError(f"openl3 content_type must be one of {', '.join(CONTENT_TYPES)}, got {content_type!r}")
    dest_dir = Path(dest_dir).expanduser() if dest_dir is not None else user_weights_dir()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest_dir}: {exc.strerror}") from None
    name = weight_filename(input_repr, content_type)
    url = upstream_url(input_repr, content_type, base)
    gz = dest_dir / (name + ".gz")
    download.fetch(url, gz, md5=None, on_progress=on_progress)
    tmp = dest_dir / (name + ".unpacking")
    try:
        with gzip.open(gz, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        gz.unlink(missing_ok=True)
        raise DownloadError(f"{url} is not a valid gzip file ({exc}); the download was removed, run the command again") from None
    try:
        read_weights(tmp)
    except FeaturizerError as exc:
        tmp.unlink(missing_ok=True)
        gz.unlink(missing_ok=True)
        raise DownloadError(f"the file from {url} is not usable: {exc}") from None
    dest = dest_dir / name
    os.replace(tmp, dest)
    gz.unlink(missing_ok=True)
    return dest
