"""Bring a store up to date with library folders: scan, stat, remove what is gone, featurize
what changed (batches.py), compact."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable

from soundsearch.errors import ConfigError, SoundsearchError, StoreError, StoreMissingError, printable
from soundsearch.indexing.batches import featurize_all
from soundsearch.indexing.report import IndexProgress, IndexReport
from soundsearch.store import STATUS_FAILED, Store, StoreWriter


def _under_any(path: str, roots: set[str]) -> bool:
    """Whether `path` is one of `roots` or inside one (O(depth): datasets pass thousands of roots)."""
    p = path
    while True:
        if p in roots:
            return True
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent


def index_paths(
    store_dir: Path | str,
    paths: Iterable[Path | str],
    featurizer_name: str | None = None,
    featurizer_params: dict | None = None,
    jobs: int | None = None,
    on_progress: Callable[[IndexProgress], None] | None = None,
    item_seconds: float | None = None,
    *,
    item_hop: float | None = None,
    event_items: int | None = None,
    wait: bool = False,
    batch_size: int = 64,
    batch_seconds: float = 10.0,
    verify: bool = False,
    scheduler: str | None = None,
) -> IndexReport:
    """Bring the store at `store_dir` up to date with the audio files under `paths`.

    New and changed files (size or mtime_ns differ) are featurized, unchanged ones only stat'ed,
    catalogued files under a given folder that are gone are removed. With no `paths`, every
    library folder the store has seen is refreshed (ones that are missing are skipped and
    reported, never emptied). Raises StoreLockedError when another process is writing (unless
    `wait`), FeaturizerMismatchError when the featurizer differs from the store's, StoreError for
    an unusable store, SoundsearchError for a missing path. With `verify`, every stored item's
    features are checked against their checksum and the files of damaged items are featurized
    again, as if changed (items stored before checksums existed get theirs recorded).
    `item_seconds`, `item_hop` and `event_items` say how a new store cuts recordings (see
    audio.Cutting; None: the defaults); for an existing store they must match its own.
    With `scheduler` (a dask scheduler's address) the files are featurized on that cluster's
    workers and written here; the cluster is reached before the store is opened, so a
    ClusterError for one that cannot be used leaves the store untouched (see cluster.py).
    """
    from soundsearch.features import featurizer_from_spec, get_featurizer

    t0 = time.perf_counter()
    store_dir = Path(store_dir).expanduser().absolute()
    roots = _checked_roots(paths)
    requested = None
    if featurizer_name is not None or featurizer_params:
        requested = get_featurizer(featurizer_name, **(featurizer_params or {}))

    if scheduler is not None and jobs is not None:
        raise ConfigError("--jobs is for indexing on this machine; on a dask cluster every worker thread featurizes")

    cutting = {"item_seconds": item_seconds, "item_hop": item_hop, "event_items": event_items}
    with ExitStack() as stack:
        cluster = None
        if scheduler is not None:
            from soundsearch.indexing.cluster import connect

            cluster = stack.enter_context(connect(scheduler))
        store = stack.enter_context(_open_store(store_dir, bool(roots), requested, wait, cutting))
        spec, identity = store.featurizer_spec, store.featurizer_identity
        # `--featurizer logmel` on a store made by logmel with other parameters means "this
        # store's logmel", not "logmel with default parameters".
        if requested is not None and (featurizer_params or requested.name != spec.get("name")):
            store.check_request(requested)
        else:
            requested = None
        fz = requested or featurizer_from_spec(spec)  # fails early, e.g. for missing weights
        if fz.identity != identity:
            raise StoreError(
                f"the store at {printable(store_dir)} was made by {identity!r}, which this soundsearch "
                f"rebuilds as {fz.identity!r}: index into a new store"
            )
        report = IndexReport(store=store_dir, featurizer_identity=identity)
        with store.writer(wait=wait) as writer:
            _run(store, writer, roots, fz, jobs, on_progress, batch_size, batch_seconds, report, verify, cluster)
        report.prints = _warm_prints(store, jobs)
    report.seconds = time.perf_counter() - t0
    return report


def _warm_prints(store: Store, jobs: int | None) -> int:
    """Make the sound prints of the store's long recordings now, while their files were just
    read, rather than on the first search (search.prints); how many there are."""
    from soundsearch.search.prints import warm

    store.refresh()
    return warm(store, workers=max(1, jobs or os.cpu_count() or 1))


def _open_store(store_dir: Path, have_roots: bool, requested, wait: bool, cutting: dict) -> Store:
    """The store to index into; a first run (given folders) makes it, under its lock, with the
    featurizer asked for or the default. Its featurizer is checked by the caller."""
    try:
        return Store.open(store_dir, **cutting)
    except StoreMissingError:
        if not have_roots:
            raise StoreMissingError(f"no store at {printable(store_dir)}: give the folders to index") from None
    return Store.open(store_dir, create=True, featurizer=requested, wait=wait, **cutting)


def _checked_roots(paths: Iterable[Path | str]) -> list[Path]:
    """The absolute paths to index; SoundsearchError for one that is missing, unreadable or
    a file without an audio extension."""
    from soundsearch.audio.files import AUDIO_EXTENSIONS, has_audio_extension

    roots = [Path(os.path.abspath(os.fsdecode(p))) for p in paths]
    for r in roots:
        try:
            os.stat(r)
        except FileNotFoundError:
            raise SoundsearchError(f"{printable(r)}: no such file or directory") from None
        except PermissionError:
            # os.path.exists says False here, which made a folder we may not enter "no such file".
            raise SoundsearchError(f"{printable(r)}: permission denied (on it or a folder above it)") from None
        except OSError as exc:
            raise SoundsearchError(f"{printable(r)}: cannot read ({exc.strerror or exc})") from None
        if os.path.isfile(r) and not has_audio_extension(r):
            raise SoundsearchError(
                f"{printable(r)}: not a supported audio file (extensions: {', '.join(sorted(AUDIO_EXTENSIONS))})"
            )
    return roots


def _run(
    store: Store,
    writer: StoreWriter,
    roots: list[Path],
    fz,
    jobs: int | None,
    on_progress: Callable[[IndexProgress], None] | None,
    batch_size: int,
    batch_seconds: float,
    report: IndexReport,
    verify: bool = False,
    cluster=None,
) -> None:
    notify = on_progress or (lambda _p: None)
    if not roots:
        known = store.roots()
        roots = [r for r in known if os.path.exists(r)]
        report.missing_roots = [r for r in known if not os.path.exists(r)]
    else:
        writer.add_roots(roots)

    notify(IndexProgress("scan"))
    catalog = store.file_states()
    damaged: set[str] = set()
    if verify:
        damaged = set(store.check_checksums()[0])
        writer.record_missing_checksums()
    scanned_dirs: set[str] = set()
    todo, seen = _changed(roots, catalog, damaged, scanned_dirs, report)

    # Only folders named in this run (or refreshed) are checked for deletions. Files are known by
    # their real paths, so the real paths of the roots and of every folder listed count too.
    root_set = {str(r) for r in roots} | {os.path.realpath(r) for r in roots}
    gone = [
        Path(key) for key in catalog
        if key not in seen and (_under_any(key, root_set) or os.path.dirname(key) in scanned_dirs)
    ]
    if gone:
        writer.remove_files(gone)
        report.removed = sorted(gone)

    featurize_all(writer, todo, catalog, fz, store.cutting, jobs, notify, batch_size, batch_seconds, report, cluster)

    if writer.holes():
        notify(IndexProgress("compact"))
        report.compacted = writer.compact()


def _changed(roots: list[Path], catalog: dict, damaged: set[str], scanned_dirs: set[str], report: IndexReport):
    """(files to featurize as (path, size, mtime_ns), every path the scan found): new, changed
    or damaged files; unchanged ones are counted in `report`. `scanned_dirs` receives every
    folder listed."""
    from soundsearch.audio.files import scan

    todo: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    for p in scan(roots, on_skip=lambda path, why: report.skipped.append((path, why)), dirs=scanned_dirs):
        key = str(p)
        seen.add(key)
        try:
            st = os.stat(p)
        except OSError:
            continue  # vanished since the scan; the next run removes it
        known = catalog.get(key)
        if key in damaged:
            report.repaired.append(p)
        elif known is not None and known[0] == st.st_size and known[1] == st.st_mtime_ns and not _decodable_now(known):
            report.unchanged += 1
            if known[2] == STATUS_FAILED:
                report.still_failed.append((p, known[3] or ""))
            continue
        todo.append((key, st.st_size, st.st_mtime_ns))
    return todo, seen


def _decodable_now(known: tuple) -> bool:
    """A file that failed only for want of PyAV, which is installed now (the summary's hint was
    followed): it is tried again though unchanged."""
    from soundsearch.avdecode import INSTALL_HINT, available

    return known[2] == STATUS_FAILED and (known[3] or "").endswith(INSTALL_HINT) and available()


