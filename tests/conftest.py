"""Shared test helpers: synthesized audio, temporary stores, the shared real corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("SOUNDSEARCH_CORPUS", REPO.parent / "shared" / "corpus"))


def tone(freq: float = 440.0, seconds: float = 1.0, sr: int = 22050, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise_bursts(seconds: float = 1.0, sr: int = 22050, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * sr)).astype(np.float32) * amp
    gate = (np.arange(x.size) // (sr // 8)) % 2 == 0
    return (x * gate).astype(np.float32)


def chirp(f0: float = 100.0, f1: float = 5000.0, seconds: float = 1.0, sr: int = 22050, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (amp * np.sin(phase)).astype(np.float32)


def write_audio(path: Path, signal: np.ndarray, sr: int = 22050, subtype: str | None = None, format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), signal, sr, subtype=subtype, format=format)
    return path


@pytest.fixture
def corpus() -> Path:
    """The shared real corpus; tests using it skip cleanly in a user's clone without it."""
    if not (CORPUS / "manifest.csv").is_file():
        pytest.skip(f"real corpus not found at {CORPUS}")
    return CORPUS


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh store location; also keeps tests away from the user's real data folders."""
    monkeypatch.setenv("SOUNDSEARCH_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SOUNDSEARCH_MODELS", str(tmp_path / "user-models"))
    monkeypatch.setenv("SOUNDSEARCH_DATA", str(tmp_path / "datasets"))
    return tmp_path / "store"


@pytest.fixture
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core runner OpenMP threads
    waiting on each other made single tests take seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cold_query(argv: list[str], env: dict) -> tuple[dict, dict]:
    """`soundsearch query *argv --json` in a fresh process: its document, and which of torch
    and scipy it imported ({name: bool})."""
    code = (
        "import sys, json\n"
        "from soundsearch.cli import app\n"
        f"sys.argv = ['soundsearch', 'query', *{argv!r}, '--json']\n"
        "try:\n"
        "    app(prog_name='soundsearch')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "sys.stderr.write('\\nMODULES ' + json.dumps({m: m in sys.modules for m in ('torch', 'scipy')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, **env), timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), json.loads(done.stderr.rsplit("MODULES ", 1)[1])
