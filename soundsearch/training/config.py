"""What a training run depends on, torch-free: the recipe on top of the architecture.

The command line reads its choices and defaults from here (`soundsearch train --help` must not
import torch), and the checkpoint records `TrainConfig.to_json()` as its recipe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from soundsearch.model.config import Architecture, ModelConfig
from soundsearch.errors import ConfigError

# Nothing here imports numpy (training.pairs and presence do): `train --help` builds a
# TrainConfig for its defaults, and numpy alone would cost it a fifth of a second.
OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
BATCHINGS = ("random", "blocked", "items")
LR_SCHEDULES = ("constant", "cosine")
PAIR_BALANCES = ("partner", "category")
# How training.pairs draws partners: "shared" (one partner order per target for all categories,
# the paper's pair count) or "independent" (a fresh draw per category).
SCHEMES = ("shared", "independent")
N_STATES = 3  # len(presence.STATES): both, neither, differs (tests check they agree)


@dataclass(frozen=True)
class TrainConfig(Architecture):
    """Everything a training run depends on; recorded in the checkpoint. Defaults = the paper.

    The architecture fields (variant, widths, dropout, context) come from Architecture.
    """

    # optimisation
    optimizer: str = "rmsprop"
    lr: float = 1e-3
    batch_size: int = 128
    # "random": pairs shuffled (the paper). "blocked": each epoch items fall into random blocks
    # and a batch holds the pairs between two blocks, so the tower runs on ~4x fewer items.
    batching: str = "random"
    weight_decay: float = 0.0
    input_noise: float = 0.0  # std of Gaussian noise added to standardised features in training
    # pairs (see soundsearch.training.pairs: "shared" reproduces the paper's pair count)
    pairs_per_side: int = 30
    pair_scheme: str = "shared"
    # epochs: None = choose by validation loss with early stopping
    epochs: int | None = None
    max_epochs: int = 30
    patience: int = 3
    val_fraction: float = 0.1
    refit: bool = True
    seed: int = 0
    # torch threads for this run (None leaves torch's setting). One by default: a seed then
    # reproduces a run whatever the machine's core count (reduction order depends on threads),
    # and the matrices are small enough that on a busy 2-core machine two threads trained
    # ~5x slower than one (OpenMP threads waiting on each other).
    threads: int | None = 1
    # Recipe levers beyond the paper, for generalising to unheard recordings (defaults keep the
    # paper's training; see models/README.md for the measured effect of each).
    # With batching="items" a batch is `batch_items` random items and `batch_size` pairs drawn
    # among them, balanced per category (half same situation, half opposite): every item is
    # seen once per epoch under fresh noise and mixing, and the tower runs once per item.
    batch_items: int = 256
    # Weight of an auxiliary per-item tagging loss (a linear tagger on the tower output, pooled
    # mean+max over time; used in training only, not saved): it makes the tower encode which
    # categories an item holds, which is what the pair head compares.
    tag_weight: float = 0.0
    # Share of training items replaced, per batch, by a mix of two items: the elementwise max of
    # their standardised features (for log-Mel, the louder source dominates each band, as in a
    # real mixture) with the union of their labels. Teaches detection of overlapping events.
    mix_prob: float = 0.0
    # Loss weights of the states (both, neither, differs). Raising "both" trades some precision
    # for recall of co-present categories, which exact matches of multi-label queries need.
    state_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    lr_schedule: str = "constant"  # "cosine": decay to 0 over the planned epochs of each phase
    # With batching="items": "partner" balances each pair's partner (the paper's scheme);
    # "category" also draws the first item holding the pair's category half of the time.
    pair_balance: str = "partner"

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_weights", tuple(float(w) for w in self.state_weights))
        super().__post_init__()
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("lr must be positive and batch_size at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("epochs must be at least 1 (or None to choose by validation)")
        if self.max_epochs < 1 or self.patience < 1:
            raise ConfigError("max_epochs and patience must be at least 1")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError("val_fraction must be in (0, 0.5)")
        if self.batching not in BATCHINGS:
            raise ConfigError(f"batching must be one of {BATCHINGS}, not {self.batching!r}")
        if self.pair_scheme not in SCHEMES:
            raise ConfigError(f"pair_scheme must be one of {SCHEMES}, not {self.pair_scheme!r}")
        if self.input_noise < 0 or self.weight_decay < 0:
            raise ConfigError("input_noise and weight_decay must not be negative")
        if self.batch_items < 2:
            raise ConfigError("batch_items must be at least 2")
        if self.tag_weight < 0:
            raise ConfigError("tag_weight must not be negative")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ConfigError("mix_prob must be in [0, 1]")
        if len(self.state_weights) != N_STATES or any(not (w > 0 and math.isfinite(w)) for w in self.state_weights):
            raise ConfigError(f"state_weights must be {N_STATES} positive numbers (both, neither, differs)")
        if self.pair_balance not in PAIR_BALANCES:
            raise ConfigError(f"pair_balance must be one of {PAIR_BALANCES}, not {self.pair_balance!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")

    def model_config(self, steps: int, dim: int, n_categories: int) -> ModelConfig:
        return ModelConfig(steps=steps, dim=dim, n_categories=n_categories, **asdict(self.architecture()))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
