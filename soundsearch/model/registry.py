"""Finding models and reading their headers, torch-free.

`soundsearch models` and model resolution read only the JSON header of each `.safetensors` file
(safetensors' numpy reader), so listing models never imports torch. The weights are loaded by
soundsearch.model.checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from soundsearch import paths
from soundsearch.errors import ModelError
from soundsearch.model.config import ModelConfig

FORMAT = "soundsearch-model"
FORMAT_VERSION = 1
HEADER_KEY = "soundsearch"
MODEL_SUFFIX = ".safetensors"
DEFAULT_MODEL_NAME = "default"


def read_header(path: Path | str) -> dict:
    """The JSON header of a model file, without loading its weights."""
    from safetensors import safe_open  # numpy framework: reading a header needs no torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own and OS errors for corrupt files
        raise ModelError(f"{path}: not a readable soundsearch model ({exc})") from None
    if HEADER_KEY not in metadata:
        raise ModelError(f"{path}: a safetensors file, but not a soundsearch model (no header)")
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: corrupt model header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelError(f"{path}: not a soundsearch model")
    version = header.get("format_version")
    if type(version) is not int or version < 1:
        raise ModelError(f"{path}: corrupt model header (format_version {version!r} is not a positive integer)")
    if version > FORMAT_VERSION:
        raise ModelError(f"{path}: model format {version} is newer than this soundsearch supports")
    return header


# Bounds on header numbers, checked before anything is allocated from them: a header is data
# from a file, and `tower=[2**31]*3` must be a refusal, not a 16 GiB allocation or a
# RuntimeError from torch. Generous: the shipped models are ~100x below each.
MAX_STEPS = 10_000
MAX_DIM = 65_536
MAX_CATEGORIES = 1_000
MAX_LAYER_UNITS = 16_384
MAX_LAYERS = 16


def _config_from_header(path: Path, raw: Any) -> ModelConfig:
    """A ModelConfig from header data, every field type- and bounds-checked, naming the file."""
    def bad(what: str) -> ModelError:
        return ModelError(f"{path}: corrupt model header (config {what})")

    if not isinstance(raw, dict):
        raise bad("is not an object")

    def integer(name: str, lo: int, hi: int, value: Any = None) -> int:
        v = raw.get(name) if value is None else value
        # bool is an int subclass, and 1e9 is a float: both are corrupt here, not coercible.
        if type(v) is not int or not lo <= v <= hi:
            raise bad(f"{name}={v!r}: expected a whole number from {lo} to {hi}")
        return v

    for name in ("steps", "dim", "n_categories"):
        if name not in raw:
            raise bad(f"lacks {name!r}")
    integer("steps", 1, MAX_STEPS)
    integer("dim", 1, MAX_DIM)
    integer("n_categories", 1, MAX_CATEGORIES)
    for name in ("tower", "head"):
        if name in raw:
            layers = raw[name]
            if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
                raise bad(f"{name}={layers!r}: expected a list of at most {MAX_LAYERS} layer widths")
            for u in layers:
                integer(name, 1, MAX_LAYER_UNITS, value=u)
    for name in ("siamese", "per_category", "attention"):
        if name in raw and type(raw[name]) is not bool:
            raise bad(f"{name}={raw[name]!r}: expected true or false")
    if "dropout" in raw and (type(raw["dropout"]) not in (int, float) or not 0.0 <= raw["dropout"] < 1.0):
        raise bad(f"dropout={raw['dropout']!r}: expected a number in [0, 1)")
    try:
        return ModelConfig.from_json(raw)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise bad(f"is invalid ({exc})") from None


# -- finding models ----------------------------------------------------------------------


@dataclass
class ModelInfo:
    name: str
    path: Path
    source: str  # "user" or "shipped"
    featurizer: str = ""
    featurizer_identity: str = ""
    categories: tuple[str, ...] = ()
    variant: str = ""
    epochs: int | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_majority: float | None = None  # accuracy of always guessing the commonest state
    created: str = ""
    error: str | None = None  # set when the file could not be read

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["categories"] = list(self.categories)
        d["n_categories"] = len(self.categories)
        return d


def _looks_like_path(s: str) -> bool:
    return s.endswith(MODEL_SUFFIX) or os.sep in s or (os.altsep is not None and os.altsep in s)


def _model_dirs() -> list[tuple[Path, str]]:
    return [(paths.user_models_dir(), "user")] + [(d, "shipped") for d in paths.shipped_models_dirs()]


def resolve_model(name_or_path: str | Path | None) -> Path:
    """None -> the shipped default; a name -> user models, then shipped ones; a path -> itself."""
    if name_or_path is None:
        for d in paths.shipped_models_dirs():
            candidate = d / f"{DEFAULT_MODEL_NAME}{MODEL_SUFFIX}"
            if candidate.is_file():
                return candidate
        raise ModelError(
            "no default model is installed: train one with `soundsearch train` "
            "and pass it with --model NAME|PATH"
        )
    text = str(name_or_path)
    as_path = Path(text).expanduser()
    if isinstance(name_or_path, Path) or _looks_like_path(text) or as_path.is_file():
        if as_path.is_file():
            return as_path.absolute()
        raise ModelError(f"no model file at {as_path}")
    for d, _ in _model_dirs():
        candidate = d / f"{text}{MODEL_SUFFIX}"
        if candidate.is_file():
            return candidate
    known = sorted({m.name for m in list_models()})
    hint = f"; available: {', '.join(known)}" if known else "; none are installed (run `soundsearch train`)"
    raise ModelError(f"no model named {text!r}{hint}")


def _finite_or_none(v: Any) -> float | None:
    # Python's json reads NaN from a header; `models --json` must not write it back out.
    return float(v) if type(v) in (int, float) and math.isfinite(v) else None


def model_info(path: Path, source: str = "file") -> ModelInfo:
    name = path.name.removesuffix(MODEL_SUFFIX)
    try:
        header = read_header(path)
        config = _config_from_header(path, header.get("config"))
    except (ModelError, KeyError, TypeError, ValueError) as exc:
        return ModelInfo(name=name, path=path, source=source, error=str(exc))
    try:
        return _info_from_header(path, name, source, header, config)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # A header field of the wrong type (taxonomy null, meta a list): listing models goes on.
        return ModelInfo(name=name, path=path, source=source, error=f"{path}: corrupt model header ({exc})")


def _info_from_header(path: Path, name: str, source: str, header: dict, config: ModelConfig) -> ModelInfo:
    meta = header.get("meta", {})
    val = meta.get("validation") or {}
    spec = header.get("featurizer", {}).get("spec", {})
    names = header.get("taxonomy", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TypeError("taxonomy is not a list of names")
    return ModelInfo(
        name=name,
        path=path,
        source=source,
        featurizer=str(spec.get("name", "")),
        featurizer_identity=str(header.get("featurizer", {}).get("identity", "")),
        categories=tuple(names),
        variant=config.variant,
        epochs=meta.get("epochs") if type(meta.get("epochs")) is int else None,
        val_loss=_finite_or_none(val.get("loss")),
        val_accuracy=_finite_or_none(val.get("accuracy")),
        val_majority=_finite_or_none(val.get("majority")),
        created=str(meta.get("created", "")),
    )


def list_models() -> list[ModelInfo]:
    """Every model file in the user models folder and the shipped folders, user ones first."""
    found: list[ModelInfo] = []
    for d, source in _model_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.glob(f"*{MODEL_SUFFIX}")):
            if p.name.startswith("."):
                continue  # a temp file of an unfinished save
            found.append(model_info(p, source))
    return found
