"""The Siamese pairwise-presence-matrix network, its variants, and its checkpoint format.

Structure (Fan et al. 2020, with a symmetric first pair layer so that search can precompute
everything that depends on one item only):

    embed(x)    item-only tower, frame by frame: 3 x (linear, batch norm, ReLU, dropout).
                Identity without --siamese (the raw frames go into the pair head).
    project(h)  the item-only half of the first pair layer: (W_a h, W_b h).
    pair head   z1 = ReLU(BN(W_a h_a + W_b h_b)) + ReLU(BN(W_a h_b + W_b h_a))
                (both orders summed, so score(a, b) == score(b, a)); BN's shift plays the
                role of the bias c. Then (linear, BN, ReLU, dropout) layers, then per step t
                a 3-way softmax f_t per category and an attention logit per category,
                softmax-normalised over T: y = sum_t v_t f_t, still a distribution.
                Without attention: y = mean_t f_t.

Per-category variant: C independent sub-models (own tower, own head, one category each),
run as grouped matrix products rather than a Python loop. Every layer keeps activations
flat as (rows, groups * units) so a batch norm over that width is one independent batch
norm per sub-model.

Checkpoint: ONE safetensors file. Tensors = the state dict plus `norm.mean`, `norm.std`; the
metadata key "soundsearch" holds a JSON header with everything needed to rebuild the model
without the caller repeating anything (and without unpickling code).
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from soundsearch import __version__, paths
from soundsearch.model.config import ModelConfig
from soundsearch.errors import FeaturizerMismatchError, ModelError
from soundsearch.presence import STATES, level_from_states
from soundsearch.taxonomy import Taxonomy

FORMAT = "soundsearch-model"
FORMAT_VERSION = 1
HEADER_KEY = "soundsearch"
MODEL_SUFFIX = ".safetensors"
DEFAULT_MODEL_NAME = "default"


class GroupedLinear(nn.Module):
    """G independent linear maps on flat (rows, G * fin) activations; G = 1 is nn.Linear.

    With shared_input the input is (rows, fin) and every group reads all of it (the first
    layer of each per-category sub-model sees the same frames).
    """

    def __init__(self, groups: int, fin: int, fout: int, bias: bool = True, shared_input: bool = False):
        super().__init__()
        self.groups, self.fin, self.fout, self.shared_input = groups, fin, fout, shared_input
        self.weight = nn.Parameter(torch.empty(groups, fin, fout))
        self.bias = nn.Parameter(torch.zeros(groups * fout)) if bias else None
        # He initialisation: every such layer feeds a ReLU (or a softmax, where scale is harmless).
        bound = math.sqrt(6.0 / fin)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        if g == 1 or self.shared_input:
            w = self.weight[0] if g == 1 else self.weight.permute(1, 0, 2).reshape(self.fin, g * self.fout)
            if self.bias is not None:
                return torch.addmm(self.bias, x, w)
            return x @ w
        rows = x.shape[0]
        y = torch.bmm(x.view(rows, g, self.fin).transpose(0, 1), self.weight)  # (g, rows, fout)
        y = y.transpose(0, 1).reshape(rows, g * self.fout)
        return y + self.bias if self.bias is not None else y


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with keep-probability in steps of 1/256, from raw random bytes.

    torch's CPU Bernoulli sampler made F.dropout ~40% of a training step; eight mask bytes
    per random int64 cost a tenth of that. p = 0.5 (the paper's) is represented exactly.
    """
    if not training or p <= 0.0:
        return x
    keep = min(255, max(1, round((1.0 - p) * 256)))
    n = x.numel()
    raw = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
    mask = raw.view(torch.uint8)[:n].view(x.shape) < keep
    return x * mask.to(x.dtype).mul_(256.0 / keep)


class Block(nn.Module):
    """Linear (no bias: batch norm's shift replaces it), batch norm, ReLU, dropout."""

    def __init__(self, groups: int, fin: int, fout: int, dropout: float, shared_input: bool = False):
        super().__init__()
        self.linear = GroupedLinear(groups, fin, fout, bias=False, shared_input=shared_input)
        self.norm = nn.BatchNorm1d(groups * fout)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(F.relu(self.norm(self.linear(x))), self.dropout, self.training)


class PresenceNet(nn.Module):
    """Predicts the (C, 3) presence matrix of a pair of items; see the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        g, c = config.groups, config.n_categories
        din = config.input_dim
        tower: list[nn.Module] = []
        if config.siamese:
            fin, shared = din, True
            for units in config.tower:
                tower.append(Block(g, fin, units, config.dropout, shared_input=shared))
                fin, shared = units, False
            self.embed_width = g * config.tower[-1]
            pair_in, pair_shared = config.tower[-1], False
        else:
            self.embed_width = din
            pair_in, pair_shared = din, True
        self.tower = nn.ModuleList(tower)
        k1 = config.head[0]
        self.proj_a = GroupedLinear(g, pair_in, k1, bias=False, shared_input=pair_shared)
        self.proj_b = GroupedLinear(g, pair_in, k1, bias=False, shared_input=pair_shared)
        self.pair_norm = nn.BatchNorm1d(g * k1)
        head: list[nn.Module] = []
        for fin, units in zip(config.head[:-1], config.head[1:]):
            head.append(Block(g, fin, units, config.dropout))
        self.head = nn.ModuleList(head)
        last = config.head[-1]
        self.state = GroupedLinear(g, last, config.outputs_per_group * len(STATES))
        self.attend = GroupedLinear(g, last, config.outputs_per_group) if config.attention else None
        self.n_categories = c

    # -- item-only part: search precomputes these for the whole database ------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) normalised frames -> (N, T, E) tower output; depends on one item only."""
        n, t, d = x.shape
        if d != self.config.dim or t != self.config.steps:
            raise ModelError(
                f"model expects items of shape ({self.config.steps}, {self.config.dim}), got ({t}, {d})"
            )
        if self.config.context == "stats":
            ctx = torch.cat([x.mean(1), x.std(1, unbiased=False), x.amax(1)], dim=-1)
            x = torch.cat([x, ctx.unsqueeze(1).expand(n, t, ctx.shape[-1])], dim=-1)
        h = x.reshape(n * t, -1)
        for block in self.tower:
            h = block(h)
        return h.reshape(n, t, -1)

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, E) embeddings -> (W_a h, W_b h), each (N, T, G*K1): the item's half of layer 1."""
        n, t, _ = h.shape
        flat = h.reshape(n * t, -1)
        return self.proj_a(flat).reshape(n, t, -1), self.proj_b(flat).reshape(n, t, -1)

    # -- pair-specific part ---------------------------------------------------------------

    def pair_log_probs(
        self, a_proj: tuple[torch.Tensor, torch.Tensor], b_proj: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Log of the pooled presence matrix (B, C, 3) from both items' projections."""
        (pa_a, pb_a), (pa_b, pb_b) = a_proj, b_proj
        bsz, t, width = pa_a.shape
        u1 = (pa_a + pb_b).reshape(bsz * t, width)
        u2 = (pa_b + pb_a).reshape(bsz * t, width)
        # One batch norm over both orders keeps even training-mode statistics symmetric.
        u = F.relu(self.pair_norm(torch.cat([u1, u2])))
        z = u[: bsz * t] + u[bsz * t :]
        z = dropout(z, self.config.dropout, self.training)
        for block in self.head:
            z = block(z)
        c = self.n_categories
        logf = F.log_softmax(self.state(z).view(bsz, t, c, len(STATES)), dim=-1)
        if self.attend is not None:
            logv = F.log_softmax(self.attend(z).view(bsz, t, c), dim=1).unsqueeze(-1)
            return torch.logsumexp(logv + logf, dim=1)
        return torch.logsumexp(logf, dim=1) - math.log(t)

    def log_probs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, T, D) x (B, T, D) normalised -> (B, C, 3) log probabilities."""
        bsz = a.shape[0]
        # One tower pass over both sides: half the Python overhead and one set of BN statistics.
        pa, pb = self.project(self.embed(torch.cat([a, b])))
        return self.pair_log_probs((pa[:bsz], pb[:bsz]), (pa[bsz:], pb[bsz:]))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, T, D) x (B, T, D) normalised -> (B, C, 3) probabilities, states (both, neither, differs)."""
        return self.log_probs(a, b).exp()


# -- scores ------------------------------------------------------------------------------


@dataclass
class PairScores:
    probs: np.ndarray  # (B, C, 3) float32
    level: np.ndarray  # (B,) int64: categories whose most likely state is both or neither
    expected: np.ndarray  # (B,) float32: expected number of agreeing categories

    @property
    def states(self) -> np.ndarray:
        return self.probs.argmax(-1)


def scores_from_probs(probs: np.ndarray) -> PairScores:
    probs = np.asarray(probs, dtype=np.float32)
    states = probs.argmax(-1)
    level = np.asarray(level_from_states(states), dtype=np.int64)
    expected = (probs[..., 0] + probs[..., 1]).sum(-1).astype(np.float32)
    return PairScores(probs=probs, level=level, expected=expected)


# -- loaded models -----------------------------------------------------------------------


@dataclass
class LoadedModel:
    net: PresenceNet
    config: ModelConfig
    taxonomy: Taxonomy
    featurizer_spec: dict
    featurizer_identity: str
    norm_mean: np.ndarray  # (D,) float32
    norm_std: np.ndarray  # (D,) float32
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(MODEL_SUFFIX) if self.path is not None else "(unsaved)"

    def normalise(self, feats: np.ndarray) -> np.ndarray:
        """Standardise raw (..., T, D) features with the training statistics."""
        feats = np.asarray(feats, dtype=np.float32)
        return (feats - self.norm_mean) / self.norm_std

    def check_featurizer(self, identity: str) -> None:
        """Refuse features made by a featurizer other than the one the model was trained on."""
        if identity != self.featurizer_identity:
            raise FeaturizerMismatchError(
                f"model '{self.name}' was trained on features {self.featurizer_identity!r}, "
                f"but these were made with {identity!r}: index with the model's featurizer "
                f"(--featurizer {self.featurizer_spec.get('name', '?')} and the same parameters) "
                "or use a model trained on this store's features"
            )

    @torch.no_grad()
    def score_pairs(self, a_raw: np.ndarray, b_raw: np.ndarray, batch: int = 4096) -> PairScores:
        """Score raw-feature pairs row by row; an `a_raw` of one item is paired with every b."""
        a = np.asarray(a_raw, dtype=np.float32)
        b = np.asarray(b_raw, dtype=np.float32)
        if a.ndim == 2:
            a = a[None]
        if b.ndim == 2:
            b = b[None]
        if a.shape[0] == 1 and b.shape[0] > 1:
            a = np.broadcast_to(a, b.shape)
        if a.shape != b.shape:
            raise ModelError(f"cannot pair items of shapes {a.shape} and {b.shape}")
        self.net.eval()
        chunks = []
        for start in range(0, a.shape[0], batch):
            ta = torch.from_numpy(self.normalise(a[start : start + batch]))
            tb = torch.from_numpy(self.normalise(b[start : start + batch]))
            chunks.append(self.net(ta, tb).numpy())
        c = self.config.n_categories
        probs = np.concatenate(chunks) if chunks else np.zeros((0, c, len(STATES)), np.float32)
        return scores_from_probs(probs)

    @property
    def variant(self) -> str:
        return self.config.variant

    def save(self, path: Path | str) -> Path:
        return save_model(
            path, self.net, self.config, self.taxonomy, self.featurizer_spec,
            self.featurizer_identity, self.norm_mean, self.norm_std, self.meta,
        )


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
    from safetensors.torch import save_file

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={HEADER_KEY: json.dumps(_jsonable(header), sort_keys=True)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_header(path: Path | str) -> dict:
    """The JSON header of a model file, without loading its weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
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
    meta = header.get("meta", {})
    val = meta.get("validation") or {}
    spec = header.get("featurizer", {}).get("spec", {})
    return ModelInfo(
        name=name,
        path=path,
        source=source,
        featurizer=str(spec.get("name", "")),
        featurizer_identity=str(header.get("featurizer", {}).get("identity", "")),
        categories=tuple(header.get("taxonomy", ())),
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
