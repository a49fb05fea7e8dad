"""The OpenL3 featurizer: torch port vs the reference implementation, weights, fetching, indexing.

Parity without the real weights: the computation does not depend on the weight values, so the
goldens in tests/data/openl3/ were made by openl3 0.4.2 on TensorFlow 2.15 (and kapre 0.1.4's
own Melspectrogram layer for the training-time front-end) with seeded random weights, by
tests/data/openl3/make_goldens.py. Here the same weights are rebuilt from the same seed
(reference_inputs.py) and written in the Keras layout that script recorded, so the weights
file is read by the real loading code.

Tolerances, and why they differ by signal: the reference computes its spectrogram in float32
(kapre 0.1.4 by a DFT-as-convolution), and OpenL3's dB scale is 10*log10 of an *amplitude*,
so its 80 dB range reaches amplitudes of 1e-8 of the peak, below float32's resolution. On
broadband noise every bin is far above that floor and the port agrees to float rounding; a
chirp or a tone burst has bins near the floor where the reference itself is rounding noise
(measured: 0.001 dB at -40 dB, 0.05 dB at -60 dB, up to 5 dB at the -80 dB clip), which
moves their embeddings by up to ~0.6% of their range.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from soundsearch.errors import DownloadError, FeaturizerError  # noqa: E402
from soundsearch.features import featurizer_from_spec, get_featurizer  # noqa: E402
from soundsearch.features import openl3 as O  # noqa: E402
from soundsearch.features import openl3_weights as W  # noqa: E402

DATA = Path(__file__).parent / "data" / "openl3"
sys.path.insert(0, str(DATA))
import reference_inputs as ref  # noqa: E402

GOLDENS = np.load(DATA / "goldens.npz")
META = json.loads((DATA / "goldens.json").read_text())

# max |torch - reference| over an embedding, as a fraction of the reference's largest value.
TOL_NOISE = 5e-5  # measured ~3e-6: float rounding
TOL_NEAR_FLOOR = 1.5e-2  # chirp, burst: measured up to ~6e-3, the reference's float32 floor (see above)


def write_keras_h5(path: Path, layout: list[dict], weights: list[list[np.ndarray]]) -> Path:
    """A Keras-2 weights-only HDF5 file with `layout`'s layer and weight names (as save_weights writes)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer["layer"].encode() for layer in layout])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.15.0"
        arrays = iter(weights)
        for layer in layout:
            g = f.create_group(layer["layer"])
            g.attrs["weight_names"] = np.array([w.encode() for w in layer["weights"]])
            if layer["weights"]:
                for name, a in zip(layer["weights"], next(arrays)):
                    g.create_dataset(name, data=a)
    return path


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("openl3-weights")
    w = ref.random_weights()
    return {ir: write_keras_h5(d / W.weight_filename(ir, "env"), META["layouts"][ir], w) for ir in ("mel128", "mel256")}


@pytest.fixture
def no_user_weights(tmp_path, monkeypatch):
    """Nothing but what a test puts there: no env var, no openl3 package, an empty data dir."""
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(W, "_openl3_package_file", lambda name: None)


def worst(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max())


# --- parity -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["openl3-0.4", "kapre-0.1.4"])
@pytest.mark.parametrize("input_repr", ["mel128", "mel256"])
def test_embeddings_match_the_reference(weight_files, input_repr, frontend):
    fz = O.OpenL3(input_repr=input_repr, frontend=frontend, hop_seconds=ref.HOP_SECONDS, weights=weight_files[input_repr])
    for name, x in ref.signals().items():
        got = fz.frames(x)
        want = GOLDENS[f"{frontend}/{input_repr}/512/{name}"]
        assert got.shape == want.shape == (3, 512)
        assert worst(got, want) < (TOL_NOISE if name == "noise" else TOL_NEAR_FLOOR), name
        np.testing.assert_allclose(fz.frame_times(len(got)), GOLDENS[f"timestamps/{name}"])


@pytest.mark.slow
@pytest.mark.parametrize("input_repr", ["mel128", "mel256"])
def test_6144_pooling_and_channels_last_flatten(weight_files, input_repr):
    fz = O.OpenL3(input_repr=input_repr, embedding_size=6144, frontend="openl3-0.4", hop_seconds=0.5, weights=weight_files[input_repr])
    got = fz.frames(ref.signals()["noise"])
    want = GOLDENS[f"openl3-0.4/{input_repr}/6144/noise"]
    assert worst(got, want) < TOL_NOISE
    # A channels-first flatten would hold the same numbers in another order: make sure it's not that.
    cf = got.reshape(3, 4, 3, 512).transpose(0, 3, 1, 2).reshape(3, -1)
    assert np.abs(cf - want).max() > 1.0


def test_training_frontend_spectrogram_matches_kapre_0_1_4(weight_files):
    fz = O.OpenL3(input_repr="mel128", hop_seconds=0.5, weights=weight_files["mel128"])
    for name, x in ref.signals().items():
        got = fz.spectrograms(x)[1]
        want = GOLDENS[f"spectrogram/kapre-0.1.4/mel128/{name}"]
        assert got.shape == want.shape == (128, 199)
        diff = np.abs(got - want)
        assert diff[want > -40].max() < 5e-3, name
        assert diff[want > -60].max() < 0.1, name
        # Every clipped bin of the reference is at (or within float noise of) the clip in the port.
        clipped = want <= -80 + 1e-4
        assert not clipped.any() or got[clipped].max() < -70, name
        assert got.min() >= -80 and got.max() == 0


def _librosa_db(window: np.ndarray, n_mels: int, htk: bool, pad: tuple[int, int]) -> np.ndarray:
    librosa = pytest.importorskip("librosa")
    x = np.pad(window.astype(np.float64), pad)
    # Training-time: sqrt(M @ |X|^2) (kapre 0.1.4, power_melgram=1); openl3 0.4: M @ |X|.
    power = 2.0 if htk else 1.0
    m = librosa.feature.melspectrogram(
        y=x, sr=48000, n_fft=2048, hop_length=242, center=False, window="hann", power=power,
        n_mels=n_mels, htk=htk, norm="slaney", fmin=0.0, fmax=24000.0,
    )
    if htk:
        m = np.sqrt(m)
    db = 10 * np.log10(np.maximum(m, 1e-10))
    return np.maximum(db - db.max(), -80.0)


@pytest.mark.parametrize("frontend", ["kapre-0.1.4", "openl3-0.4"])
def test_frontends_match_librosa_independently(weight_files, frontend):
    fz = O.OpenL3(input_repr="mel128", frontend=frontend, hop_seconds=0.5, weights=weight_files["mel128"])
    x = ref.signals()["noise"]
    win = O.windows(x, O.hop_samples(0.5))[1]
    pad = (982, 982) if frontend == "kapre-0.1.4" else (0, 1964)
    want = _librosa_db(win, 128, frontend == "kapre-0.1.4", pad)
    got = fz.spectrograms(x)[1]
    assert np.abs(got - want).max() < 1e-3


def test_the_two_frontends_differ_by_several_db(weight_files):
    # openl3 issue #80: the package's front-end is not the one the weights were trained on.
    x = ref.signals()["noise"]
    a = O.OpenL3(input_repr="mel128", frontend="kapre-0.1.4", weights=weight_files["mel128"]).spectrograms(x)
    b = O.OpenL3(input_repr="mel128", frontend="openl3-0.4", weights=weight_files["mel128"]).spectrograms(x)
    assert np.abs(a - b).mean() > 2.0


def test_framing_follows_openl3():
    hop = O.hop_samples(0.1)
    assert hop == 4800
    # openl3: 1 window up to half a second, then one more per hop (centre padding of 0.5 s).
    assert [O.n_windows(n, hop) for n in (1, 24000, 24001, 28800, 28801, 48000)] == [1, 1, 2, 2, 3, 6]
    x = np.arange(1, 30001, dtype=np.float32)
    w = O.windows(x, hop)
    assert w.shape == (3, 48000)
    assert (w[0, :24000] == 0).all() and w[0, 24000] == 1  # the first sample sits mid-window
    assert w[1, 24000 - hop] == 1 and w[2, -1] == 0  # end zero-padded


# --- featurizer identity and weights lookup ---------------------------------------------------


def test_identity_records_the_weights_hash_and_round_trips(weight_files, tmp_path):
    fz = get_featurizer("openl3", input_repr="mel128", weights=str(weight_files["mel128"]))
    assert fz.params["weights_sha"] == W.file_sha256(weight_files["mel128"])[:12]
    assert fz.identity.startswith("openl3/2:") and fz.params["weights_sha"] in fz.identity
    assert "weights" not in fz.params  # where the file lies is not what the features are
    back = featurizer_from_spec(fz.spec())
    assert back.identity == fz.identity and back.dim == 512 and back.steps == 10
    other = ref.random_weights(seed=1)
    path2 = write_keras_h5(tmp_path / "other.h5", META["layouts"]["mel128"], other)
    fz2 = get_featurizer("openl3", input_repr="mel128", weights=str(path2))
    assert fz2.identity != fz.identity
    spec = fz.spec()
    spec["params"]["weights"] = str(path2)
    with pytest.raises(FeaturizerError, match="not the ones these features were made with"):
        featurizer_from_spec(spec)


def test_weights_are_found_in_order(weight_files, tmp_path, monkeypatch, no_user_weights):
    name = W.weight_filename("mel128", "env")
    with pytest.raises(FeaturizerError) as ei:
        W.find_weights("mel128", "env")
    msg = str(ei.value)
    assert "\n" not in msg and "soundsearch models fetch openl3 --content-type env --input-repr mel128" in msg
    # per-user data folder
    user = tmp_path / "xdg" / "soundsearch" / "weights" / "openl3"
    user.mkdir(parents=True)
    (user / name).write_bytes(b"u")
    assert W.find_weights("mel128", "env") == user / name
    # an installed openl3 package beats it (found without importing openl3)
    pkg = tmp_path / "site" / "openl3"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / name).write_bytes(b"p")
    monkeypatch.undo()  # restore the real package lookup ...
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert W.find_weights("mel128", "env") == pkg / name
    # the environment variable (a folder or a file) beats both, and a parameter beats that
    monkeypatch.setenv(W.WEIGHTS_ENV, str(weight_files["mel128"].parent))
    assert W.find_weights("mel128", "env") == weight_files["mel128"]
    assert W.find_weights("mel128", "env", weights=pkg / name) == pkg / name
    monkeypatch.setenv(W.WEIGHTS_ENV, str(tmp_path / "nowhere.h5"))
    with pytest.raises(FeaturizerError, match=r"not found at .*nowhere.h5 \(from \$SOUNDSEARCH_OPENL3_WEIGHTS\)"):
        W.find_weights("mel128", "env")


def test_featurizer_without_weights_says_how_to_get_them(no_user_weights):
    with pytest.raises(FeaturizerError, match="soundsearch models fetch openl3 --content-type music --input-repr mel256"):
        get_featurizer("openl3", content_type="music")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda layout, w: (layout[:-2], w[:-1]), "15 layers with weights, expected 16"),
        (lambda layout, w: (layout, w[:3] + [[w[3][0][:, :, :, :32], w[3][1]]] + w[4:]), r"kernel \(3, 3, 64, 32\)"),
        (lambda layout, w: ([*layout[:-1], {"layer": "conv_last", "weights": ["conv_last/kernel:0", "conv_last/bias:0"]}], w), "audio_embedding_layer"),
        (lambda layout, w: (layout, w[:5] + [[np.full_like(a, np.nan) for a in w[5]]] + w[6:]), "non-finite"),
    ],
)
def test_weights_structure_is_checked(tmp_path, mutate, match):
    layout, w = mutate(META["layouts"]["mel128"], ref.random_weights())
    path = write_keras_h5(tmp_path / "bad.h5", layout, w)
    with pytest.raises(FeaturizerError, match=match):
        W.read_weights(path)


def test_not_hdf5_is_a_featurizer_error(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"<html>not found</html>")
    with pytest.raises(FeaturizerError, match="not a readable HDF5"):
        W.read_weights(p)


# --- fetching ---------------------------------------------------------------------------------


@pytest.fixture
def http_files():
    """Serve {url path: bytes} on 127.0.0.1 (never the internet); yields (base_url, files, hits)."""
    files: dict[str, bytes] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            body = body if body is not None else b"not found"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/models", files, hits
    httpd.shutdown()
    httpd.server_close()


def test_fetch_downloads_checks_and_stores(weight_files, http_files, tmp_path):
    base, files, hits = http_files
    files["/models/openl3_audio_mel128_env-v0_4_0.h5.gz"] = gzip.compress(weight_files["mel128"].read_bytes(), 1)
    dest = W.fetch_weights("mel128", "env", tmp_path / "w", base=base)
    assert dest == tmp_path / "w" / "openl3_audio_mel128_env.h5"
    assert dest.read_bytes() == weight_files["mel128"].read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no .gz, .part or temp left
    assert hits == ["/models/openl3_audio_mel128_env-v0_4_0.h5.gz"]


def test_fetch_refuses_a_file_of_the_wrong_structure(http_files, tmp_path):
    base, files, _ = http_files
    bad = write_keras_h5(tmp_path / "bad.h5", META["layouts"]["mel128"][:-2], ref.random_weights()[:-1])
    files["/models/openl3_audio_mel256_music-v0_4_0.h5.gz"] = gzip.compress(bad.read_bytes(), 1)
    with pytest.raises(DownloadError, match="not usable: .*15 layers with weights"):
        W.fetch_weights("mel256", "music", tmp_path / "w", base=base)
    assert list((tmp_path / "w").iterdir()) == []
    with pytest.raises(DownloadError, match="HTTP 404"):
        W.fetch_weights("mel128", "music", tmp_path / "w", base=base)


def test_models_fetch_cli(weight_files, http_files, no_user_weights, monkeypatch, store_dir):
    from typer.testing import CliRunner

    from soundsearch.cli import app

    base, files, _ = http_files
    files["/models/openl3_audio_mel128_env-v0_4_0.h5.gz"] = gzip.compress(weight_files["mel128"].read_bytes(), 1)
    monkeypatch.setenv(W.BASE_URL_ENV, base)
    r = CliRunner().invoke(app, ["models", "fetch", "openl3", "--input-repr", "mel128"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(W.user_weights_dir() / "openl3_audio_mel128_env.h5")
    assert W.find_weights("mel128", "env") == W.user_weights_dir() / "openl3_audio_mel128_env.h5"
    assert "CC BY 4.0" in r.stderr
    r = CliRunner().invoke(app, ["models", "fetch", "openl3", "--input-repr", "mel256", "--quiet"])
    assert r.exit_code == 1 and "HTTP 404" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["models", "fetch", "vggish"])
    assert r.exit_code != 0
    # `soundsearch models` itself still lists models
    r = CliRunner().invoke(app, ["models", "--json"])
    assert r.exit_code == 0 and isinstance(json.loads(r.stdout), list)


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_index_with_openl3_features(weight_files, tmp_path, store_dir, monkeypatch):
    from typer.testing import CliRunner

    from conftest import chirp, noise_bursts, tone, write_audio
    from soundsearch.cli import app
    from soundsearch.store import Store

    lib = tmp_path / "lib"
    write_audio(lib / "tone.wav", tone(440, 1.5, 48000), 48000)
    write_audio(lib / "noise.flac", noise_bursts(2.0, 22050), 22050)  # resampled to 48 kHz
    write_audio(lib / "chirp.wav", chirp(100, 8000, 0.6, 44100), 44100)  # shorter than one window
    monkeypatch.setenv(W.WEIGHTS_ENV, str(weight_files["mel128"]))
    r = CliRunner().invoke(
        app, ["index", str(lib), "--featurizer", "openl3", "-p", "input_repr=mel128", "-p", "stats=mean,max", "--jobs", "1", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["added"] == 3
    with Store.open(store_dir) as st:
        feats = st.features()
        assert feats.shape == (3, 10, 1024)  # D = 512 x (mean, max)
        assert np.isfinite(feats).all() and np.ptp(feats) > 0
        fz = st.featurizer()
        assert fz.identity == st.featurizer_identity and "weights_sha" in fz.identity
        tone_row = feats[st.items_for_path(lib / "tone.wav")[0].row]
    # The stored row is what the featurizer gives for the decoded file.
    from soundsearch.features import featurize_file

    np.testing.assert_allclose(tone_row, featurize_file(lib / "tone.wav", fz).features[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_and_query_on_openl3_features(weight_files, tmp_path, store_dir, monkeypatch):
    from typer.testing import CliRunner

    from soundsearch.cli import app
    from test_train_cli import synth_dataset

    def invoke(*args):
        r = CliRunner().invoke(app, list(args))
        assert r.exit_code == 0, r.output
        return r

    monkeypatch.setenv(W.WEIGHTS_ENV, str(weight_files["mel128"]))
    labels = synth_dataset(tmp_path / "data", n=18, seed=1)  # both states of every category in training
    model = tmp_path / "openl3-model.safetensors"
    fz_args = ["--featurizer", "openl3", "-p", "input_repr=mel128"]
    doc = json.loads(invoke("train", "--dataset", str(labels), *fz_args, "--epochs", "1", "--seed", "1", "--jobs", "1", "--out", str(model), "--json").stdout)
    assert doc["featurizer"].startswith("openl3/2:") and "weights_sha" in doc["featurizer"]
    invoke("index", str(tmp_path / "data"), *fz_args, "--jobs", "1", "--quiet")
    out = json.loads(invoke("query", str(tmp_path / "data" / "clip00.wav"), "--model", str(model), "-k", "3", "--include-self", "--json").stdout)
    assert out["featurizer"]["identity"] == doc["featurizer"] and out["items_searched"] == 18
    assert out["results"][0]["path"].endswith("clip00.wav") and out["results"][0]["is_query"]
    assert len(out["results"]) == 3 and set(out["results"][1]["categories"]) == {"tone", "noise", "chirp"}
