"""`index --backend dask`: featurizing on a dask.distributed cluster, the store written here.

One LocalCluster for the module (one worker process, one thread, on 127.0.0.1), shut down by
the fixture's finalizer. Stores indexed through it must equal a local run's byte for byte; the
cluster's failures must be one error line, the store untouched or resumable. Skipped without
dask.distributed (`pip install 'soundsearch[dask]'`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import chirp, noise_bursts, tone, write_audio
from soundsearch.cli import app
from soundsearch.errors import ClusterError
from soundsearch.features import get_featurizer
from soundsearch.indexing import IndexInterrupted, index_paths
from soundsearch.indexing import cluster as cluster_mod
from soundsearch.store import STATUS_FAILED, FileEntry, Store

distributed = pytest.importorskip("distributed")

SR = 8000


def make_library(root: Path) -> Path:
    """Short files in several formats, one long enough to be cut into several items, and one
    that fails: what a store records about each must not depend on where it was featurized."""
    write_audio(root / "tone.wav", tone(440, 1.0, SR), SR)
    write_audio(root / "sub" / "noise.flac", noise_bursts(0.8, SR, seed=1), SR)
    write_audio(root / "sub" / "chirp.ogg", chirp(100, 3000, 1.2, SR), SR, format="OGG", subtype="VORBIS")
    write_audio(root / "long.wav", chirp(200, 2000, 23.0, SR) + noise_bursts(23.0, SR, seed=2, amp=0.05), SR)
    write_audio(root / "silent.wav", np.zeros(4000, np.float32), SR)
    (root / "garbage.wav").write_bytes(os.urandom(2000))
    return root


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def contents(store_dir: Path) -> dict:
    """Everything a store holds about its files and items, features as raw bytes."""
    with Store.open(store_dir) as st:
        assert st.verify() == []
        return {
            "items": [it._key() for it in st.items()],
            "files": {p: (size, mtime, status, error) for p, (size, mtime, status, error) in st.file_states().items()},
            "failures": st.failures(),
            "features": np.ascontiguousarray(st.features()).tobytes(),
            "shape": st.features().shape,
            "featurizer": st.featurizer_identity,
        }


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "lock"}


@pytest.fixture(scope="module")
def scheduler():
    """A one-worker cluster in another process (features computed there, not here)."""
    # dashboard_address=None still serves the scheduler's HTTP routes on 8787; ":0" takes any
    # free port, so test runs side by side do not compete for it.
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close(timeout=20)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return make_library(tmp_path_factory.mktemp("dask") / "lib")


def _aisfx_available() -> bool:
    try:
        get_featurizer("aisfx")
    except Exception:
        return False
    return True


@pytest.mark.parametrize("featurizer", ["logmel", pytest.param("aisfx", marks=pytest.mark.slow)])
def test_dask_store_is_byte_identical_to_a_local_one(featurizer, scheduler, library, tmp_path):
    if featurizer == "aisfx" and not _aisfx_available():
        pytest.skip("aisfx weights not available (pip install --no-deps aisfx)")
    import torch
    from joblib import cpu_count

    local, remote = tmp_path / "local", tmp_path / "remote"
    args = ("index", str(library), "--featurizer", featurizer, "--item-seconds", "5", "--json")
    # The same threads per featurizing task as the worker's (the host's cores over its one dask
    # thread): aisfx's last bits can depend on torch's thread count (--jobs 1 and --jobs 2
    # differ by 5e-7 on some files), and torch's default here need not be cpu_count().
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_count())
    try:
        done = run(*args, "--store", str(local), "--jobs", "1")
    finally:
        torch.set_num_threads(before)
    assert done.exit_code == 0, done.output
    done = run(*args, "--store", str(remote), "--backend", "dask", "--scheduler", scheduler)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["added"] == 5 and len(report["failed"]) == 1 and len(report["warnings"]) == 1
    a, b = contents(local), contents(remote)
    assert a["shape"][0] > 8  # tone, noise, chirp, silent, and the 23 s file in several items
    assert a == b
    # The features were made in the worker process (even on a one-thread cluster, which joblib
    # alone would run here), whose thread set torch's threads as a loky worker's would be: the
    # host's cores over the dask threads on it (one here); logmel never imports torch.
    with distributed.Client(scheduler, set_as_default=False) as client:
        [built] = client.run(eval, "list(__import__('soundsearch.indexing.workers', fromlist=['x'])._WORKER_FEATURIZERS)").values()
        [given] = client.run(eval, "__import__('soundsearch.indexing.cluster', fromlist=['x'])._SETUP").values()
    assert a["featurizer"] in built
    if featurizer == "aisfx":
        assert given and set(given) == {cpu_count()}
    # An unchanged library is only stat'ed, on the cluster as here.
    again = json.loads(run(*args, "--store", str(remote), "--backend", "dask", "--scheduler", scheduler).stdout)
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 6)


def test_an_interrupted_dask_run_resumes(scheduler, library, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    index_paths(local, [library], featurizer_name="logmel", jobs=1)

    def stop_after_two(p):
        if p.phase == "featurize" and p.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(IndexInterrupted) as stopped:
        index_paths(remote, [library], featurizer_name="logmel", scheduler=scheduler, batch_size=1, on_progress=stop_after_two)
    assert stopped.value.kept == 2
    with Store.open(remote) as st:
        assert len(st.file_states()) == 2
    rep = index_paths(remote, [library], scheduler=scheduler)
    assert (rep.added, rep.unchanged) == (4, 2)
    assert contents(local) == contents(remote)


def test_thread_plan_shares_each_hosts_cores_among_its_dask_threads():
    class FakeClient:
        def wait_for_workers(self, n, timeout):
            pass

        def run(self, fn):
            return {
                "tcp://a:1": {"host": "a", "cpus": 8, "nthreads": 1},
                "tcp://a:2": {"host": "a", "cpus": 8, "nthreads": 3},
                "tcp://b:1": {"host": "b", "cpus": 4, "nthreads": 1},
                "tcp://c:1": {"host": "c", "cpus": 2, "nthreads": 4},
            }

    plan = cluster_mod._thread_plan(FakeClient(), "tcp://s:1")
    assert plan == {"tcp://a:1": 2, "tcp://a:2": 2, "tcp://b:1": 4, "tcp://c:1": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_and_leaves_the_store_alone(library, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_mod, "CONNECT_TIMEOUT", 0.5)
    store = tmp_path / "store"
    assert run("index", str(library / "tone.wav"), "--store", str(store), "-f", "logmel", "--jobs", "1").exit_code == 0
    before = tree(store)
    address = f"tcp://127.0.0.1:{_free_port()}"
    for target in (store, tmp_path / "new-store"):
        done = run("index", str(library), "--store", str(target), "--backend", "dask", "--scheduler", address)
        assert done.exit_code == 1
        assert done.stderr.startswith(f"error: cannot reach the dask scheduler at {address}")
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.output
    assert tree(store) == before
    assert not (tmp_path / "new-store").exists()


def test_malformed_scheduler_address(library, tmp_path):
    for address in ("nonsense://x", "tcp://127.0.0.1:notaport", "127.0.0.1"):
        done = run("index", str(library), "--store", str(tmp_path / "s"), "--backend", "dask", "--scheduler", address)
        assert done.exit_code == 1
        assert "is not a dask scheduler address" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_scheduler_without_workers(library, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_mod, "WORKERS_TIMEOUT", 0.5)
    with distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0") as empty:
        done = run("index", str(library), "--store", str(tmp_path / "s"), "--backend", "dask", "--scheduler", empty.scheduler_address)
    assert done.exit_code == 1
    assert "has no workers: start `dask worker" in done.stderr
    assert not (tmp_path / "s").exists()


def test_without_dask_installed_the_error_names_the_extra(library, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    done = run("index", str(library), "--store", str(tmp_path / "s"), "--backend", "dask", "--scheduler", "tcp://127.0.0.1:8786")
    assert done.exit_code == 1
    assert done.stderr.strip() == "error: --backend dask needs dask.distributed, which is not installed: pip install 'soundsearch[dask]'"
    assert not (tmp_path / "s").exists()


def test_backend_and_scheduler_go_together(library, tmp_path):
    store = str(tmp_path / "s")
    done = run("index", str(library), "--store", store, "--backend", "dask")
    assert done.exit_code == 2 and "--backend dask needs --scheduler" in done.output
    done = run("index", str(library), "--store", store, "--scheduler", "tcp://127.0.0.1:8786")
    assert done.exit_code == 2 and "--scheduler is for --backend dask" in done.output
    done = run("index", str(library), "--store", store, "--backend", "dask", "--scheduler", "tcp://127.0.0.1:8786", "--jobs", "2")
    assert done.exit_code == 1 and "--jobs is for indexing on this machine" in done.stderr
    assert not (tmp_path / "s").exists()


def test_a_worker_that_does_not_see_the_library_stops_the_run(library, tmp_path):
    """A worker's NOT_SEEN entry is an error when this machine sees the file as scanned, and
    the file is featurized here when it has changed since the scan (as a local run would)."""
    fz = get_featurizer("logmel")
    cutting = None
    path = library / "tone.wav"
    size = path.stat().st_size
    marked = FileEntry(path=path, size=size, mtime_ns=0, status=STATUS_FAILED, error=f"{cluster_mod.NOT_SEEN} tcp://w:1")
    with pytest.raises(ClusterError, match="does not see .*tone.wav as this machine does: every worker must see the library at the same path"):
        list(cluster_mod._checked(lambda: iter([marked]), [(str(path), size, 0)], fz, cutting, "tcp://s:1"))
    gone = str(tmp_path / "gone.wav")
    marked = FileEntry(path=Path(gone), size=10, mtime_ns=0, status=STATUS_FAILED, error=f"{cluster_mod.NOT_SEEN} tcp://w:1")
    [entry] = cluster_mod._checked(lambda: iter([marked]), [(gone, 10, 0)], fz, cutting, "tcp://s:1")
    assert entry.status == STATUS_FAILED and not entry.error.startswith(cluster_mod.NOT_SEEN)


def test_a_worker_that_cannot_build_the_featurizer_is_a_cluster_error(library):
    path = library / "tone.wav"
    with pytest.raises(ClusterError, match="cannot build the featurizer: .*no-such-featurizer"):
        cluster_mod._featurize_remote(str(path), path.stat().st_size, 0, {"name": "no-such-featurizer"}, "x", None, {}, ("h", 0))


def test_workers_dying_and_a_lost_scheduler_are_cluster_errors(library):
    from types import SimpleNamespace

    def failing(exc):
        yield FileEntry(path=library / "tone.wav", size=1, mtime_ns=0)
        raise exc

    todo = [(str(library / "tone.wav"), 1, 0), (str(library / "long.wav"), 1, 0)]
    killed = distributed.KilledWorker("batch-key", SimpleNamespace(address="tcp://w:1"), 3)
    lost = distributed.comm.core.CommClosedError("in <TCP (closed)>: Stream is closed")
    for exc, message in ((killed, "4 dask workers of tcp://s:1 died running the same files (the last: tcp://w:1)"),
                         (lost, "lost the dask cluster at tcp://s:1 (in <TCP (closed)>: Stream is closed)")):
        got = cluster_mod._checked(lambda: failing(exc), todo, None, None, "tcp://s:1")
        assert next(got).path.name == "tone.wav"
        with pytest.raises(ClusterError, match=re.escape(message)):
            next(got)


def test_a_cluster_lost_mid_run_keeps_what_came_back(library, tmp_path, monkeypatch):
    """Workers lost after two files: those two are committed, one error line, the rerun resumes."""
    from soundsearch.indexing import workers

    @contextmanager
    def fake_connect(address):
        yield cluster_mod.Cluster(client=None, address=address)

    def two_then_lost(cluster, todo, fz, cutting):
        local = workers.featurized(todo, fz, cutting, 1)
        yield next(local)
        yield next(local)
        raise ClusterError(f"lost the dask cluster at {cluster.address} (boom)")

    monkeypatch.setattr(cluster_mod, "connect", fake_connect)
    monkeypatch.setattr(cluster_mod, "featurized", two_then_lost)
    store = tmp_path / "s"
    done = run("index", str(library), "--store", str(store), "-f", "logmel", "--backend", "dask", "--scheduler", "tcp://x:1")
    assert done.exit_code == 1
    # The progress bar as it stood, then one line.
    assert done.stderr.strip().splitlines()[-1] == "error: lost the dask cluster at tcp://x:1 (boom); 2 files kept, run index again to resume"
    assert "Traceback" not in done.output
    with Store.open(store) as st:
        assert len(st.file_states()) == 2
    rep = json.loads(run("index", str(library), "--store", str(store), "--jobs", "1", "--json").stdout)
    assert (rep["added"], rep["unchanged"]) == (4, 2)
