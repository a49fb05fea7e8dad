"""The worker side of indexing: featurize one file in a joblib worker process, and the pool.

One featurizer per worker process, rebuilt from its spec once rather than unpickled per task.
A file that cannot be read or featurized comes back as a failed FileEntry, never as a crash.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

from soundsearch.errors import AudioError, FeaturizerError
from soundsearch.store import STATUS_FAILED, FileEntry

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

        fz = _WORKER_FEATURIZERS[identity] = featurizer_from_spec(spec).for_indexing()
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


def resolve_jobs(jobs: int | None, n_tasks: int) -> int:
    cores = os.cpu_count() or 1
    n = cores if jobs is None or jobs <= 0 else jobs
    # Starting worker processes costs more than featurizing a couple of files.
    return max(1, min(n, n_tasks if n_tasks > 2 else 1))



def featurized(todo: list[tuple[str, int, int]], fz, cutting, n_jobs: int, cluster=None) -> Iterator[FileEntry]:
    """FileEntries of (path, size, mtime_ns) tasks, in task order, from n_jobs worker processes
    (n_jobs 1: here, in this process), or from the workers of a dask `cluster` (cluster.py)."""
    spec, identity = fz.spec(), fz.identity
    _WORKER_FEATURIZERS[identity] = fz.for_indexing()  # the in-process path (jobs=1) reuses the parent's
    if cluster is not None:
        from soundsearch.indexing import cluster as dask_cluster

        return dask_cluster.featurized(cluster, todo, fz, cutting)
    if n_jobs == 1:
        return (_featurize(p, s, m, spec, identity, cutting) for p, s, m in todo)
    from joblib import Parallel, delayed

    # Ordered results keep array rows in scan order, so a re-index is reproducible.
    # Thread counts: joblib's loky workers start with OMP_NUM_THREADS (and the BLAS
    # equivalents) set to cpu_count // n_jobs, which torch takes as its intra-op thread
    # count, so n_jobs workers running aisfx's convolutions share the cores rather than
    # each using all of them; with n_jobs == 1 the featurizer runs here on all threads.
    from joblib import parallel_config

    with parallel_config(backend="loky", initializer=_worker_setup, initargs=(os.getpid(),)):
        return Parallel(n_jobs=n_jobs, return_as="generator", pre_dispatch="4*n_jobs")(
            delayed(_featurize)(p, s, m, spec, identity, cutting, os.getpid()) for p, s, m in todo
        )
