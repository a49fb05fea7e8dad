"""Near-duplicates of a query rank right after its own items: altered copies on the real corpus.

Copies of ~20 corpus recordings (FLAC and OGG re-encodes, 5% trimmed at the start, -6 dB,
resampled 3% faster and 3% slower, white noise at 40 dB SNR) sit in a store with ~100 other
corpus recordings; each original queries the store, once held in it and once not. Every copy
must rank before every other recording, and no other recording may be flagged a duplicate.
ranking.DUPLICATE_COSINE was chosen on this set; search.fingerprint.DUPLICATE_FINGERPRINT was
chosen on another (bench/duplicates.py), so the figures here are a report, not a fit.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import CORPUS

from soundsearch.features import featurize_file, get_featurizer
from soundsearch.search.fingerprint import DUPLICATE_FINGERPRINT
from soundsearch.search.ranking import DUPLICATE_COSINE
from soundsearch.store import FileEntry, Store

N_ORIGINALS = 20
N_OTHERS = 100
ALTERATIONS = ("flac", "ogg", "trim5", "gain-6dB", "faster3", "slower3", "noise40dB")


def _alter(x: np.ndarray, sr: int, how: str, rng: np.random.Generator) -> tuple[np.ndarray, int, str, str | None]:
    """(signal, sample rate, container format, subtype) of one altered copy."""
    if how == "flac":
        return x, sr, "FLAC", None
    if how == "ogg":
        return x, sr, "OGG", "VORBIS"
    if how == "trim5":
        return x[int(round(0.05 * x.size)) :], sr, "WAV", "FLOAT"
    if how == "gain-6dB":
        return x * np.float32(10 ** (-6 / 20)), sr, "WAV", "FLOAT"
    if how in ("faster3", "slower3"):
        # Resampled, then played at the original rate: 3% faster (shorter, higher) or slower.
        factor = 1.03 if how == "faster3" else 1 / 1.03
        return soxr.resample(x, sr, sr / factor).astype(np.float32), sr, "WAV", "FLOAT"
    if how == "noise40dB":
        power = float(np.mean(x.astype(np.float64) ** 2))
        noise = rng.standard_normal(x.size) * np.sqrt(power / 10**4)
        return (x + noise).astype(np.float32), sr, "WAV", "FLOAT"
    raise ValueError(how)


def _pick(corpus: Path, n_originals: int = N_ORIGINALS, n_others: int = N_OTHERS, seed: int = 7,
          exclude: frozenset[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """Originals and other recordings from the manifest, leaving out the files in `exclude`
    (bench/duplicates.py picks its validation set disjoint from this test's)."""
    with open(corpus / "manifest.csv", newline="") as fh:
        rows = [r for r in sorted(csv.DictReader(fh), key=lambda r: r["file"]) if r["file"] not in exclude]
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    # Originals spread over the categories, in turn; the others are the next recordings.
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    originals: list[dict] = []
    while len(originals) < n_originals:
        for cat in sorted(by_cat):
            if by_cat[cat] and len(originals) < n_originals:
                originals.append(by_cat[cat].pop(0))
    chosen = {r["file"] for r in originals}
    others = [r for r in rows if r["file"] not in chosen][:n_others]
    return originals, others


def _entry(path: Path, ff) -> FileEntry:
    return FileEntry(path=path.absolute(), size=1, mtime_ns=0, duration=ff.duration, samplerate=ff.info.samplerate,
                     channels=1, segments=list(ff.segments), features=ff.features)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    if not (CORPUS / "manifest.csv").is_file():
        pytest.skip(f"real corpus not found at {CORPUS}")
    lib = build_library(CORPUS, tmp_path_factory.mktemp("dups"))
    yield lib
    for st in lib["stores"].values():
        st.close()


def build_library(corpus: Path, root: Path, picked=None, alterations=ALTERATIONS, alter=_alter, seed: int = 0) -> dict:
    """Stores of the originals, their altered copies and the others, with the originals held
    and not; `picked` (originals, others) defaults to _pick's."""
    fz = get_featurizer()  # the default aisfx, as the threshold was chosen on
    originals, others = _pick(corpus) if picked is None else picked
    rng = np.random.default_rng(seed)
    entries: dict[str, FileEntry] = {}
    copies: dict[str, list[str]] = {}  # original path -> its copies' paths
    for r in originals:
        src = corpus / r["file"]
        x, sr = sf.read(str(src), dtype="float32", always_2d=True)
        x = x.mean(1)
        entries[str(src.absolute())] = _entry(src, featurize_file(src, fz))
        copies[str(src.absolute())] = []
        for how in alterations:
            y, ysr, fmt, subtype = alter(x, sr, how, rng)
            dst = root / "copies" / f"{src.stem}.{how}.{fmt.lower()}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(dst), y, ysr, format=fmt, subtype=subtype)
            entries[str(dst.absolute())] = _entry(dst, featurize_file(dst, fz))
            copies[str(src.absolute())].append(str(dst.absolute()))
    for r in others:
        src = corpus / r["file"]
        entries[str(src.absolute())] = _entry(src, featurize_file(src, fz))
    stores = {}
    for held in (True, False):
        # The entries are cut by featurize_file's default (consecutive windows): the store says so.
        st = Store.open(root / f"store-{'with' if held else 'without'}", create=True, featurizer=fz, item_hop=10.0, event_items=0)
        with st.writer() as w:
            w.write_files([e for p, e in entries.items() if held or p not in copies])
        stores[held] = st
    return {"root": root, "stores": stores, "copies": copies, "fz": fz, "corpus": corpus}


def _trials(library, model, mode=None):
    """Per query (original x held in the store or not): whether every copy ranks before every
    other recording, and the other recordings flagged as duplicates."""
    from soundsearch.search.engine import SearchEngine

    out = []
    for held, st in library["stores"].items():
        engine = SearchEngine(st, model, persist=False)
        n_items = engine.n_items
        for original, its_copies in library["copies"].items():
            res = engine.search(Path(original), k=n_items, mode=mode)
            assert res.query_in_store is held
            paths = [str(r.item.path) for r in res.results if not r.is_query]
            is_copy = np.array([p in its_copies for p in paths])
            last_copy = np.flatnonzero(is_copy).max()
            first_other = np.flatnonzero(~is_copy).min()
            flagged_others = [r for r in res.results if r.duplicate and str(r.item.path) not in its_copies]
            copy_items = [r for r in res.results if str(r.item.path) in its_copies]
            copies_flagged = sum(r.duplicate for r in copy_items)
            out.append((held, original, bool(last_copy < first_other), flagged_others, copies_flagged, res, len(copy_items)))
    return out


def test_altered_copies_rank_right_after_the_query(library, one_torch_thread):
    from soundsearch.model.checkpoint import load_model
    from soundsearch.model.registry import resolve_model

    model = load_model(resolve_model(None))
    acoustic = _trials(library, model, mode="acoustic")
    default = _trials(library, model)  # the model's recorded ranking (blend for the default)
    # Measured (aisfx features; fingerprints confirm the candidates, DUPLICATE_FINGERPRINT 0.90
    # chosen on bench/duplicates.py's other copies; 20 originals x held or not = 40 trials, 350
    # copy items): every copy before every other recording in 38/40 trials, by acoustic and by
    # the default blend; 332/350 copies flagged. Before fingerprints: 36/40 and 292/350. The two
    # misses are one original whose library holds an edit of the same recording (the same truck
    # with and without a horn, fingerprint 0.99): it is flagged, and ranks among the copies.
    for trials, least in ((acoustic, 38), (default, 38)):
        assert sum(t[2] for t in trials) >= least, [(Path(t[1]).name, t[0]) for t in trials if not t[2]]
    assert sum(t[4] for t in acoustic) >= 332
    # The false-positive side: other recordings flagged as duplicates. Measured: only that edit
    # (2 of ~12,000 (query, other) pairs); by acoustic cosine alone 8 (related takes of one source).
    false = [(Path(t[1]).name, t[5].results[0].item.path.name, round(r.acoustic, 3)) for t in acoustic for r in t[3]]
    pairs = sum(len(t[5].results) - 1 - t[6] for t in acoustic)
    assert len(false) <= 2 and len(false) / pairs < 0.001, false


def test_cli_json_marks_duplicates(library, monkeypatch):
    import json

    from typer.testing import CliRunner

    from soundsearch.cli import app

    original = next(iter(library["copies"]))
    st = library["stores"][True]
    result = CliRunner().invoke(app, ["query", original, "--store", str(st.path), "--mode", "acoustic", "-k", "10", "--json", "--include-self"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mode"] == "acoustic" and doc["weight"] is None
    rows = doc["results"]
    assert rows[0]["is_query"] and not rows[0]["duplicate"]
    flagged = [r for r in rows if r["duplicate"]]
    assert flagged and all(r["path"] in library["copies"][original] for r in flagged)
    # Flagged by their sound's time course where it was compared, else by acoustic cosine.
    assert all(
        (r["fingerprint"] >= DUPLICATE_FINGERPRINT) if r["fingerprint"] is not None else (r["acoustic"] >= DUPLICATE_COSINE)
        for r in flagged
    )
    assert any(r["fingerprint"] is not None for r in flagged)
    # Duplicates come right after the query's own items, by that figure.
    n_own = sum(r["is_query"] for r in rows)
    assert [r["duplicate"] for r in rows[n_own : n_own + len(flagged)]] == [True] * len(flagged)
    keys = [r["fingerprint"] if r["fingerprint"] is not None else r["acoustic"] for r in flagged]
    assert keys == sorted(keys, reverse=True)
