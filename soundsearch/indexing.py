"""Index library folders into a feature store: scan, stat, featurize what changed, commit in batches.

Featurization runs in joblib worker processes; the parent alone touches the store, writing every
`batch_size` files (or every `batch_seconds`), so a kill loses at most one batch of work and the
next run picks up where the last committed batch ended.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from soundsearch.errors import AudioError, FeaturizerError, SoundsearchError, StoreError, StoreMissingError, printable
from soundsearch.store import STATUS_FAILED, STATUS_OK, FileEntry, Store, StoreWriter


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
            "audio_seconds": round(self.audio_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


class IndexInterrupted(KeyboardInterrupt):
    """Ctrl-C during featurization, after what was done was committed: `kept` files."""

    def __init__(self, kept: int):
        super().__init__(kept)
        self.kept = kept


# One featurizer per worker process, rebuilt from its spec once rather than unpickled per task.
_WORKER_FEATURIZERS: dict[str, Any] = {}
_WORKER_SETUP: list[int] = []


def _worker_setup(parent_pid: int) -> None:
    """Once per worker process: leave Ctrl-C to the parent, and die with the parent.

    A terminal's Ctrl-C reaches the whole process group; workers that raised KeyboardInterrupt
    mid-task made joblib's worker-manager thread print a traceback. The parent stops the pool
    itself. If the parent is killed outright, nothing stops the pool, so a watchdog thread ends
    this worker once its parent is gone (ppid changes) instead of leaving it running. Run as the
    pool's initializer, so a worker that never got a task is covered too; a polling thread
    rather than prctl(PR_SET_PDEATHSIG), which fires when the forking *thread* exits and loky
    may fork from a helper thread.
    """
    import signal
    import threading

    if _WORKER_SETUP or os.getpid() == parent_pid:
        return  # set up already, or featurizing in the parent itself (--jobs 1)
    _WORKER_SETUP.append(os.getpid())
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        pass  # not the main thread of the worker: the parent still stops the pool
    # Compare with the pid the parent passed, not the ppid seen now: a worker still importing
    # when the parent was killed starts up already orphaned (ppid 1) and must exit at once.
    ppid = os.getppid()
    parent = parent_pid if ppid in (parent_pid, 1) else ppid

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="soundsearch-parent-watch", daemon=True).start()



def _worker_featurizer(spec: dict, identity: str):
    fz = _WORKER_FEATURIZERS.get(identity)
    if fz is None:
        from soundsearch.features import featurizer_from_spec

        fz = _WORKER_FEATURIZERS[identity] = featurizer_from_spec(spec)
    return fz


def _featurize(
    path: str, size: int, mtime_ns: int, spec: dict, identity: str, cutting, parent_pid: int = 0
) -> FileEntry:
    """Worker side: one file in, one FileEntry out; a bad file is a failed entry, not a crash."""
    import numpy as np

    from soundsearch.features import featurize_file

    _worker_setup(parent_pid or os.getpid())
    entry = FileEntry(path=Path(path), size=size, mtime_ns=mtime_ns)
    fz = _worker_featurizer(spec, identity)
    try:
        ff = featurize_file(path, fz, cutting=cutting)
    except AudioError as exc:
        entry.status, entry.error = STATUS_FAILED, exc.reason
        return entry
    except FeaturizerError as exc:
        # The featurizer itself was built in the parent, so this is about this file's signal.
        entry.status, entry.error = STATUS_FAILED, f"could not be featurized ({exc})"
        return entry
    except (ValueError, MemoryError, OverflowError, RuntimeError) as exc:
        # A decoder or featurizer tripping over one odd file must not sink a library's batch.
        entry.status, entry.error = STATUS_FAILED, f"could not be featurized ({type(exc).__name__}: {exc})"
        return entry
    feats = np.asarray(ff.features, dtype=np.float32)
    if feats.shape[0] != len(ff.segments) or not np.isfinite(feats).all():
        entry.status, entry.error = STATUS_FAILED, "featurizer produced invalid values"
        return entry
    entry.features = feats
    entry.segments = [(float(a), float(b)) for a, b in ff.segments]
    entry.duration = float(ff.info.duration)
    entry.samplerate = int(ff.info.samplerate)
    entry.channels = int(ff.info.channels)
    entry.warnings = [getattr(w, "reason", str(w)) for w in ff.warnings]
    return entry


def _resolve_jobs(jobs: int | None, n_tasks: int) -> int:
    cores = os.cpu_count() or 1
    n = cores if jobs is None or jobs <= 0 else jobs
    # Starting worker processes costs more than featurizing a couple of files.
    return max(1, min(n, n_tasks if n_tasks > 2 else 1))


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
    """
    from soundsearch import audio
    from soundsearch.features import featurizer_from_spec, get_featurizer

    t0 = time.perf_counter()
    store_dir = Path(store_dir).expanduser().absolute()
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
        if os.path.isfile(r) and not audio.has_audio_extension(r):
            raise SoundsearchError(
                f"{printable(r)}: not a supported audio file (extensions: {', '.join(sorted(audio.AUDIO_EXTENSIONS))})"
            )

    requested = None
    if featurizer_name is not None or featurizer_params:
        requested = get_featurizer(featurizer_name, **(featurizer_params or {}))

    cutting = {"item_seconds": item_seconds, "item_hop": item_hop, "event_items": event_items}
    try:
        store = Store.open(store_dir, **cutting)
    except StoreMissingError:
        if not roots:
            raise StoreMissingError(f"no store at {printable(store_dir)}: give the folders to index") from None
        # A first run makes the store (under its lock) with the featurizer asked for, or the default.
        store = Store.open(store_dir, create=True, featurizer=requested, wait=wait, **cutting)
    with store:
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
            _run(store, writer, roots, fz, jobs, on_progress, batch_size, batch_seconds, report, verify)
    report.seconds = time.perf_counter() - t0
    return report


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
) -> None:
    from soundsearch import audio

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
    todo: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    scanned_dirs: set[str] = set()
    for p in audio.scan(roots, on_skip=lambda path, why: report.skipped.append((path, why)), dirs=scanned_dirs):
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

    _featurize_all(writer, todo, catalog, fz, store.cutting, jobs, notify, batch_size, batch_seconds, report)

    if writer.holes():
        notify(IndexProgress("compact"))
        report.compacted = writer.compact()


def _decodable_now(known: tuple) -> bool:
    """A file that failed only for want of PyAV, which is installed now (the summary's hint was
    followed): it is tried again though unchanged."""
    from soundsearch.avdecode import INSTALL_HINT, available

    return known[2] == STATUS_FAILED and (known[3] or "").endswith(INSTALL_HINT) and available()


def _featurize_all(
    writer: StoreWriter,
    todo: list[tuple[str, int, int]],
    catalog: dict,
    fz,
    cutting,
    jobs: int | None,
    notify: Callable[[IndexProgress], None],
    batch_size: int,
    batch_seconds: float,
    report: IndexReport,
) -> None:
    total = len(todo)
    notify(IndexProgress("featurize", 0, total))
    if not total:
        return
    spec, identity = fz.spec(), fz.identity
    _WORKER_FEATURIZERS[identity] = fz  # the in-process path (jobs=1) reuses the parent's
    n_jobs = _resolve_jobs(jobs, total)
    results: Iterator[FileEntry]
    if n_jobs == 1:
        results = (_featurize(p, s, m, spec, identity, cutting) for p, s, m in todo)
    else:
        from joblib import Parallel, delayed

        # Ordered results keep array rows in scan order, so a re-index is reproducible.
        # Thread counts: joblib's loky workers start with OMP_NUM_THREADS (and the BLAS
        # equivalents) set to cpu_count // n_jobs, which torch takes as its intra-op thread
        # count, so n_jobs workers running aisfx's convolutions share the cores rather than
        # each using all of them; with n_jobs == 1 the featurizer runs here on all threads.
        from joblib import parallel_config

        with parallel_config(backend="loky", initializer=_worker_setup, initargs=(os.getpid(),)):
            results = Parallel(n_jobs=n_jobs, return_as="generator", pre_dispatch="4*n_jobs")(
                delayed(_featurize)(p, s, m, spec, identity, cutting, os.getpid()) for p, s, m in todo
            )

    pending: list[FileEntry] = []
    last_flush = time.monotonic()
    done = 0
    kept = 0
    # Cancelling on Ctrl-C races loky's executor-manager thread, which can die with a KeyError
    # traceback about a cancelled work item (joblib may cancel before we even see the
    # interrupt). Its exceptions are held back while the pool runs: dropped after an interrupt
    # (the pool is being torn down anyway), shown as usual otherwise.
    import threading

    previous_hook = threading.excepthook
    held: list = []
    interrupted = False

    def hold_manager(args) -> None:
        if args.thread is not None and args.thread.name == "ExecutorManagerThread":
            held.append(args)
        else:
            previous_hook(args)

    if n_jobs > 1:
        threading.excepthook = hold_manager

    def flush() -> None:
        nonlocal pending, last_flush
        nonlocal kept
        if pending:
            writer.write_files(pending)
            for e in pending:
                _account(e, catalog, report)
            kept += len(pending)
            pending = []
        last_flush = time.monotonic()

    try:
        for entry in results:
            pending.append(entry)
            done += 1
            if entry.status == STATUS_OK:
                report.audio_seconds += entry.duration or 0.0
            notify(IndexProgress("featurize", done, total, report.audio_seconds, entry.path))
            if len(pending) >= batch_size or time.monotonic() - last_flush >= batch_seconds:
                flush()
    except KeyboardInterrupt:
        # Keep what is already featurized; the interrupted rest is picked up next run. Closing
        # the generator makes joblib stop its workers now rather than finish the queue.
        close = getattr(results, "close", None)
        interrupted = True
        if close is not None:
            import warnings

            # joblib warns that finished results go unused: they do, by design (next run).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    close()
                except Exception:
                    pass
        flush()
        raise IndexInterrupted(kept) from None
    finally:
        if n_jobs > 1 and not interrupted:
            threading.excepthook = previous_hook
            for args in held:
                previous_hook(args)
    flush()


def _account(e: FileEntry, catalog: dict, report: IndexReport) -> None:
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
