"""The checkpoint format: ONE safetensors file.

Tensors = the state dict plus `norm.mean`, `norm.std`; the metadata key "soundsearch" holds a JSON
header with everything needed to rebuild the model without the caller repeating anything (and
without unpickling code). Headers are read by soundsearch.model.registry.
"""

from __future__ import annotations

import glob
import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundsearch import __version__, faults, paths
from soundsearch.errors import ModelError
from soundsearch.model.config import ModelConfig
from soundsearch.model.network import LoadedModel, PresenceNet
from soundsearch.model.registry import FORMAT, FORMAT_VERSION, HEADER_KEY, _config_from_header, read_header
from soundsearch.taxonomy import Taxonomy


# Temporary files of save_model: `.<model name>.XXXXXXXX.save.tmp` (set_ranking's own end in
# plain `.tmp`, so clearing abandoned saves never touches a rewrite in progress).
_TEMP_SUFFIX = ".save.tmp"


def library_versions() -> dict[str, str]:
    import safetensors

    return {
        "soundsearch": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def _jsonable(obj: Any) -> Any:
    """Make numpy scalars/arrays and paths JSON-safe for the header."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_model(
    path: Path | str,
    net: PresenceNet,
    config: ModelConfig,
    taxonomy: Taxonomy,
    featurizer_spec: dict,
    featurizer_identity: str,
    norm_mean: np.ndarray,
    norm_std: np.ndarray,
    meta: dict | None = None,
) -> Path:
    """Write one safetensors file; atomically (temp file + rename), so no half-written model."""
    from safetensors.torch import save

    path = Path(path)
    if len(taxonomy) != config.n_categories:
        raise ModelError(f"taxonomy has {len(taxonomy)} categories, the network {config.n_categories}")
    mean = np.asarray(norm_mean, dtype=np.float32).reshape(-1)
    std = np.asarray(norm_std, dtype=np.float32).reshape(-1)
    if mean.shape != (config.dim,) or std.shape != (config.dim,):
        raise ModelError(f"normalisation statistics must have {config.dim} values")
    meta = dict(meta or {})
    meta.setdefault("versions", library_versions())
    meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "taxonomy": taxonomy.to_json(),
        "featurizer": {"spec": featurizer_spec, "identity": featurizer_identity},
        "meta": meta,
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    tensors["norm.mean"] = torch.from_numpy(mean.copy())
    tensors["norm.std"] = torch.from_numpy(std.copy())
    data = save(tensors, metadata={HEADER_KEY: json.dumps(_jsonable(header), sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Saves of this name killed before their rename left their temporary files; clear them.
    paths.remove_abandoned(path.parent, f".{glob.escape(path.name)}.*{_TEMP_SUFFIX}")
    tmp = paths.TempFile(path, _TEMP_SUFFIX)
    try:
        # Written through our own (locked) descriptor, and fsync'ed: renamed onto the final name
        # only once the bytes are on disk, so not even a power cut leaves a short model there.
        with open(tmp.fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        paths.chmod_as_created(tmp.name)
        # The whole model is in the temp file, nothing under the final name yet: a kill must
        # leave `path` absent, or the previous model there intact.
        faults.point("checkpoint.written")
        tmp.publish(path)
    except BaseException:
        tmp.discard()
        raise
    return path


def _check_tensors(path: Path, config: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor's name and shape as the config's network has them, and every value finite.

    The expected shapes come from a network built on the meta device (no memory), so a header
    that contradicts its weights is refused before the real network is allocated.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in PresenceNet(config).state_dict().items()}
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
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"{path}: corrupt weights ({name} holds NaN or infinite values)")


def load_model(path: Path | str) -> LoadedModel:
    """Rebuild network, taxonomy, featurizer and normalisation from the file alone."""
    from safetensors.torch import load_file

    path = Path(path)
    header = read_header(path)
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
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # corrupt tensor data surfaces as safetensors' own error type
        raise ModelError(f"{path}: unreadable weights ({exc})") from None
    try:
        mean_t = tensors.pop("norm.mean")
        std_t = tensors.pop("norm.std")
    except KeyError:
        raise ModelError(f"{path}: missing feature normalisation statistics") from None
    mean = mean_t.to(torch.float32).numpy().reshape(-1)
    std = std_t.to(torch.float32).numpy().reshape(-1)
    if mean.shape != (config.dim,) or std.shape != (config.dim,):
        raise ModelError(
            f"{path}: normalisation statistics have {mean.size} and {std.size} values, the network's features {config.dim}"
        )
    # A zero or NaN std turns every feature into NaN or inf, which then reached --json output.
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ModelError(f"{path}: corrupt normalisation statistics (non-finite values, or a std that is not positive)")
    _check_tensors(path, config, tensors)
    net = PresenceNet(config)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the recorded architecture ({exc})") from None
    net.eval()
    return LoadedModel(
        net=net, config=config, taxonomy=taxonomy, featurizer_spec=spec,
        featurizer_identity=identity, norm_mean=mean, norm_std=std,
        meta=header.get("meta", {}), path=path.absolute(),
    )
