"""The project's exceptions and warnings.

Library code raises these instead of printing; the CLI turns any SoundsearchError into one
stderr line and exit code 1. Each message names the thing at fault (a file, a store, a model)
and, where there is one, what the user can do about it.
"""

from __future__ import annotations

import os
from pathlib import Path


class SoundsearchError(Exception):
    """Root of every error the CLI reports as a user error (exit code 1)."""


def printable(path: Path | str) -> str:
    """A path as text that always prints (the one helper for it; the CLI escapes markup on top)."""
    # A name that is not valid UTF-8 holds lone surrogates as a str; printing those raises, so
    # messages carry \xNN escapes while .path keeps the real, round-tripping name.
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class AudioError(SoundsearchError):
    """A file that cannot be used as audio: unreadable, undecodable, empty or non-finite."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path) if not isinstance(path, Path) else path
        self.reason = reason
        super().__init__(f"{printable(path)}: {reason}")


class AudioWarning(UserWarning):
    """Odd but usable audio (silent, shorter than a frame): indexed anyway, reported."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path) if not isinstance(path, Path) else path
        self.reason = reason
        super().__init__(f"{printable(path)}: {reason}")


class FeaturizerError(SoundsearchError):
    """Unknown featurizer, bad parameters, or a featurizer whose weights are unavailable."""


class StoreError(SoundsearchError):
    """The feature store is missing, unreadable, corrupt or of an unknown schema."""


class StoreLockedError(StoreError):
    """Another process is writing to the store."""


class StoreMissingError(StoreError):
    """There is no store (yet) at the given place."""


class FeaturizerMismatchError(StoreError):
    """Features made by one featurizer would be mixed with, or compared to, another's."""


class ConfigError(SoundsearchError, ValueError):
    """A configuration that cannot be built: an unknown choice or an out-of-range value.

    Also a ValueError, as a bad argument value is; the CLI prints it as one line.
    """


class ModelError(SoundsearchError):
    """A model file that is missing, unreadable, or does not fit the store or dataset."""


class DatasetError(SoundsearchError):
    """A dataset that is missing, malformed, or unusable for training or evaluation."""


class TrainingError(SoundsearchError):
    """A training run that cannot go on (its loss diverged)."""


class DownloadError(SoundsearchError):
    """A download that failed, or whose checksum does not match."""


class SearchError(SoundsearchError):
    """A query that cannot be answered as asked: unknown category, bad filter or features."""


class ClusterError(SoundsearchError):
    """A dask cluster that cannot be used: dask.distributed not installed, the scheduler
    unreachable or without workers, a worker that cannot run soundsearch or does not see the
    library at the coordinator's paths, or workers lost mid-run."""
