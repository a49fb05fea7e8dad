"""The fault harness: kill `index`, `query` and `train` at exact moments inside their commits.

test_crash.py kills `index` at random times, which almost never lands inside the microseconds
between two steps of a commit. Here the real CLI runs in a subprocess with SOUNDSEARCH_FAULT set
(soundsearch/faults.py), so it exits with status 137, running no cleanup, exactly at a named point:
rows written but not fsync'ed, fsync'ed but not committed, inside the open catalog transaction,
just after COMMIT, inside compaction before and after the catalog switches to the new array, during
recovery itself, between writing a model or a search cache and renaming it into place.

After every kill the store must open and be consistent, holding exactly the files committed
before the kill with the features a clean run computes, byte for byte. Then an `index` without
the fault must leave the store byte for byte what a run that was never killed leaves (array file,
catalog rows) and `query --json` must answer exactly as on that clean store. Occurrence counts
(which batch is killed) are drawn from a seeded generator: SOUNDSEARCH_FAULT_SEED picks another
plan; the seed is in every test id.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import REPO, chirp, noise_bursts, tone, write_audio
from soundsearch import faults, paths
from soundsearch.cli import app
from soundsearch.indexing import index_paths
from soundsearch.store import ARRAYS, CATALOG, Store

pytestmark = pytest.mark.slow  # about 25 processes killed and as many clean runs: ~30 s on 2 cores

SEED = int(os.environ.get("SOUNDSEARCH_FAULT_SEED", "12"))
SR = 8000
BATCH = 4
N_FINAL = 24  # 23 recordings and one broken file: 6 batches of 4 on a fresh index
N_BATCHES = N_FINAL // BATCH
TIMEOUT = 120
# The fast log-Mel featurizer: crash safety is the store's business, whatever makes the features.
INDEX_ARGS = ["--jobs", "1", "--batch-size", str(BATCH), "--quiet", "--featurizer", "logmel"]

_rng = random.Random(SEED)


def _n(hi: int, lo: int = 1) -> int:
    return _rng.randint(lo, hi)


# Each case: the kills applied one after the other to one store (each run killed at the n-th
# passage of its point), then a clean run. A later kill in a chain hits the recovery of what the
# earlier one left.
FRESH_CASES = [
    [("array.new_written", 1)],  # the store's creation, before its empty array is in place
    [("array.rows_written", _n(N_BATCHES))],
    [("array.rows_synced", _n(N_BATCHES)), ("recover.cleaned", 1)],
    [("write.before_commit", _n(3)), ("write.before_commit", _n(3))],
    [("write.committed", _n(3)), ("array.rows_synced", _n(3))],
    [("write.before_commit", N_BATCHES)],  # the last batch
]
# On a store of an older state of the library: files removed and changed, so the run removes,
# appends and compacts.
COMPACT_CASES = [
    [("compact.written", 1), ("compact.switched", 1)],
    [("array.new_written", 1), ("compact.before_commit", 1)],
    [("compact.before_commit", 1), ("recover.cleaned", 1)],
    [("remove.before_commit", 1), ("write.before_commit", 2)],
    [("write.committed", 1), ("compact.switched", 1)],
]
CACHE_CASES = ["cache.written", "cache.published"]
TRAIN_KILLS = 2  # a new model file, then over an existing one
KILLS = sum(map(len, FRESH_CASES + COMPACT_CASES)) + len(CACHE_CASES) + TRAIN_KILLS


def case_id(case: list[tuple[str, int]]) -> str:
    return f"seed{SEED}-" + "+".join(f"{p}:{n}" for p, n in case)


def test_the_plan_kills_at_least_20_times_at_every_point():
    assert KILLS >= 20
    planned = {p for case in FRESH_CASES + COMPACT_CASES for p, _ in case} | set(CACHE_CASES)
    planned |= {"checkpoint.written"}
    placed = set()
    for path in (REPO / "soundsearch").rglob("*.py"):
        text = path.read_text()
        placed |= {line.split('faults.point("')[1].split('"')[0] for line in text.splitlines() if 'faults.point("' in line}
    assert placed == planned  # every point in the library is exercised, and only real ones are
    assert faults._TARGET is None  # this process itself is never armed


# ---- running the CLI


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: this checkout's soundsearch, never an installed one."""
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def killed(args: list[str], point: str, n: int, **env: str) -> None:
    """Run `soundsearch ARGS` armed to die at the n-th passage of `point`; it must die there."""
    res = subprocess.run(
        [sys.executable, "-m", "soundsearch", *args], capture_output=True, text=True, timeout=TIMEOUT,
        env=cli_env(**{faults.ENV: f"{point}:{n}"}, **env),
    )
    assert res.returncode == faults.EXIT_STATUS, f"{point}:{n} not reached (rc {res.returncode}): {res.stderr[-2000:]}"


def invoke(args: list[str], **env: str):
    res = CliRunner().invoke(app, args, env=env or None)
    assert res.exit_code == 0, res.output
    return res


def query_args(query: Path, store: Path, world: dict) -> list[str]:
    return ["query", str(query), "--store", str(store), "--model", str(world["model"]), "--json", "--top", "50"]


def query_docs(store: Path, world: dict, prepared: bool | None = None) -> list[dict]:
    """`query --json` for each query file, less the store's own path. With `prepared`, the
    first query must find its search cache ready (True) or build it (False)."""
    docs = []
    for q in world["queries"]:
        res = invoke(query_args(q, store, world))
        if prepared is not None:
            assert ("preparing the search cache" not in res.stderr) is prepared, res.stderr
            prepared = None
        doc = json.loads(res.stdout)
        assert doc["results"] and doc.pop("store") == str(store)
        docs.append(doc)
    return docs


def index_clean(store: Path, lib: Path):
    return index_paths(store, [lib], "logmel", jobs=1, batch_size=BATCH)


# ---- reading a store from its files


def stored(store: Path) -> dict[str, bytes]:
    """Every committed file's item features as bytes, by path."""
    with Store.open(store) as st:
        assert st.verify() == []
        feats = st.features()
        out: dict[str, list[bytes]] = {}
        for it in st.items():
            out.setdefault(str(it.path), []).append(np.ascontiguousarray(feats[it.row], "<f4").tobytes())
        return {k: b"".join(v) for k, v in out.items()}


def catalog_rows(store: Path) -> dict:
    db = sqlite3.connect(f"file:{store / CATALOG}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('n_slots', 'array_file', 'array_seq')"))
        files = db.execute("SELECT path, size, mtime_ns, duration, status, error, warnings FROM files ORDER BY path").fetchall()
        items = db.execute(
            "SELECT f.path, i.start_s, i.end_s, i.array_row, i.crc FROM items i JOIN files f ON f.id = i.file_id "
            "ORDER BY i.array_row"
        ).fetchall()
    finally:
        db.close()
    return {"meta": meta, "files": files, "items": items}


def n_files(store: Path) -> int:
    if not (store / CATALOG).exists():
        return 0
    db = sqlite3.connect(f"file:{store / CATALOG}?mode=ro", uri=True)
    try:
        if not db.execute("SELECT count(*) FROM sqlite_master WHERE name='files'").fetchone()[0]:
            return 0  # the creating transaction never committed
        return db.execute("SELECT count(*) FROM files").fetchone()[0]
    finally:
        db.close()


def assert_killed_store_sound(store: Path, expect_files: int, references: list[dict[str, bytes]]) -> None:
    """What a kill left: exactly the files committed before it, each with a clean run's features."""
    assert n_files(store) == expect_files
    if not expect_files:
        return
    got = stored(store)
    for path, feats in got.items():
        assert any(ref.get(path) == feats for ref in references), f"{path}: features differ from a clean run's"


def assert_same_as(store: Path, ref: Path) -> None:
    """Byte for byte what a run that was never killed leaves: array file, catalog rows, no leftovers."""
    got, want = catalog_rows(store), catalog_rows(ref)
    assert got == want
    name = want["meta"]["array_file"]
    assert sorted(os.listdir(store / ARRAYS)) == [name]
    assert (store / ARRAYS / name).read_bytes() == (ref / ARRAYS / name).read_bytes()
    assert stored(store) == stored(ref)
    with Store.open(store) as st:
        assert st.check_checksums() == ({}, 0)


def leftover_temps(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp")) if folder.is_dir() else []


# ---- the world: a library in two states, clean stores of both, a tiny model


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    import torch

    from soundsearch.model.checkpoint import save_model
    from soundsearch.model.config import ModelConfig
    from soundsearch.model.network import PresenceNet
    from soundsearch.taxonomy import Taxonomy

    root = tmp_path_factory.mktemp("faults")
    lib = root / "lib"
    rng = np.random.default_rng(SEED)

    def sound(i: int, seconds: float) -> np.ndarray:
        if i % 3 == 0:
            return noise_bursts(seconds, SR, seed=i, amp=0.2)
        if i % 3 == 1:
            return tone(float(rng.uniform(100, 3000)), seconds, SR)
        return chirp(100, float(rng.uniform(500, 3500)), seconds, SR)

    names = [lib / f"d{i % 3}" / f"f{i:02d}.wav" for i in range(N_FINAL - 1)]
    changed = names[1::4]  # rewritten (another length) after the old store is made
    extra = [lib / "gone" / f"g{i}.wav" for i in range(5)]  # deleted after the old store is made
    for i, p in enumerate(names + extra):
        write_audio(p, sound(i, float(rng.uniform(0.1, 0.3))), SR)
    (lib / "d0" / "broken.wav").write_bytes(b"RIFF" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))

    old = root / "old-ref"
    index_clean(old, lib)
    old_features = stored(old)
    for i, p in enumerate(changed):
        write_audio(p, sound(100 + i, 0.35 + 0.01 * i), SR)
    for p in extra:
        p.unlink()

    fresh = root / "fresh-ref"
    report = index_clean(fresh, lib)
    assert report.added == N_FINAL - 1 and len(report.failed) == 1
    with Store.open(fresh) as st:
        feats = np.asarray(st.features())
        spec, identity = st.featurizer_spec, st.featurizer_identity
    torch.manual_seed(SEED)
    config = ModelConfig(steps=feats.shape[1], dim=feats.shape[2], n_categories=len(Taxonomy.default()))
    model = root / "tiny.safetensors"
    save_model(model, PresenceNet(config).eval(), config, Taxonomy.default(), spec, identity,
               feats.mean((0, 1)), feats.std((0, 1)) + 1e-3)
    queries = [names[0], names[2]]
    outside = root / "outside.wav"
    write_audio(outside, tone(777.0, 0.25, SR), SR)
    world = {"root": root, "lib": lib, "old": old, "fresh": fresh, "model": model, "queries": queries + [outside]}

    # The old store as a user left it: queried, so its cache holds a search side of that state.
    query_docs(old, world)
    incremental = root / "incremental-ref"
    shutil.copytree(old, incremental)
    report = index_clean(incremental, lib)
    assert report.compacted and len(report.removed) == len(extra) and report.updated == len(changed)
    world.update(
        incremental=incremental,
        features={"old": old_features, "fresh": stored(fresh)},
        docs={"fresh": query_docs(fresh, world), "incremental": query_docs(incremental, world)},
        n_old=n_files(old),
    )
    assert world["n_old"] == N_FINAL + len(extra)
    assert set(world["features"]["fresh"]) == {str(p) for p in names}
    return world


def expected_files(before: int, point: str, n: int) -> int:
    """Files committed when a fresh-index run that started with `before` dies at point:n."""
    if point == "write.committed":
        return before + n * BATCH
    if point in ("array.rows_written", "array.rows_synced", "write.before_commit"):
        return before + (n - 1) * BATCH
    return before  # creation, recovery: before any batch


@pytest.mark.parametrize("case", FRESH_CASES, ids=case_id)
def test_kill_index_mid_commit(world, tmp_path, case):
    store = tmp_path / "store"
    args = ["index", str(world["lib"]), "--store", str(store), *INDEX_ARGS]
    files = 0
    for point, n in case:
        killed(args, point, n)
        files = expected_files(files, point, n)
        assert_killed_store_sound(store, files, [world["features"]["fresh"]])
    report = index_clean(store, world["lib"])
    assert report.added + len(report.failed) == N_FINAL - files and report.unchanged == files
    assert_same_as(store, world["fresh"])
    assert query_docs(store, world) == world["docs"]["fresh"]


@pytest.mark.parametrize("case", COMPACT_CASES, ids=case_id)
def test_kill_index_mid_compaction(world, tmp_path, case):
    store = tmp_path / "store"
    shutil.copytree(world["old"], store)
    args = ["index", str(world["lib"]), "--store", str(store), *INDEX_ARGS]
    both = [world["features"]["fresh"], world["features"]["old"]]
    for point, n in case:
        killed(args, point, n)
        assert_killed_store_sound(store, world["n_old"] if point == "remove.before_commit" else N_FINAL, both)
        meta = catalog_rows(store)["meta"]
        if point.startswith("compact."):
            # Killed inside compaction: the catalog names the old array until the switch commits.
            assert meta["array_file"] == ("features-2.npy" if point == "compact.switched" else "features-1.npy")
            # Either way a reader sees the whole final library, as on a store never killed.
            assert stored(store) == world["features"]["fresh"]
            assert query_docs(store, world) == world["docs"]["incremental"]
    index_clean(store, world["lib"])
    assert_same_as(store, world["incremental"])
    assert query_docs(store, world) == world["docs"]["incremental"]


def caches(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store / "cache").glob("search-*.npy"))}


def test_kill_query_while_it_writes_the_search_cache(world, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(world["fresh"], store)
    shutil.rmtree(store / "cache")
    (want,) = caches(world["fresh"]).items()
    killed(query_args(world["queries"][0], store, world), "cache.written", 1)
    # Built in full, but only under a temporary name: nothing a search would load.
    assert caches(store) == {} and len(leftover_temps(store / "cache")) == 1
    assert query_docs(store, world, prepared=False) == world["docs"]["fresh"]
    assert caches(store) == dict([want])  # rebuilt, byte for byte a clean run's
    assert leftover_temps(store / "cache") == []  # the dead build's temporary file went with it


def test_kill_query_between_publishing_the_cache_and_removing_stale_ones(world, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(world["old"], store)
    (stale,) = caches(store)  # the old state's cache, stale once the store changes
    index_clean(store, world["lib"])
    (want,) = caches(world["incremental"]).items()
    killed(query_args(world["queries"][0], store, world), "cache.published", 1)
    assert caches(store) == {stale: caches(world["old"])[stale], want[0]: want[1]}
    # The next search loads the new cache (it does not rebuild it) and answers as a clean store.
    assert query_docs(store, world, prepared=True) == world["docs"]["incremental"]
    assert leftover_temps(store / "cache") == []


def test_kill_train_while_it_saves_the_model(tmp_path):
    from safetensors.numpy import load_file
    from test_train_cli import synth_dataset

    from soundsearch.model.checkpoint import load_model

    labels = synth_dataset(tmp_path / "data", n=12, seconds=0.4)
    env = {"SOUNDSEARCH_DATA": str(tmp_path / "datasets"), "SOUNDSEARCH_MODELS": str(tmp_path / "models"),
           "SOUNDSEARCH_STORE": str(tmp_path / "no-store")}
    args = ["train", "--dataset", str(labels), "--epochs", "1", "--no-refit", "--seed", str(SEED), "--jobs", "1",
            "--tower", "16", "--head", "16", "--quiet", "--out"]
    clean = tmp_path / "clean.safetensors"
    invoke(args + [str(clean)], **env)
    weights = {k: v.tobytes() for k, v in load_file(clean).items()}
    models = tmp_path / "models"
    target = models / "kept.safetensors"

    # A new model: killed after writing the temporary file, before the rename.
    killed(args + [str(target)], "checkpoint.written", 1, **env)
    assert not target.exists()
    (partial,) = leftover_temps(models)
    assert partial.startswith(".kept.safetensors.")  # hidden, and no model name: `models` never lists it
    assert all(Path(m["path"]).parent != models for m in json.loads(invoke(["models", "--json"], **env).stdout))
    invoke(args + [str(target)], **env)
    assert {k: v.tobytes() for k, v in load_file(target).items()} == weights  # the rerun trains the same model
    assert leftover_temps(models) == []  # and cleared the dead run's temporary file

    # Over an existing model: killed at the same moment, the old file stays whole.
    before = target.read_bytes()
    killed(args + [str(target)], "checkpoint.written", 1, **env)
    assert target.read_bytes() == before
    assert load_model(target).taxonomy.categories == ("tone", "noise", "chirp")


def test_only_temporary_files_that_nobody_holds_are_cleared(tmp_path):
    target = tmp_path / "m.safetensors"
    live = paths.TempFile(target, ".save.tmp")  # being written, by this process or another
    dead = paths.TempFile(target, ".save.tmp")
    dead.close()  # what a writer killed before its rename leaves: the file, unlocked
    rewrite = tmp_path / ".m.safetensors.abcdefgh.tmp"  # set_ranking's, another pattern
    rewrite.write_bytes(b"x")
    assert paths.remove_abandoned(tmp_path, ".m.safetensors.*.save.tmp") == 1
    assert Path(live.name).exists() and not Path(dead.name).exists() and rewrite.exists()
    live.publish(target)
    assert target.exists() and sorted(os.listdir(tmp_path)) == [rewrite.name, target.name]
