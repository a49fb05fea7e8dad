"""OpenL3 embeddings (Cramer et al. 2019), pooled to T steps per item.

Optional: needs the `openl3` package (and TensorFlow, which it pulls in); its pip install
fetches the model weights. Without them, asking for this featurizer raises FeaturizerError
with the command that fixes it; nothing else in soundsearch imports openl3.

Frames are OpenL3 embeddings every `hop_seconds` over the item at 48 kHz, then pooled like
logmel (features.pool_steps), so D = embedding_size * len(stats).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from soundsearch.errors import FeaturizerError
from soundsearch.features import Featurizer, check_signal, parse_stats, pool_steps

INSTALL_HINT = (
    "the openl3 featurizer needs the optional openl3 package and its model weights: "
    "install them with `pip install 'soundsearch[openl3]'` (this also installs TensorFlow and "
    "downloads the weights once), or use the built-in `--featurizer logmel`"
)


def _import_openl3() -> Any:
    try:
        return importlib.import_module("openl3")
    except ImportError as e:
        raise FeaturizerError(f"{INSTALL_HINT} ({e})") from None


class OpenL3(Featurizer):
    name = "openl3"
    version = 1

    def __init__(
        self,
        content_type: str = "env",
        input_repr: str = "mel256",
        embedding_size: int = 512,
        hop_seconds: float = 0.1,
        steps: int = 10,
        stats: str | Sequence[str] = "mean",
        sample_rate: int = 48000,
    ) -> None:
        if int(sample_rate) != 48000:
            raise FeaturizerError(f"openl3 works at 48000 Hz only, got sample_rate={sample_rate!r}")
        if content_type not in ("env", "music"):
            raise FeaturizerError(f"openl3 content_type must be 'env' or 'music', got {content_type!r}")
        if input_repr not in ("linear", "mel128", "mel256"):
            raise FeaturizerError(f"openl3 input_repr must be linear, mel128 or mel256, got {input_repr!r}")
        if int(embedding_size) not in (512, 6144):
            raise FeaturizerError(f"openl3 embedding_size must be 512 or 6144, got {embedding_size!r}")
        self.content_type = content_type
        self.input_repr = input_repr
        self.embedding_size = int(embedding_size)
        self.hop_seconds = float(hop_seconds)
        self.steps = int(steps)
        self.stats = parse_stats(stats)
        self.sample_rate = 48000
        self.frame_samples = self.sample_rate  # OpenL3 analyses 1 s windows
        self.dim = self.embedding_size * len(self.stats)
        self._openl3 = _import_openl3()
        try:
            self._model = self._openl3.models.load_audio_embedding_model(
                input_repr=self.input_repr, content_type=self.content_type, embedding_size=self.embedding_size
            )
        except Exception as e:  # TensorFlow/Keras raise many unrelated types for missing weights
            raise FeaturizerError(f"could not load the OpenL3 model ({type(e).__name__}: {e}); {INSTALL_HINT}") from None

    @property
    def params(self) -> dict[str, Any]:
        return {
            "content_type": self.content_type,
            "input_repr": self.input_repr,
            "embedding_size": self.embedding_size,
            "hop_seconds": self.hop_seconds,
            "steps": self.steps,
            "stats": ",".join(self.stats),
            "sample_rate": self.sample_rate,
        }

    def frames(self, signal: np.ndarray) -> np.ndarray:
        x = check_signal(signal)
        emb, _ = self._openl3.get_audio_embedding(
            x, self.sample_rate, model=self._model, hop_size=self.hop_seconds, center=True, verbose=False
        )
        return np.asarray(emb, dtype=np.float32)

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        return pool_steps(self.frames(signal), self.steps, self.stats)
