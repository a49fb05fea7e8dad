"""Featurize the files that changed and commit them in batches; Ctrl-C keeps what is done.

The parent alone touches the store, writing every `batch_size` files (or every
`batch_seconds`), so a kill loses at most one batch of work and the next run picks up where
the last committed batch ended.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from soundsearch.errors import ClusterError
from soundsearch.indexing.report import IndexInterrupted, IndexProgress, IndexReport, account
from soundsearch.indexing.workers import featurized, resolve_jobs
from soundsearch.store import STATUS_OK, FileEntry, StoreWriter


class _Batches:
    """Featurized files waiting to be written, and how many were written."""

    def __init__(self, writer: StoreWriter, catalog: dict, report: IndexReport, size: int, seconds: float):
        self.writer, self.catalog, self.report = writer, catalog, report
        self.size, self.seconds = size, seconds
        self.pending: list[FileEntry] = []
        self.last_flush = time.monotonic()
        self.kept = 0

    def flush_if_due(self) -> None:
        if len(self.pending) >= self.size or time.monotonic() - self.last_flush >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_files(self.pending)
            for e in self.pending:
                account(e, self.catalog, self.report)
            self.kept += len(self.pending)
            self.pending = []
        self.last_flush = time.monotonic()


@contextmanager
def _manager_errors_held(active: bool) -> Iterator[dict]:
    """Hold back exceptions of loky's executor-manager thread while the pool runs.

    Cancelling on Ctrl-C races that thread, which can die with a KeyError traceback about a
    cancelled work item (joblib may cancel before we even see the interrupt). Its exceptions
    are shown as usual afterwards, or dropped when the block sets state["interrupted"] (the
    pool is being torn down anyway).
    """
    previous_hook = threading.excepthook
    held: list = []
    state = {"interrupted": False}

    def hold_manager(args) -> None:
        if args.thread is not None and args.thread.name == "ExecutorManagerThread":
            held.append(args)
        else:
            previous_hook(args)

    if active:
        threading.excepthook = hold_manager
    try:
        yield state
    finally:
        if active and not state["interrupted"]:
            threading.excepthook = previous_hook
            for args in held:
                previous_hook(args)


def _close_quietly(results) -> None:
    """Stop the pool now rather than let it finish the queue."""
    close = getattr(results, "close", None)
    if close is not None:
        import warnings

        # joblib warns that finished results go unused: they do, by design (next run).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                close()
            except Exception:
                pass


def featurize_all(
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
    cluster=None,
) -> None:
    """Featurize the (path, size, mtime_ns) files of `todo` and write them, batch by batch:
    in local worker processes, or on the workers of a dask `cluster` (indexing/cluster.py)."""
    total = len(todo)
    notify(IndexProgress("featurize", 0, total))
    if not total:
        return
    n_jobs = 1 if cluster is not None else resolve_jobs(jobs, total)
    results = featurized(todo, fz, cutting, n_jobs, cluster)
    batches = _Batches(writer, catalog, report, batch_size, batch_seconds)
    done = 0
    with _manager_errors_held(n_jobs > 1) as state:
        try:
            for entry in results:
                batches.pending.append(entry)
                done += 1
                if entry.status == STATUS_OK:
                    report.audio_seconds += entry.duration or 0.0
                notify(IndexProgress("featurize", done, total, report.audio_seconds, entry.path))
                batches.flush_if_due()
        except KeyboardInterrupt:
            # Keep what is already featurized; the interrupted rest is picked up next run.
            state["interrupted"] = True
            _close_quietly(results)
            batches.flush()
            raise IndexInterrupted(batches.kept) from None
        except ClusterError as exc:
            # The cluster failed, not the files: keep what came back, as for Ctrl-C.
            _close_quietly(results)
            batches.flush()
            raise ClusterError(f"{exc}; {batches.kept} files kept, run index again to resume") from None
    batches.flush()
