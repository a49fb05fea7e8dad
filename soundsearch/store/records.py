"""What the store hands out and takes in: items, files, statistics, and one file's indexing outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from soundsearch.errors import printable

if TYPE_CHECKING:
    import numpy as np

STATUS_OK = "ok"
STATUS_FAILED = "failed"


class ItemRecord:
    """One stored item; `row` is its index into `Store.features()` and `Store.items()`.

    Read-only by convention. The Path is built on first access: a query reads every item of a
    large store but looks at the paths of only a few, and pathlib dominates the cost otherwise.
    """

    __slots__ = ("row", "_path", "start", "end", "file_duration")

    def __init__(self, row: int, path: Path | str, start: float, end: float, file_duration: float):
        self.row = row
        self._path = path
        self.start = start
        self.end = end
        self.file_duration = file_duration

    @property
    def path(self) -> Path:
        p = self._path
        if type(p) is str:
            p = self._path = Path(p)
        return p  # type: ignore[return-value]

    def _key(self) -> tuple:
        return (self.row, str(self._path), self.start, self.end, self.file_duration)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemRecord) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ItemRecord(row={self.row}, path={str(self._path)!r}, start={self.start}, end={self.end}, "
            f"file_duration={self.file_duration})"
        )


@dataclass(frozen=True)
class FileRecord:
    """What the catalog knows about one file (used for incremental indexing and reports)."""

    path: Path
    size: int
    mtime_ns: int
    duration: float | None
    samplerate: int | None
    channels: int | None
    status: str
    error: str | None
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class StoreStats:
    path: Path
    featurizer_name: str
    featurizer_identity: str
    featurizer_params: dict
    item_seconds: float
    files: int
    items: int
    duration: float
    failures: int
    bytes_on_disk: int
    roots: tuple[Path, ...]
    schema_version: int
    item_hop: float | None = None  # seconds between window starts (item_seconds: no overlap)
    event_items: int = 0  # most event items per minute of a long recording

    def items_per_hour(self) -> tuple[float, float]:
        """(windows, most event items) per hour of long recordings."""
        hop = self.item_hop or self.item_seconds
        return 3600.0 / hop, 60.0 * self.event_items

    def to_json(self) -> dict:
        return {
            "store": printable(self.path),
            "featurizer": {
                "name": self.featurizer_name,
                "identity": self.featurizer_identity,
                "params": self.featurizer_params,
            },
            "item_seconds": self.item_seconds,
            "item_hop": self.item_hop if self.item_hop is not None else self.item_seconds,
            "event_items": self.event_items,
            "files": self.files,
            "items": self.items,
            "duration_seconds": round(self.duration, 3),
            "failures": self.failures,
            "bytes_on_disk": self.bytes_on_disk,
            "roots": [printable(r) for r in self.roots],
            "schema_version": self.schema_version,
        }


@dataclass
class FileEntry:
    """One file's indexing outcome, handed to `StoreWriter.write_files`."""

    path: Path
    size: int
    mtime_ns: int
    status: str = STATUS_OK
    error: str | None = None
    duration: float | None = None
    samplerate: int | None = None
    channels: int | None = None
    warnings: list[str] = field(default_factory=list)
    segments: list[tuple[float, float]] = field(default_factory=list)
    features: np.ndarray | None = None
