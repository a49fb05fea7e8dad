"""The presence network's architecture, torch-free: the one source of its fields and defaults.

`Architecture` holds the variant and layer widths; `ModelConfig` adds the data shape a network
is built for, and `soundsearch.training.config.TrainConfig` adds the training recipe. The command
line builds its options from the same dataclasses, so a default is written down once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from soundsearch import __version__
from soundsearch.errors import ConfigError, ModelError

CONTEXTS = ("none", "stats")


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """Variant and layer widths. Defaults are the paper's network."""

    siamese: bool = True
    per_category: bool = False
    attention: bool = True
    tower: tuple[int, ...] = (128, 128, 128)
    head: tuple[int, ...] = (256, 128)
    dropout: float = 0.5
    # Recipe fields beyond the paper (defaults keep the paper's behaviour):
    # "stats" lets every step also see its item's mean, std and max over T (item-only
    # context, so it stays inside embed()).
    context: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tower", tuple(int(u) for u in self.tower))
        object.__setattr__(self, "head", tuple(int(u) for u in self.head))
        if self.siamese and not self.tower:
            raise ConfigError("a siamese model needs at least one tower layer")
        if not self.head:
            raise ConfigError("the pair head needs at least one layer")
        if any(u < 1 for u in self.tower + self.head):
            raise ConfigError("layer widths must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)")
        if self.context not in CONTEXTS:
            raise ConfigError(f"context must be one of {CONTEXTS}, not {self.context!r}")

    def architecture(self) -> "Architecture":
        """Just the architecture fields (of a ModelConfig or TrainConfig too)."""
        return Architecture(**{f.name: getattr(self, f.name) for f in fields(Architecture)})

    @property
    def variant(self) -> str:
        parts = [
            "siamese" if self.siamese else "no-siamese",
            "per-category" if self.per_category else "single",
            "attention" if self.attention else "mean-pool",
        ]
        if self.context != "none":
            parts.append(f"context-{self.context}")
        return "+".join(parts)


@dataclass(frozen=True)
class ModelConfig(Architecture):
    """An architecture built for items of `steps` x `dim` values and `n_categories` outputs."""

    steps: int  # T: frame embeddings per item
    dim: int  # D: values per frame embedding
    n_categories: int  # C

    def __post_init__(self) -> None:
        if self.steps < 1 or self.dim < 1 or self.n_categories < 1:
            raise ConfigError("steps, dim and n_categories must be positive")
        super().__post_init__()

    @property
    def groups(self) -> int:
        """Number of sub-models: C with per_category, else 1."""
        return self.n_categories if self.per_category else 1

    @property
    def outputs_per_group(self) -> int:
        return 1 if self.per_category else self.n_categories

    @property
    def input_dim(self) -> int:
        """Values per step entering the tower (D, or 4 D with context statistics)."""
        return self.dim * (4 if self.context == "stats" else 1)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            # An unknown field may change the architecture: refusing beats a silently wrong net.
            raise ModelError(
                f"model architecture fields {unknown} are unknown to soundsearch {__version__}; "
                "the model was made by a newer version"
            )
        return cls(**data)
