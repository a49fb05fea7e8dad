"""Featurize on a dask.distributed cluster through joblib's dask backend (`index --backend dask`).

Only the featurizing moves: the workers run the same `workers._featurize` as local indexing and
send FileEntries back, and this process (the coordinator) alone writes the store, in the same
batches as a local run, so an interrupted or failed run resumes on the next `index`.

Workers read files by the coordinator's paths, so every worker must see the library at the same
path (a shared filesystem mounted at the same place); one that cannot stops the run with a
ClusterError rather than marking the library failed. Each worker thread sets torch's thread
count once, as loky workers get theirs locally: the host's cores shared among the dask threads
running on that host.

dask.distributed is an optional dependency (`pip install 'soundsearch[dask]'`); it is imported
only here, and only when a scheduler is given.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from soundsearch.errors import ClusterError, FeaturizerError, printable
from soundsearch.store import STATUS_FAILED, FileEntry

INSTALL = "pip install 'soundsearch[dask]'"
# Seconds to reach the scheduler, and to wait for a first worker when it has none.
CONNECT_TIMEOUT = 10.0
WORKERS_TIMEOUT = 10.0
# A worker that finds a task's file missing, or of another size, marks the entry with this.
NOT_SEEN = "not seen by dask worker"

_SETUP: list[int] = []
_SETUP_LOCK = threading.Lock()
_THREAD = threading.local()


@dataclass
class Cluster:
    """A connected client and what the coordinator learnt about the workers when connecting."""

    client: object
    address: str
    # Worker address -> torch threads for its tasks (host cores over dask threads on that host).
    threads: dict[str, int] = field(default_factory=dict)


def _missing_dask() -> ClusterError:
    return ClusterError(f"--backend dask needs dask.distributed, which is not installed: {INSTALL}")


@contextmanager
def connect(address: str) -> Iterator[Cluster]:
    """A client of the scheduler at `address`, checked to have workers that run soundsearch.

    ClusterError when dask is not installed, the scheduler cannot be reached within
    CONNECT_TIMEOUT, it has no worker within WORKERS_TIMEOUT, or a worker cannot import
    soundsearch. Nothing is written anywhere before this returns.
    """
    try:
        import distributed
    except ImportError:
        raise _missing_dask() from None
    _check_address(address)
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach the dask scheduler at {address} ({_reason(exc)}): "
            "start one with `dask scheduler` and give its address to --scheduler"
        ) from None
    try:
        yield Cluster(client, address, _thread_plan(client, address))
    finally:
        client.close()


def _check_address(address: str) -> None:
    """ClusterError for an address that names no scheduler, before a Client is made of it: a
    Client failing in its constructor hangs the interpreter's exit for 20 s with a traceback."""
    from distributed.comm import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme = parse_address(address)[0]
        get_backend(scheme)
        if scheme != "inproc":  # an in-process cluster's address has no port
            get_address_host_port(address)
    except ValueError as exc:
        raise ClusterError(f"--scheduler {address!r} is not a dask scheduler address ({_reason(exc)}): give tcp://HOST:PORT") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def _thread_plan(client, address: str) -> dict[str, int]:
    """Torch threads per worker: each host's cores shared among the dask threads on it, as
    joblib gives each of n loky workers cpu_count // n. Also checks that there are workers
    and that they can import soundsearch (the probe is soundsearch code)."""
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
    except (TimeoutError, OSError):
        raise ClusterError(
            f"the dask scheduler at {address} has no workers: start `dask worker {address}` on each "
            "machine (with soundsearch installed and the library at the same path)"
        ) from None
    try:
        facts = client.run(_worker_facts)
    except Exception as exc:  # a worker without soundsearch fails to unpickle the probe
        raise ClusterError(
            f"a dask worker of {address} cannot run soundsearch ({_reason(exc)}): install the same "
            "soundsearch on every worker"
        ) from None
    per_host: dict[str, int] = {}
    for f in facts.values():
        per_host[f["host"]] = per_host.get(f["host"], 0) + f["nthreads"]
    return {addr: max(1, f["cpus"] // per_host[f["host"]]) for addr, f in facts.items()}


def _worker_facts(dask_worker=None) -> dict:
    """On a worker (client.run passes it): its host, cores and dask threads."""
    from joblib import cpu_count

    nthreads = getattr(getattr(dask_worker, "state", dask_worker), "nthreads", None) or 1
    return {"host": socket.gethostname(), "cpus": cpu_count(), "nthreads": int(nthreads)}


def _setup(threads: dict[str, int], coordinator: tuple[str, int]) -> str:
    """Once per worker thread: torch's thread count from the plan; returns the worker's address.

    Per thread, not per process: torch's OpenMP thread count is a setting of the calling thread,
    and a worker with --nthreads N runs tasks on N threads (loky's workers get theirs from
    OMP_NUM_THREADS, which every thread starts with; dask's nanny sets that to 1). Only once
    torch is imported (by the featurizer: logmel never does), as OMP_NUM_THREADS would. Skipped in
    the coordinator's own process (a LocalCluster with processes=False), whose torch settings
    are its own. A worker that joined after the plan was made shares the host's cores among its
    own threads.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
        address = worker.address
    except (ImportError, ValueError):
        return "?"
    if getattr(_THREAD, "threads", None) or (socket.gethostname(), os.getpid()) == coordinator:
        return address
    torch = sys.modules.get("torch")
    if torch is None:  # not imported by this featurizer (logmel): nothing to set, yet
        return address
    facts = _worker_facts(worker)
    n = threads.get(address) or max(1, facts["cpus"] // facts["nthreads"])
    torch.set_num_threads(n)
    _THREAD.threads = n
    with _SETUP_LOCK:
        _SETUP.append(n)  # what each thread was given, for tests
    return address


def _featurize_remote(
    path: str, size: int, mtime_ns: int, spec: dict, identity: str, cutting, threads: dict, coordinator: tuple
) -> FileEntry:
    """Worker side: `workers._featurize` after the per-thread setup, for a file this worker
    sees as the coordinator does; otherwise an entry marked NOT_SEEN for the coordinator."""
    from soundsearch.indexing.workers import _featurize, _worker_featurizer

    try:
        _worker_featurizer(spec, identity)  # first, so that a featurizer's torch is imported
    except FeaturizerError as exc:
        raise ClusterError(f"dask worker {_setup(threads, coordinator)} cannot build the featurizer: {exc}") from None
    address = _setup(threads, coordinator)
    try:
        seen = os.stat(path).st_size == size
    except OSError:
        seen = False
    if not seen:
        return FileEntry(path=Path(path), size=size, mtime_ns=mtime_ns, status=STATUS_FAILED, error=f"{NOT_SEEN} {address}")
    return _featurize(path, size, mtime_ns, spec, identity, cutting)


def featurized(cluster: Cluster, todo: list[tuple[str, int, int]], fz, cutting) -> Iterator[FileEntry]:
    """FileEntries of (path, size, mtime_ns) tasks, in task order, featurized on the cluster.

    A failure of the cluster itself (a worker lost, the scheduler gone, a worker that does not
    see the library) raises ClusterError, from the first next() on: nothing is sent before.
    """
    return _checked(lambda: _dispatch(cluster, todo, fz, cutting), todo, fz, cutting, cluster.address)


def _dispatch(cluster: Cluster, todo: list[tuple[str, int, int]], fz, cutting):
    from joblib import Parallel, delayed, parallel_config

    spec, identity = fz.spec(), fz.identity
    coordinator = (socket.gethostname(), os.getpid())
    with parallel_config(backend=_backend(cluster.client)):
        # Ordered results keep array rows in scan order, as a local run does.
        return Parallel(n_jobs=-1, return_as="generator", pre_dispatch="4*n_jobs")(
            delayed(_featurize_remote)(p, s, m, spec, identity, cutting, cluster.threads, coordinator) for p, s, m in todo
        )


def _backend(client):
    """joblib's dask backend, except that a cluster of one thread still gets the work.

    joblib runs a call whose backend reports one job sequentially in the calling process, and
    the dask backend reports the cluster's thread count: a one-thread cluster would have had
    every file featurized here, silently. Reporting at least 2 only deepens the queue of tasks
    sent ahead (pre_dispatch); the scheduler runs them as threads come free.
    """
    from joblib._dask import DaskDistributedBackend

    class Remote(DaskDistributedBackend):
        def effective_n_jobs(self, n_jobs):
            return max(2, super().effective_n_jobs(n_jobs))

    return Remote(client=client, wait_for_workers_timeout=WORKERS_TIMEOUT)


def _checked(start, todo, fz, cutting, address: str) -> Iterator[FileEntry]:
    """The results of `start()` in order, with the cluster's own failures as ClusterError and
    NOT_SEEN entries resolved: an error if this machine sees the file as scanned, else the file
    is featurized here (it changed since the scan)."""
    from concurrent.futures import CancelledError

    from soundsearch.indexing.batches import _close_quietly
    from soundsearch.indexing.workers import _featurize

    try:
        from distributed import KilledWorker
    except ImportError:  # pragma: no cover (connect needed it)
        raise _missing_dask() from None
    results = None
    try:
        results = start()
        for (p, s, m), entry in zip(todo, results):
            if entry.status == STATUS_FAILED and (entry.error or "").startswith(NOT_SEEN):
                entry = _seen_here(entry, p, s, m, fz, cutting, _featurize)
            yield entry
    except KilledWorker as exc:
        last = getattr(getattr(exc, "last_worker", None), "address", "?")
        tries = getattr(exc, "allowed_failures", 0) + 1
        raise ClusterError(
            f"{tries} dask workers of {address} died running the same files (the last: {last}); their logs "
            "say why (out of memory is the usual cause)"
        ) from None
    except (CancelledError, OSError, TimeoutError) as exc:  # CommClosedError is an OSError
        raise ClusterError(f"lost the dask cluster at {address} ({_reason(exc)})") from None
    finally:
        if results is not None:
            _close_quietly(results)  # stop joblib's generator when the caller stops early


def _seen_here(entry: FileEntry, p: str, s: int, m: int, fz, cutting, featurize) -> FileEntry:
    try:
        here = os.stat(p).st_size == s
    except OSError:
        here = False
    if here:
        worker = (entry.error or "")[len(NOT_SEEN):].strip()
        raise ClusterError(
            f"dask worker {worker} does not see {printable(p)} as this machine does: every worker "
            "must see the library at the same path (a shared filesystem mounted at the same place)"
        )
    # The file changed or went since the scan: what a local run would make of it now.
    return featurize(p, s, m, fz.spec(), fz.identity, cutting)
