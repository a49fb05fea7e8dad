"""`soundsearch eval` end to end through the Typer app."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from soundsearch.cli import app

from test_evaluate import make_dataset, make_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    return {"root": root, "csv": make_dataset(root / "ds"), "model": make_model(root / "m.safetensors")}


@pytest.fixture
def env(setup, monkeypatch):
    # One feature cache for the module: the first command featurizes, the rest reuse it.
    monkeypatch.setenv("SOUNDSEARCH_DATA", str(setup["root"] / "data"))
    monkeypatch.setenv("SOUNDSEARCH_STORE", str(setup["root"] / "store"))
    monkeypatch.setenv("SOUNDSEARCH_MODELS", str(setup["root"] / "models"))
    return setup


def run(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_tables(env):
    r = run("--dataset", env["csv"], "--model", env["model"], "--k", "1,3", "--k", "10", "--jobs", "1")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "labels.csv: 16 database recordings, 3 single, 4 multi, 1 none queries" in out
    for title in (
        "single-label queries (3): mAP_3@K",
        "single-label queries (3): mAP_2@K",
        "multi-label queries (4): mAP_3@K",
        "queries with no category (1): mAP_2@K",
    ):
        assert title in out
    for row in ("random", "cosine (mean)", "cosine (mean+std+max)"):
        assert row in out
    assert "K=1" in out and "K=3" in out and "K=10" in out and "K=5" not in out
    assert "1 queries hold no category" in r.stderr


def test_json_and_plot(env, tmp_path):
    png = tmp_path / "fig3.png"
    r = run("-d", env["csv"], "-m", env["model"], "--json", "--plot", png, "--thresholds", "3", "--quiet", "-j", "1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # nothing else on stdout
    assert doc["queries"] == {"single": 3, "multi": 4, "none": 1}
    assert doc["database_size"] == 16 and doc["thresholds"] == [3] and doc["ks"] == [1, 5, 10, 30, 50, 100]
    assert doc["seed"] == 0
    assert [s["name"] for s in doc["systems"]] == [
        "m", "random", "cosine (mean)", "cosine (mean+std+max)", "cosine (whole-item stats)"
    ]
    assert doc["systems"][0]["ranking"] == {"mode": "presence", "weight": None}  # none recorded
    whole = doc["map"]["single"]["3"]["cosine (whole-item stats)"]
    assert all(v is not None and 0.0 <= v <= 1.0 for v in whole.values()) and max(whole.values()) > 0
    assert doc["systems"][0]["featurizer"].startswith("logmel/")
    for group in ("single", "multi", "none"):
        for system, values in doc["map"][group]["3"].items():
            assert set(values) == {"1", "5", "10", "30", "50", "100"}
            assert all(0.0 <= v <= 1.0 for v in values.values()), (group, system, values)
    # a database of 16 holds every hit by K = 16, so AP@30 == AP@50 == AP@100
    cos = doc["map"]["multi"]["3"]["cosine (mean)"]
    assert cos["30"] == cos["50"] == cos["100"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "plot written to" not in r.stderr  # --quiet


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nope.csv"], "labels CSV not found: nope.csv"),
        (["--k", "1,x"], "--k: 'x' is not a whole number"),
        (["--thresholds", "9"], "thresholds must lie between 1 and the number of categories (3)"),
        (["--model", "no-such-model"], "no model named 'no-such-model'"),
    ],
)
def test_bad_input(env, args, message):
    base = ["--dataset", env["csv"], "--model", env["model"], "-j", "1"]
    # later options win in Typer for single-valued ones; --model is repeatable, so replace it
    if "--model" in args:
        base = ["--dataset", env["csv"], "-j", "1"]
    r = run(*base, *args)
    assert r.exit_code == 1
    assert r.stdout == ""
    assert message in r.stderr
    assert "Traceback" not in r.output


def test_sonyc_missing_says_what_to_download(env, tmp_path):
    r = run("--dataset", "sonyc-ust", "--data-dir", tmp_path / "sonyc", "--model", env["model"])
    assert r.exit_code == 1
    err = " ".join(r.stderr.split())
    assert "annotations.csv" in err and "audio-0.tar.gz" in err and "zenodo.org/records/3966543" in err
    assert str(tmp_path / "sonyc") in err and "--download" in err


def test_help_documents_options():
    r = CliRunner().invoke(app, ["eval", "--help"])
    assert r.exit_code == 0
    for opt in ("--dataset", "--data-dir", "--model", "--variants", "--json", "--plot", "--k", "--thresholds", "--seed", "--jobs", "--download"):
        assert opt in r.output


def test_missing_and_unreadable_files_are_listed(env):
    ds = env["csv"].parent
    (ds / "broken.wav").write_bytes(b"RIFF\x00\x00not really audio")
    text = env["csv"].read_text() + "gone.wav,train,1,0,0\nbroken.wav,train,0,1,0\n"
    extra = ds / "with-gaps.csv"
    extra.write_text(text)
    r = run("--dataset", extra, "--model", env["model"], "--k", "5", "-j", "1")
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())
    assert "1 listed files are missing and were skipped: " in err and "gone.wav" in err
    assert "1 files could not be read and were skipped: " in err and "broken.wav" in err
    assert "16 database recordings" in r.stdout  # both left out, the rest evaluated


def test_features_from_the_users_own_store(env, tmp_path):
    store = tmp_path / "my-store"
    indexed = CliRunner().invoke(app, ["index", str(env["csv"].parent), "--store", str(store), "-f", "logmel", "-j", "1", "-q"])
    assert indexed.exit_code == 0, indexed.output

    from_store = run("-d", env["csv"], "-m", env["model"], "--store", store, "--json", "-q", "-j", "1")
    assert from_store.exit_code == 0, from_store.output
    from_cache = run("-d", env["csv"], "-m", env["model"], "--json", "-q", "-j", "1")
    a, b = json.loads(from_store.stdout), json.loads(from_cache.stdout)
    # Same recordings, same featurizer: the same figures whichever store the features came from.
    assert a["database_size"] == b["database_size"] == 16
    assert a["map"] == b["map"] and a["map"]["multi"]["3"]["m"]

    status = json.loads(CliRunner().invoke(app, ["status", "--store", str(store), "--json"]).stdout)
    assert status["files"] == 24  # nothing was added: the store already held every listed file


def test_a_store_with_other_features_is_refused(env, tmp_path):
    store = tmp_path / "paper-store"
    wav = sorted(env["csv"].parent.glob("*.wav"))[0]
    indexed = CliRunner().invoke(app, ["index", str(wav), "--store", str(store), "-p", "stats=mean", "-q"])
    assert indexed.exit_code == 0, indexed.output
    r = run("-d", env["csv"], "-m", env["model"], "--store", store, "-q", "-j", "1")
    assert r.exit_code == 1
    assert "featurizers cannot be mixed in one store" in r.stderr and r.stderr.count("\n") == 1
