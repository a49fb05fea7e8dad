"""Where soundsearch keeps things on disk: the default store, trained models, datasets.

Every location can be overridden on the command line; the environment variables here are the
second choice and the per-user data directory the last.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
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


class TempFile:
    """A new hidden temporary file beside `target` (`.<name>.XXXXXXXX<suffix>`), written and then
    renamed onto `target`, so nothing incomplete ever carries the final name.

    It stays flock'ed while open: a writer killed before its rename (kill -9, the out-of-memory
    killer) leaves the file behind, unlocked, and `remove_abandoned` tells it from one another
    process is still writing. A search cache is as big as the store's features: leftovers of
    killed builds filled the disk, one per kill.
    """

    def __init__(self, target: Path, suffix: str = ".tmp"):
        while True:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(name).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            # A cleaner took it for abandoned in the instant before our lock: take another name.
            os.close(fd)
        self.fd, self.name = fd, name

    def publish(self, target: Path) -> None:
        """Rename the (complete) file onto `target`, then let go of it."""
        os.replace(self.name, target)
        self.close()

    def discard(self) -> None:
        Path(self.name).unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


def remove_abandoned(folder: Path, pattern: str) -> int:
    """Delete the TempFiles in `folder` matching the glob `pattern` that no live process holds
    (their writers died before renaming them into place); returns how many."""
    removed = 0
    for other in folder.glob(pattern):
        try:
            fd = os.open(other, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(other).st_ino == os.fstat(fd).st_ino:  # still the file we locked
                os.unlink(other)
                removed += 1
        except OSError:
            pass  # locked: its writer is alive; or renamed or removed meanwhile
        finally:
            os.close(fd)
    return removed


def chmod_as_created(path: Path | str) -> None:
    """Give a file made by tempfile.mkstemp (always 0600) the permissions a plain create would
    (0666 less the umask), so a model, cache or weights file renamed into place stays readable
    by the others who share the folder."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
