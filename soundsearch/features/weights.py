"""Pretrained featurizer weights: find them, load them without running pickled code, checksum
them, and keep one converted safetensors copy per user.

A featurizer that ships as someone else's PyTorch checkpoint (a pickle) describes where its
weights may be with a `WeightSource`; `resolve_weights` then looks, in order, at

  1. the file named by the source's environment variable (.safetensors or the original .pth),
  2. a copy already converted into `paths.user_weights_dir()` (`<name>-<sha16>.safetensors`),
  3. the checkpoint inside an installed Python package, found with importlib's finder without
     importing the package (importing can pull in heavy or missing dependencies),

and converts a checkpoint once, atomically, into the weights dir (in memory only when that dir
cannot be written). Checkpoints are read with `torch.load(weights_only=True)`: only tensors,
containers and the few extra types a source names explicitly may be unpickled.

The checksum (`tensors_digest`) is over tensor names, dtypes, shapes and bytes, so the same
weights give the same checksum whether they came from the .pth or a .safetensors copy.

Reading any of those needs torch (~1 s to import). A featurizer that can also run without it
keeps arrays derived from its weights (aisfx: the convolutions with batch norm folded in) beside
the converted copy, as `<name>-<sha16>.<kind>.npz` (`save_derived`, whenever it has loaded the
weights with torch), and reads them back with numpy alone (`load_derived`). They are named by
the checksum of the weights they were derived from, which a store's featurizer spec records, so
they stand only for exactly those weights; the zip's CRCs catch a damaged file. Derived from the
file the source's environment variable names, they are used only while that variable names a
file with the path, size and mtime recorded in them: a file changed in place is read again with
torch. Torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundsearch import paths
from soundsearch.errors import FeaturizerError

if TYPE_CHECKING:
    import torch

DIGEST_CHARS = 16


def numpy_pickle_globals() -> list[Any]:
    """The numpy types a checkpoint pickled with numpy scalars (e.g. np.int64 inside a dict)
    refers to, for torch.serialization.safe_globals.

    Such pickles name `numpy.core.multiarray.scalar`; numpy 2 moved it to
    `numpy._core.multiarray.scalar` (keeping an alias module), so the allowlist entry is the
    object paired with the name the pickle spells.
    """
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return [(scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.int64))]


def load_checkpoint_safely(path: Path, extra_globals: Sequence[Any] = ()) -> Any:
    """torch.load with weights_only=True, allowing only `extra_globals` beyond torch's own list.

    FeaturizerError when the file is unreadable or needs anything else unpickled.
    """
    import torch

    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FeaturizerError(f"weights file {path} does not exist") from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, zipfile errors ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FeaturizerError(f"cannot load weights from {path} safely: {first}") from None


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of the tensors' names, dtypes, shapes and contents, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as e:
        raise FeaturizerError(f"cannot read weights file {path}: {e}") from None


def save_safetensors_atomically(tensors: Mapping[str, torch.Tensor], dest: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary file beside `dest`, then rename: a reader never sees half a file,
    and two processes converting at once both end with the same complete file."""
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        paths.chmod_as_created(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def package_file(package: str, relative: str) -> Path | None:
    """A file inside an installed package, located without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class WeightSource:
    """Where one featurizer's weights may be and how to read its original checkpoint.

    `extract` turns the safely unpickled checkpoint into the name -> tensor mapping the
    featurizer needs (dropping training-only parts); `hint` is the one-line how-to for a user
    who has none of them.
    """

    name: str
    env_var: str
    package: str
    package_path: str
    extract: Callable[[Any], dict[str, torch.Tensor]]
    hint: str
    extra_globals: Sequence[Any] = field(default_factory=tuple)


@dataclass(frozen=True)
class Weights:
    tensors: dict[str, torch.Tensor]
    digest: str  # full sha256 hex of tensors_digest
    origin: Path  # the file they were read from

    @property
    def short(self) -> str:
        return self.digest[:DIGEST_CHARS]


def _read(source: WeightSource, path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    raw = load_checkpoint_safely(path, source.extra_globals)
    try:
        return source.extract(raw)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise FeaturizerError(f"{path} is not a {source.name} checkpoint ({type(e).__name__}: {e}); {source.hint}") from None


def _converted(source: WeightSource, directory: Path, expected: str | None) -> Path | None:
    if expected:
        path = directory / f"{source.name}-{expected[:DIGEST_CHARS]}.safetensors"
        return path if path.is_file() else None
    try:
        found = sorted(directory.glob(f"{source.name}-*.safetensors"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return found[-1] if found else None


def resolve_weights(source: WeightSource, expected: str | None = None) -> Weights:
    """The featurizer's weights (see the module docstring for the order looked in).

    With `expected` (a checksum prefix, e.g. from a store's featurizer spec) a converted copy of
    exactly those weights is preferred, and weights with another checksum are refused.
    FeaturizerError, with the source's how-to, when there are none.
    """
    env = os.environ.get(source.env_var)
    directory = None
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FeaturizerError(f"{source.env_var}={env} is not a file; {source.hint}")
        tensors, origin = _read(source, path), path
    else:
        from soundsearch.paths import user_weights_dir

        directory = user_weights_dir()
        origin = _converted(source, directory, expected)
        if origin is None:
            origin = package_file(source.package, source.package_path)
        if origin is None:
            raise FeaturizerError(source.hint)
        tensors = _read(source, origin)
    digest = tensors_digest(tensors)
    if origin.suffix == ".safetensors" and origin.name.startswith(f"{source.name}-"):
        named = origin.stem[len(source.name) + 1 :]
        if env is None and not digest.startswith(named):
            raise FeaturizerError(
                f"{origin} is damaged (its contents' checksum is {digest[:DIGEST_CHARS]}, not {named}): delete it to convert again"
            )
    if expected and not digest.startswith(expected):
        raise FeaturizerError(
            f"the available {source.name} weights ({origin}, checksum {digest[:DIGEST_CHARS]}) are not the ones "
            f"these features were made with (checksum {expected}); point {source.env_var} at those weights"
        )
    if directory is not None and origin.suffix != ".safetensors":
        dest = directory / f"{source.name}-{digest[:DIGEST_CHARS]}.safetensors"
        try:
            save_safetensors_atomically(tensors, dest, {"source": str(origin), "sha256": digest})
        except OSError:
            pass  # an unwritable data dir only costs converting again next time
    return Weights(tensors, digest, origin)


# -- arrays derived from the weights, read without torch (module docstring) -------------------

_META = "__meta__"


def derived_path(source: WeightSource, digest: str, kind: str) -> Path:
    return paths.user_weights_dir() / f"{source.name}-{digest[:DIGEST_CHARS]}.{kind}.npz"


def _env_file(source: WeightSource) -> Path | None:
    env = os.environ.get(source.env_var)
    return Path(env).expanduser() if env else None


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"origin": str(path.resolve()), "origin_size": st.st_size, "origin_mtime_ns": st.st_mtime_ns}


def _read_meta(npz: Any) -> dict[str, Any]:
    meta = json.loads(str(npz[_META][()]))
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return meta


def _usable(meta: dict[str, Any], kind: str, expected: str, env_file: Path | None) -> bool:
    if meta.get("kind") != kind or not str(meta.get("sha256", "")).startswith(expected):
        return False
    if env_file is None:
        return True
    try:
        stamp = _stamp(env_file)
    except OSError:
        return False
    return all(meta.get(k) == v for k, v in stamp.items())


def load_derived(source: WeightSource, expected: str | None, kind: str) -> tuple[dict[str, np.ndarray], str] | None:
    """(arrays, full checksum of the weights) of `kind` derived from the weights with checksum
    prefix `expected`, read without torch; None when there is no usable file (no `expected`,
    none written yet, damaged, or not made from the file the source's environment variable
    names as it is now)."""
    if not expected:
        return None
    path = derived_path(source, expected, kind)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = _read_meta(npz)
            if not _usable(meta, kind, expected, _env_file(source)):
                return None
            return {k: npz[k] for k in npz.files if k != _META}, str(meta["sha256"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def save_derived(source: WeightSource, weights: Weights, kind: str, arrays: Mapping[str, np.ndarray]) -> Path | None:
    """Write `arrays` derived from `weights` for load_derived, atomically (as
    save_safetensors_atomically), unless a whole file load_derived would use is there already.
    The path; None when the weights dir cannot be written (it only costs torch next time)."""
    env_file = _env_file(source)
    dest = derived_path(source, weights.digest, kind)
    try:
        with np.load(dest, allow_pickle=False) as npz:
            if _usable(_read_meta(npz), kind, weights.digest, env_file):
                for k in npz.files:
                    npz[k]  # read through, so the CRCs are checked: a damaged one is replaced
                return dest
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass
    meta: dict[str, Any] = {"kind": kind, "sha256": weights.digest}
    try:
        meta.update(_stamp(weights.origin))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()}, **{_META: np.array(json.dumps(meta))})
        paths.chmod_as_created(tmp)
        os.replace(tmp, dest)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
