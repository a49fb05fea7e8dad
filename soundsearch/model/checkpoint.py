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
from soundsearch.model.registry import FORMAT, FORMAT_VERSION, HEADER_KEY
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


def load_model(path: Path | str) -> LoadedModel:
    """Rebuild network, taxonomy, featurizer and normalisation from the file alone.

    The file is read and checked by model.arrays.load_arrays (torch-free, the same checks a
    query without torch gets); the network is then built from those arrays."""
    from soundsearch.model.arrays import load_arrays

    arrays = load_arrays(path)
    net = PresenceNet(arrays.config)
    try:
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.state.items()}, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"{arrays.path}: weights do not fit the recorded architecture ({exc})") from None
    net.eval()
    return LoadedModel(
        net=net, config=arrays.config, taxonomy=arrays.taxonomy, featurizer_spec=arrays.featurizer_spec,
        featurizer_identity=arrays.featurizer_identity, norm_mean=arrays.norm_mean, norm_std=arrays.norm_std,
        meta=arrays.meta, path=arrays.path,
    )
