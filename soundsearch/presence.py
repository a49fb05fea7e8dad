"""The pairwise presence matrix: per category, do two recordings both hold it, neither, or one?

For label vectors a, b in {0,1}^C the matrix is (C, 3) one-hot over STATES. The similarity
level of the pair is the number of categories in agreement (state both or neither), 0..C.
"""

from __future__ import annotations

import numpy as np

STATES: tuple[str, ...] = ("both", "neither", "differs")
BOTH, NEITHER, DIFFERS = 0, 1, 2


def _binary(x: np.ndarray | list, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != bool:
        if not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0/1 labels")
        x = x.astype(bool)
    return x


def presence_targets(a, b) -> np.ndarray:
    """(..., C) int64 state index per category (BOTH, NEITHER or DIFFERS); a, b broadcast."""
    a = _binary(a, "a")
    b = _binary(b, "b")
    both = a & b
    neither = ~a & ~b
    return np.where(both, BOTH, np.where(neither, NEITHER, DIFFERS)).astype(np.int64)


def level_from_states(states) -> np.ndarray | int:
    """Level from predicted (..., C) state indices: categories predicted both or neither."""
    states = np.asarray(states)
    level = (states != DIFFERS).sum(axis=-1)
    return int(level) if np.ndim(level) == 0 else level.astype(np.int64)
