"""What indexing tells its caller: progress while it runs, the report when it is done."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundsearch.errors import printable
from soundsearch.store import STATUS_OK, FileEntry


@dataclass
class IndexProgress:
    """Handed to `on_progress`: phase is "scan", "featurize" or "compact"."""

    phase: str
    done: int = 0
    total: int = 0
    audio_seconds: float = 0.0
    path: Path | None = None


@dataclass
class IndexReport:
    store: Path
    featurizer_identity: str = ""
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    # Files that failed in an earlier run and have not changed since, so were not retried.
    still_failed: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[Path, str]] = field(default_factory=list)
    # Paths not indexed and why: pipes and devices with audio names, folders that cannot be read.
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    # Recorded library folders that were not there this time (unmounted drive?): left alone.
    missing_roots: list[Path] = field(default_factory=list)
    # With verify: files whose stored features failed their checksum and were featurized again.
    repaired: list[Path] = field(default_factory=list)
    items_added: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    compacted: bool = False
    # Long recordings with a sound print (search.prints) after the run.
    prints: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "store": printable(self.store),
            "featurizer": self.featurizer_identity,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": [printable(p) for p in self.removed],
            "failed": [{"path": printable(p), "reason": r} for p, r in self.failed],
            "still_failed": [{"path": printable(p), "reason": r} for p, r in self.still_failed],
            "warnings": [{"path": printable(p), "reason": r} for p, r in self.warnings],
            "skipped": [{"path": printable(p), "reason": r} for p, r in self.skipped],
            "missing_roots": [printable(p) for p in self.missing_roots],
            "repaired": [printable(p) for p in self.repaired],
            "items_added": self.items_added,
            "prints": self.prints,
            "audio_seconds": round(self.audio_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


class IndexInterrupted(KeyboardInterrupt):
    """Ctrl-C during featurization, after what was done was committed: `kept` files."""

    def __init__(self, kept: int):
        super().__init__(kept)
        self.kept = kept


def account(e: FileEntry, catalog: dict, report: IndexReport) -> None:
    known = str(e.path) in catalog
    if e.status == STATUS_OK:
        if known:
            report.updated += 1
        else:
            report.added += 1
        report.items_added += len(e.segments)
        report.warnings.extend((e.path, w) for w in e.warnings)
    else:
        report.failed.append((e.path, e.error or "unknown error"))
