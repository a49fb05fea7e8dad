"""The aisfx featurizer against aisfx's own reference code, plus its soundsearch behaviour.

The reference is the installed `aisfx` wheel's librosa front-end, blocking and EmbeddingNet,
loaded by file path (the package's __init__ pulls in tqdm and friends). Everything here skips
when the wheel is absent; CI installs it (`pip install --no-deps aisfx`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from conftest import chirp, noise_bursts, tone, write_audio
from soundsearch.errors import FeaturizerError
from soundsearch.features import featurizer_from_spec, get_featurizer, pool_steps
from soundsearch.features import weights as weights_mod
from soundsearch.features.weights import package_file

CHECKPOINT = package_file("aisfx", "models/checkpoint.pth")
if CHECKPOINT is None:
    pytest.skip("the aisfx wheel is not installed (pip install --no-deps aisfx)", allow_module_level=True)
AISFX_DIR = CHECKPOINT.parent.parent
SR = 44100

# Measured on these signals: front-end within 1.1e-5 absolute (values 0..1); network within
# 4.3e-6 absolute on embeddings up to 11; pooled end to end within 2.5e-6. Float32 FFTs and
# convolutions summed in other orders (and batch norm folded) account for it; the bounds
# leave ~5-20x room for other BLAS/oneDNN builds.
SPEC_ATOL = 5e-5
EMB_ATOL = 1e-4


def _by_path(name: str, relative: str):
    spec = importlib.util.spec_from_file_location(name, AISFX_DIR / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("librosa")
    return {
        "spec": _by_path("_ref_aisfx_spectrogram", "spectrogram/spectrogram_librosa.py"),
        "pre": _by_path("_ref_aisfx_preprocessing", "preprocessing.py"),
        "cnn": _by_path("_ref_aisfx_cnn2d", "models/cnn2d.py"),
    }


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("weights")
        mp.setenv("SOUNDSEARCH_WEIGHTS_DIR", str(d))
        mp.delenv("SOUNDSEARCH_AISFX_WEIGHTS", raising=False)
        yield d


@pytest.fixture(scope="module")
def fz(weights_dir):
    # aisfx's own framing (hop 50 frames), which the reference pipeline below uses.
    return get_featurizer("aisfx", hop_frames=50)


def test_default_blocks_sit_side_by_side_with_the_last_aligned_to_the_end(weights_dir):
    default = get_featurizer("aisfx")
    assert default.hop_frames == 100
    assert default.block_starts(431) == [0, 100, 200, 300, 331]  # a 10 s item at 44.1 kHz
    assert default.block_starts(300) == [0, 100, 200]


@pytest.fixture(scope="module")
def ref_net(ref):
    net = ref["cnn"].EmbeddingNet("max", 3, 1, 64)
    state, _ = weights_mod.load_checkpoint_safely(CHECKPOINT, weights_mod.numpy_pickle_globals())
    prefix = "embedding_net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return net.eval()


def ref_spectrogram(ref, signal: np.ndarray, tmp_path: Path) -> np.ndarray:
    """aisfx's librosa front-end and 'original' normalisation, as (frames, 96)."""
    path = tmp_path / "ref.wav"
    sf.write(str(path), signal, SR, subtype="FLOAT")
    spec = ref["spec"].compute_spectrogram(
        filename=str(path), sr=float(SR), block_size=2048, hop_size=1024, n_mels=96, f_min=0.0, f_max=22050.0
    )
    # The librosa path returns (bands, frames); aisfx's blocking and network expect
    # (frames, bands), as its Essentia path gives.
    return ref["pre"].spectrogram_normalize(spec.T, spec_norm="original").astype(np.float32)


def ref_embeddings(ref, ref_net, spec: np.ndarray) -> np.ndarray:
    blocks = ref["pre"].blocking(spec, block_size=100, hop_size=50, drop_partial_block=True)
    with torch.no_grad():
        return ref_net(torch.tensor(blocks, dtype=torch.float32)).numpy()


def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    bursts = np.zeros(3 * SR, np.float32)
    for k, f in enumerate((300.0, 1200.0, 5000.0)):
        a = int((0.3 + k * 0.9) * SR)
        bursts[a : a + SR // 4] = tone(f, 0.25, SR, amp=0.5) * np.hanning(SR // 4).astype(np.float32)
    return {
        "noise": (0.2 * rng.standard_normal(3 * SR)).astype(np.float32),
        "chirp": chirp(50.0, 20000.0, 3.0, SR, amp=0.4),
        "bursts": bursts + noise_bursts(3.0, SR, seed=4, amp=0.01),
    }


@pytest.mark.parametrize("kind", ["noise", "chirp", "bursts"])
def test_front_end_matches_aisfx_librosa(fz, ref, kind, tmp_path):
    x = signals()[kind]
    theirs = ref_spectrogram(ref, x, tmp_path)
    ours = fz.log_scale(fz.mel_power(x))
    assert ours.shape == theirs.shape == (1 + x.size // 1024, 96)
    assert theirs.max() > 0.3  # a real spectrogram, not a trivially matching floor
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=SPEC_ATOL)


def test_network_matches_aisfx_embedding_net(fz, ref, ref_net, tmp_path):
    x = np.concatenate([signals()["chirp"], signals()["bursts"]])
    spec = ref_spectrogram(ref, x, tmp_path)
    blocks = ref["pre"].blocking(spec, block_size=100, hop_size=50, drop_partial_block=True).astype(np.float32)
    assert blocks.shape[0] >= 4
    theirs = ref_embeddings(ref, ref_net, spec)
    ours = fz.embed(blocks)
    assert ours.shape == theirs.shape == (blocks.shape[0], 512)
    assert np.abs(theirs).max() > 0.1
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=EMB_ATOL)
    # Short blocks run on their own length: the reference net takes them too.
    with torch.no_grad():
        short = ref_net(torch.from_numpy(blocks[:, :9])).numpy()
    np.testing.assert_allclose(fz.embed(np.ascontiguousarray(blocks[:, :9])), short, rtol=0, atol=EMB_ATOL)


def test_end_to_end_equals_reference_pipeline(fz, ref, ref_net, tmp_path):
    # 250 frames: blocks at 0, 50, 100, 150 end exactly on the last frame, so aisfx drops
    # nothing and the two pipelines see the same blocks; noise throughout, so nothing is trimmed.
    x = (0.3 * np.random.default_rng(7).standard_normal(249 * 1024)).astype(np.float32)
    theirs = ref_embeddings(ref, ref_net, ref_spectrogram(ref, x, tmp_path))
    assert theirs.shape == (4, 512)
    ours_blocks = fz.block_embeddings(x)
    np.testing.assert_allclose(ours_blocks, theirs, rtol=0, atol=EMB_ATOL)
    expected = pool_steps(theirs, 10, ("mean", "max"))
    got = fz(x)
    assert got.shape == (10, 1024) and fz.dim == 1024
    np.testing.assert_allclose(got, expected, rtol=0, atol=EMB_ATOL)
    # batch() across items of different lengths gives what each item gives alone.
    y = signals()["chirp"]
    b = fz.batch([x, y, x[: SR // 3]])
    for row, item in zip(b, [x, y, x[: SR // 3]]):
        np.testing.assert_allclose(row, fz(item), rtol=0, atol=1e-4)


def test_partial_last_block_is_aligned_to_the_end(fz, ref, ref_net, tmp_path):
    x = (0.3 * np.random.default_rng(8).standard_normal(229 * 1024)).astype(np.float32)  # 230 frames
    spec = ref_spectrogram(ref, x, tmp_path)
    assert fz.block_starts(spec.shape[0]) == [0, 50, 100, 130]
    theirs = ref_embeddings(ref, ref_net, spec)  # aisfx drops the partial block at 150
    ours = fz.block_embeddings(x)
    assert theirs.shape == (3, 512) and ours.shape == (4, 512)
    np.testing.assert_allclose(ours[:3], theirs, rtol=0, atol=EMB_ATOL)
    with torch.no_grad():
        tail = ref_net(torch.from_numpy(spec[None, -100:])).numpy()
    np.testing.assert_allclose(ours[3:], tail, rtol=0, atol=EMB_ATOL)


def _burst(n: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    env = np.exp(-np.arange(n) / (0.05 * SR)).astype(np.float32)
    return (0.8 * env * (rng.standard_normal(n).astype(np.float32) * 0.5 + tone(2000.0, n / SR, SR)[:n])).astype(np.float32)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))


def test_short_sound_is_featurized_from_its_own_frames(fz):
    burst = _burst(9 * 1024)  # 0.21 s: 10 frames
    blocks = fz.blocks(burst)
    assert blocks.shape == (1, 10, 96)  # one block of its own frames, not padded to 100
    tiny = fz.blocks(burst[:2000])  # 2 frames: padded with silence to the 8 the pools need
    assert tiny.shape == (1, 8, 96) and np.all(tiny[0, 2:] == 0.0)

    # The same burst inside 2 s of silence, starting on a frame boundary, is trimmed to exactly
    # the burst's frames: the same features as the burst alone.
    alone = fz(burst)
    padded = np.zeros(2 * SR, np.float32)
    padded[40 * 1024 : 40 * 1024 + burst.size] = burst
    assert fz.active_range(fz.mel_power(padded)) == (40, 50)
    np.testing.assert_allclose(fz(padded), alone, rtol=0, atol=1e-4)
    # 40 samples off the frame grid: nearly identical (measured cosine 0.99988).
    shifted = np.zeros(2 * SR, np.float32)
    shifted[41000 : 41000 + burst.size] = burst
    assert _cos(fz(shifted), alone) > 0.999
    # What trimming and the short block avoid: the burst inside 2 s of silence run as it is,
    # or its frames zero-padded to a 100-frame block, describe the silence as much as the
    # burst (measured cosine ~0.47 to the burst alone).
    spec = fz.frames(burst)
    own = fz.embed(spec[None])
    whole = fz.embed(fz.log_scale(fz.mel_power(padded))[None])
    full = np.zeros((1, 100, 96), np.float32)
    full[0, : spec.shape[0]] = spec
    assert _cos(whole, own) < 0.7 and _cos(fz.embed(full), own) < 0.7


def test_trimming_keeps_the_active_part(fz):
    power = np.zeros((50, 96), np.float32)
    power[20:23] = 1.0
    power[30] = 1e-5  # 50 dB down: still active
    power[40] = 1e-7  # 70 dB down: trimmed
    assert fz.active_range(power) == (20, 31)
    power[30] = 0.0
    assert fz.active_range(power) == (18, 26)  # widened to 8 frames around the sound
    edge = np.zeros((50, 96), np.float32)
    edge[:2] = 1.0
    assert fz.active_range(edge) == (0, 8)  # widened within the item
    assert fz.active_range(np.zeros((5, 96), np.float32)) == (0, 5)


def test_silence_gives_finite_features(fz):
    for n in (10, 4000, 3 * SR):
        out = fz(np.zeros(n, np.float32))
        assert out.shape == (10, 1024) and np.isfinite(out).all()
    b = fz.batch([np.zeros(SR, np.float32), signals()["noise"]])
    assert np.isfinite(b).all()


def test_identity_records_weights_and_refuses_others(fz, weights_dir):
    assert fz.params["weights"] == fz.weights.digest[:16]
    assert (weights_dir / f"aisfx-{fz.weights.short}.safetensors").is_file()
    again = featurizer_from_spec(fz.spec())
    assert again == fz and again.weights.origin.suffix == ".safetensors"  # the converted copy
    with pytest.raises(FeaturizerError, match="not the ones these features were made with"):
        featurizer_from_spec({"name": "aisfx", "params": {**fz.params, "weights": "0123456789abcdef"}})
    with pytest.raises(FeaturizerError, match="supports n_mels=96 only"):
        get_featurizer("aisfx", n_mels=128)
    with pytest.raises(FeaturizerError, match="hop_frames"):
        get_featurizer("aisfx", hop_frames=0)
    assert get_featurizer("aisfx", stats="mean").dim == 512
    assert "aisfx" not in sys.modules  # found and read, never imported


def test_env_var_weights_and_checksum(fz, weights_dir, monkeypatch, tmp_path):
    converted = weights_dir / f"aisfx-{fz.weights.short}.safetensors"
    monkeypatch.setenv("SOUNDSEARCH_AISFX_WEIGHTS", str(converted))
    assert get_featurizer("aisfx").weights.digest == fz.weights.digest
    monkeypatch.setenv("SOUNDSEARCH_AISFX_WEIGHTS", str(CHECKPOINT))
    assert get_featurizer("aisfx").weights.digest == fz.weights.digest


def test_missing_weights_say_what_to_do(monkeypatch, tmp_path, store_dir):
    monkeypatch.setenv("SOUNDSEARCH_AISFX_WEIGHTS", str(tmp_path / "nowhere.pth"))
    with pytest.raises(FeaturizerError, match="pip install --no-deps aisfx"):
        get_featurizer("aisfx")
    monkeypatch.delenv("SOUNDSEARCH_AISFX_WEIGHTS")
    monkeypatch.setenv("SOUNDSEARCH_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(weights_mod, "package_file", lambda package, relative: None)
    with pytest.raises(FeaturizerError) as e:
        get_featurizer("aisfx")
    assert "pip install --no-deps aisfx" in str(e.value) and "SOUNDSEARCH_AISFX_WEIGHTS" in str(e.value)
    assert "\n" not in str(e.value)

    write_audio(tmp_path / "lib" / "a.wav", tone(440.0, 1.0, SR), SR)
    result = CliRunner().invoke(
        __import__("soundsearch.cli", fromlist=["app"]).app, ["index", str(tmp_path / "lib"), "--featurizer", "aisfx"]
    )
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install --no-deps aisfx" in lines[0]
    assert not store_dir.exists()


def test_unsafe_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": Path("/etc")}, path)  # a global no allowlist names
    with pytest.raises(FeaturizerError, match="cannot load weights"):
        weights_mod.load_checkpoint_safely(path, weights_mod.numpy_pickle_globals())


def test_cli_index_and_status_with_aisfx(fz, tmp_path, store_dir):
    from soundsearch.cli import app

    lib = tmp_path / "lib"
    write_audio(lib / "tone.wav", tone(440.0, 1.0, 22050), 22050)
    write_audio(lib / "chirp.wav", chirp(100.0, 8000.0, 1.5, 22050), 22050)
    write_audio(lib / "noise.wav", noise_bursts(0.7, 16000, seed=2), 16000)
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(lib), "--featurizer", "aisfx", "--jobs", "1", "--json"])
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert rep["added"] == 3 and rep["failed"] == [] and rep["items_added"] == 3
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["files"] == 3 and doc["items"] == 3
    assert doc["featurizer"]["name"] == "aisfx"
    assert doc["featurizer"]["params"]["weights"] == fz.weights.short


def test_flop_count_matches_torch(fz):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fz.embed(np.zeros((2, 100, 96), np.float32), backend="torch")
    counted = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    assert counted == 2 * fz.conv_flops(100) == 2 * 3_861_430_272  # 3.86 GFLOP per block


def test_batch_norm_fold_is_exact_float64(fz):
    # Folded in numpy (fast enough for a query's cold start); bit for bit torch's float64 fold.
    from soundsearch.features.aisfx import BN_EPS, fold_batch_norm

    tensors = fz.weights.tensors
    folded = fold_batch_norm(tensors)
    assert len(folded) == 8
    for n, (w, b) in enumerate(folded):
        block, i = n // 2 + 1, n % 2 + 1
        bn = {k: tensors[f"conv_block{block}.bn{i}.{k}"].double() for k in ("weight", "bias", "running_mean", "running_var")}
        scale = bn["weight"] / torch.sqrt(bn["running_var"] + BN_EPS)
        assert w.dtype == b.dtype == np.float32
        assert torch.equal(torch.from_numpy(w), (tensors[f"conv_block{block}.conv{i}.weight"].double() * scale[:, None, None, None]).float())
        assert torch.equal(torch.from_numpy(b), (bn["bias"] - bn["running_mean"] * scale).float())
