"""Presence matrix, similarity levels and the taxonomy, on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from soundsearch.metrics import agreement
from soundsearch.presence import BOTH, DIFFERS, NEITHER, STATES, level_from_states, presence_targets
from soundsearch.taxonomy import SONYC_UST_COARSE, Taxonomy


def similarity_level(a, b):
    """The paper's r for label vectors, as the library computes it (metrics.agreement)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    levels = agreement(a, b).diagonal()  # row i of a against row i of b
    return levels if len(levels) > 1 else int(levels[0])


def test_presence_matrix_hand_case():
    # engine in both, dog in a only, music in b only, the rest in neither.
    a = Taxonomy.default().labels(["engine", "dog"])
    b = Taxonomy.default().labels(["engine", "music"])
    m = np.eye(len(STATES), dtype=np.float32)[presence_targets(a, b)]
    assert m.shape == (8, 3) and m.dtype == np.float32
    expected = np.zeros((8, 3), np.float32)
    expected[:, NEITHER] = 1
    expected[0] = [1, 0, 0]  # engine: both
    expected[5] = [0, 0, 1]  # music: differs
    expected[7] = [0, 0, 1]  # dog: differs
    np.testing.assert_array_equal(m, expected)
    assert similarity_level(a, b) == 6
    assert STATES[BOTH] == "both" and STATES[NEITHER] == "neither" and STATES[DIFFERS] == "differs"


def test_presence_is_symmetric_and_batched():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(50, 8))
    b = rng.integers(0, 2, size=(50, 8))
    np.testing.assert_array_equal(presence_targets(a, b), presence_targets(b, a))
    t = presence_targets(a, b)
    # Columns 1 + 2 of the matrix (both, neither) count the agreements: the paper's level.
    np.testing.assert_array_equal(np.eye(len(STATES))[t][..., :2].sum((-1, -2)), similarity_level(a, b))
    np.testing.assert_array_equal(level_from_states(t), similarity_level(a, b))
    # Broadcasting one query against many.
    np.testing.assert_array_equal(presence_targets(a[0], b), presence_targets(np.repeat(a[:1], 50, 0), b))


def test_levels_extremes():
    x = np.array([1, 0, 1, 1, 0, 0, 0, 1])
    assert similarity_level(x, x) == 8
    assert similarity_level(x, 1 - x) == 0
    assert level_from_states([DIFFERS] * 8) == 0


def test_non_binary_labels_are_rejected():
    with pytest.raises(ValueError, match="0/1"):
        presence_targets([0, 2], [0, 1])


def test_taxonomy():
    tax = Taxonomy.default()
    assert tax.categories == SONYC_UST_COARSE and len(tax) == 8
    assert tax.categories[0] == "engine" and tax.categories[-1] == "dog"
    assert tax.index("music") == 5
    assert tax.names(tax.labels(["dog", "engine"])) == ["engine", "dog"]
    assert Taxonomy.from_json(tax.to_json()) == tax
    with pytest.raises(KeyError, match="unknown category 'cat'"):
        tax.index("cat")
    with pytest.raises(ValueError, match="duplicate"):
        Taxonomy(("a", "b", "a"))
    with pytest.raises(ValueError, match="at least one"):
        Taxonomy(())
