"""Where soundsearch keeps things on disk: the default store, trained models, datasets.

Every location can be overridden on the command line; the environment variables here are the
second choice and the per-user data directory the last.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP = "soundsearch"
STORE_ENV = "SOUNDSEARCH_STORE"
MODELS_ENV = "SOUNDSEARCH_MODELS"
DATA_ENV = "SOUNDSEARCH_DATA"
WEIGHTS_DIR_ENV = "SOUNDSEARCH_WEIGHTS_DIR"


def user_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def default_store_dir() -> Path:
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "store"


def resolve_store_dir(store: Path | None) -> Path:
    return (store.expanduser() if store is not None else default_store_dir()).absolute()


def user_models_dir() -> Path:
    """Where `soundsearch train` writes checkpoints unless told otherwise."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "models"


def shipped_models_dirs() -> list[Path]:
    """Folders holding the models that come with soundsearch.

    In a source checkout or editable install that is the repository's `models/`; a wheel
    install carries them as data files under `<prefix>/share/soundsearch/models`.
    """
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "models", Path(sys.prefix) / "share" / APP / "models"]
    return [c for c in candidates if c.is_dir()]


def default_data_dir(dataset: str) -> Path:
    env = os.environ.get(DATA_ENV)
    base = Path(env).expanduser() if env else user_data_dir() / "datasets"
    return base / dataset


def user_weights_dir() -> Path:
    """Where pretrained featurizer weights converted to safetensors are kept (one file each,
    named by featurizer and checksum)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "weights"


def chmod_as_created(path: Path | str) -> None:
    """Give a file made by tempfile.mkstemp (always 0600) the permissions a plain create would
    (0666 less the umask), so a model, cache or weights file renamed into place stays readable
    by the others who share the folder."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
