"""A model file as numpy arrays, torch-free: what search needs of a model, and its checks.

`load_arrays` reads a checkpoint (model.checkpoint's format) with safetensors' numpy reader and
checks it as `load_model` does (load_model is built on it: one set of checks, one set of error
messages), so a query that already has its features never imports torch (~1.1 s of a cold
process). `ModelBase` is what search asks of a model, whether its weights are a torch network
(network.LoadedModel) or these arrays (ArrayModel); `expected_shapes` is the network's weight
layout, written out without building it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundsearch.errors import FeaturizerMismatchError, ModelError
from soundsearch.model.config import ModelConfig
from soundsearch.model.registry import MODEL_SUFFIX, _config_from_header, read_header
from soundsearch.presence import STATES
from soundsearch.taxonomy import Taxonomy

if TYPE_CHECKING:
    from soundsearch.model.inference import InferenceForm

# torch.nn.BatchNorm1d's default epsilon, which every batch norm of PresenceNet uses
# (tests/test_model_arrays.py checks it).
BN_EPS = 1e-5
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of PresenceNet(config).state_dict(), without torch."""
    g = config.groups
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, width: int) -> None:
        for part in _BN_PARTS:
            shapes[f"{prefix}.{part}"] = (width,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    if config.siamese:
        fin = config.input_dim
        for i, units in enumerate(config.tower):
            shapes[f"tower.{i}.linear.weight"] = (g, fin, units)
            norm(f"tower.{i}.norm", g * units)
            fin = units
        pair_in = config.tower[-1]
    else:
        pair_in = config.input_dim
    k1 = config.head[0]
    shapes["proj_a.weight"] = (g, pair_in, k1)
    shapes["proj_b.weight"] = (g, pair_in, k1)
    norm("pair_norm", g * k1)
    for j, (fin, units) in enumerate(zip(config.head[:-1], config.head[1:])):
        shapes[f"head.{j}.linear.weight"] = (g, fin, units)
        norm(f"head.{j}.norm", g * units)
    last, per_group = config.head[-1], config.outputs_per_group
    shapes["state.weight"] = (g, last, per_group * len(STATES))
    shapes["state.bias"] = (g * per_group * len(STATES),)
    if config.attention:
        shapes["attend.weight"] = (g, last, per_group)
        shapes["attend.bias"] = (g * per_group,)
    return shapes


class ModelBase:
    """What search asks of a model, whatever holds its weights (a torch network or arrays)."""

    config: ModelConfig
    taxonomy: Taxonomy
    featurizer_spec: dict
    featurizer_identity: str
    norm_mean: np.ndarray  # (D,) float32
    norm_std: np.ndarray  # (D,) float32
    meta: dict
    path: Path | None

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(MODEL_SUFFIX) if self.path is not None else "(unsaved)"

    @property
    def variant(self) -> str:
        return self.config.variant

    def normalise(self, feats: np.ndarray) -> np.ndarray:
        """Standardise raw (..., T, D) features with the training statistics."""
        feats = np.asarray(feats, dtype=np.float32)
        return (feats - self.norm_mean) / self.norm_std

    def check_featurizer(self, identity: str) -> None:
        """Refuse features made by a featurizer other than the one the model was trained on."""
        if identity != self.featurizer_identity:
            from soundsearch.features import index_options

            raise FeaturizerMismatchError(
                f"model '{self.name}' was trained on features {self.featurizer_identity!r}, "
                f"but these were made with {identity!r}: re-index your library into a new store "
                f"with `soundsearch index PATH --store NEW-STORE {index_options(self.featurizer_identity)}`, "
                "or pick a model made for this store's features (`soundsearch models` lists them)"
            )

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The network's state dict as numpy arrays (read-only use: they may share memory)."""
        raise NotImplementedError

    def inference_form(self) -> "InferenceForm":
        """The network as search runs it (model.inference.InferenceForm): batch norm folded,
        the first pair layer split per side, the head as plain weights."""
        from soundsearch.model.inference import InferenceForm

        return InferenceForm.of(self)


@dataclass
class ArrayModel(ModelBase):
    """A model file loaded as numpy arrays (load_arrays): everything search needs, no torch."""

    state: dict[str, np.ndarray]
    config: ModelConfig
    taxonomy: Taxonomy
    featurizer_spec: dict
    featurizer_identity: str
    norm_mean: np.ndarray
    norm_std: np.ndarray
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def state_arrays(self) -> dict[str, np.ndarray]:
        return self.state


def _check_state(path: Path, config: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
    """Every tensor's name and shape as the config's network has them, and every value finite."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelError(
            f"{path}: weights do not fit the recorded architecture "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise ModelError(
                f"{path}: weights do not fit the recorded architecture "
                f"({name} has shape {tuple(t.shape)}, the header's config needs {shape})"
            )
        if np.issubdtype(t.dtype, np.floating) and not bool(np.isfinite(t).all()):
            raise ModelError(f"{path}: corrupt weights ({name} holds NaN or infinite values)")
        if not (np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)):
            raise ModelError(f"{path}: corrupt weights ({name} holds {t.dtype} values)")


def _header_parts(path: Path, header: dict) -> tuple[ModelConfig, Taxonomy, dict, str]:
    if "config" not in header:
        raise ModelError(f"{path}: incomplete model header ('config')")
    config = _config_from_header(path, header["config"])
    try:
        names = header["taxonomy"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError("taxonomy is not a list of names")
        taxonomy = Taxonomy.from_json(names)
        spec = header["featurizer"]["spec"]
        identity = header["featurizer"]["identity"]
        if not isinstance(spec, dict) or not isinstance(identity, str):
            raise TypeError("featurizer spec/identity of the wrong type")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: incomplete model header ({exc})") from None
    if len(taxonomy) != config.n_categories:
        # 9 names on 8 outputs indexed past the network's output; 7 showed levels as "8/7".
        raise ModelError(
            f"{path}: corrupt model header ({len(taxonomy)} category names for a network with "
            f"{config.n_categories} outputs)"
        )
    return config, taxonomy, spec, identity


def _norm_stats(path: Path, config: ModelConfig, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    try:
        mean_t = tensors.pop("norm.mean")
        std_t = tensors.pop("norm.std")
    except KeyError:
        raise ModelError(f"{path}: missing feature normalisation statistics") from None
    try:
        mean = np.asarray(mean_t, dtype=np.float32).reshape(-1)
        std = np.asarray(std_t, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ModelError(f"{path}: corrupt normalisation statistics (not numbers)") from None
    if mean.shape != (config.dim,) or std.shape != (config.dim,):
        raise ModelError(
            f"{path}: normalisation statistics have {mean.size} and {std.size} values, the network's features {config.dim}"
        )
    # A zero or NaN std turns every feature into NaN or inf, which then reached --json output.
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ModelError(f"{path}: corrupt normalisation statistics (non-finite values, or a std that is not positive)")
    return mean, std


def load_arrays(path: Path | str) -> ArrayModel:
    """A model file's header, checked, and its weights as numpy arrays; ModelError for any file
    that is not a whole, consistent soundsearch model (the checks of checkpoint.load_model)."""
    from safetensors.numpy import load_file

    path = Path(path)
    header = read_header(path)
    config, taxonomy, spec, identity = _header_parts(path, header)
    try:
        tensors: dict[str, Any] = load_file(str(path))
    except Exception as exc:  # corrupt tensor data surfaces as safetensors' own error type
        raise ModelError(f"{path}: unreadable weights ({exc})") from None
    mean, std = _norm_stats(path, config, tensors)
    _check_state(path, config, tensors)
    meta = header.get("meta", {})
    return ArrayModel(
        state=tensors, config=config, taxonomy=taxonomy, featurizer_spec=spec, featurizer_identity=identity,
        norm_mean=mean, norm_std=std, meta=meta if isinstance(meta, dict) else {}, path=path.absolute(),
    )
