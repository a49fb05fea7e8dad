"""Balanced training pairs: coverage per category and situation, dedup, reproducibility."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from soundsearch.training.pairs import _sample_subsets, make_pairs, summarise_pairs
from soundsearch.presence import presence_targets


def random_labels(n: int, prevalence, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, len(prevalence))) < np.asarray(prevalence)).astype(np.uint8)


SCHEMES = ["shared", "independent"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_small_pools_are_taken_whole(scheme):
    # With more partners wanted than exist, every recording pairs with every other one.
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0]], dtype=np.uint8)
    pairs = make_pairs(labels, per_side=30, seed=0, scheme=scheme)
    assert sorted(map(tuple, pairs.tolist())) == list(itertools.combinations(range(5), 2))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("k", [1, 7])
def test_every_target_gets_its_partners_in_both_situations(scheme, k):
    labels = random_labels(300, [0.5, 0.1, 0.03, 0.8, 0.9])
    pairs = make_pairs(labels, per_side=k, seed=3, scheme=scheme)
    assert pairs.dtype.kind == "i" and pairs.shape[1] == 2
    assert np.all(pairs[:, 0] < pairs[:, 1])  # unordered, no self pairs
    assert len(np.unique(pairs, axis=0)) == len(pairs)  # no duplicates
    n = len(labels)
    partners = [[] for _ in range(n)]
    for a, b in pairs:
        partners[a].append(b)
        partners[b].append(a)
    for i in range(n):
        p = np.array(partners[i])
        for c in range(labels.shape[1]):
            same_pool = int((labels[:, c] == labels[i, c]).sum()) - 1
            opp_pool = n - 1 - same_pool
            same = int((labels[p, c] == labels[i, c]).sum())
            # Dedup only merges a pair drawn twice, so each target keeps at least its quota.
            assert same >= min(k, same_pool)
            assert len(p) - same >= min(k, opp_pool)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pairs_are_balanced_per_category(scheme):
    labels = random_labels(400, [0.5, 0.1])
    pairs = make_pairs(labels, per_side=10, seed=1, scheme=scheme)
    s = summarise_pairs(pairs, labels)
    targets = presence_targets(labels[pairs[:, 0]], labels[pairs[:, 1]])
    assert s.pairs == len(pairs) and s.recordings == 400
    assert s.both == (targets == 0).sum(0).tolist()
    assert s.neither == (targets == 1).sum(0).tolist()
    assert s.differs == (targets == 2).sum(0).tolist()
    # Balanced sampling: for the even category "differs" is about as common as agreement.
    agree = s.both[0] + s.neither[0]
    assert 0.6 < s.differs[0] / agree < 1.6
    # The rare category still gets plenty of "differs" and some "both" pairs.
    assert s.differs[1] > 0.2 * s.pairs and s.both[1] > 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_reproducible_with_seed(scheme):
    labels = random_labels(200, [0.3, 0.6, 0.1])
    a = make_pairs(labels, seed=5, scheme=scheme)
    np.testing.assert_array_equal(a, make_pairs(labels, seed=5, scheme=scheme))
    assert not np.array_equal(a, make_pairs(labels, seed=6, scheme=scheme))


def test_shared_order_reuses_partners_across_categories():
    # Identical label columns: with one order per target, every category picks the very same
    # partners, so the pair count is that of a single category; independent draws are not.
    col = random_labels(500, [0.4])
    labels = np.repeat(col, 4, axis=1)
    one = make_pairs(col, per_side=10, seed=0)
    assert len(make_pairs(labels, per_side=10, seed=0)) == len(one)
    assert len(make_pairs(labels, per_side=10, seed=0, scheme="independent")) > 2 * len(one)


def test_shared_order_has_no_favoured_partner():
    # By symmetry every positive partner of target 0 must be equally likely (and every
    # negative one); a biased order (e.g. a wrong self-exclusion swap) favours some index.
    labels = np.zeros((40, 1), np.uint8)
    labels[:7] = 1
    hits = np.zeros(40)
    seeds = 1500
    for seed in range(seeds):
        p = make_pairs(labels, per_side=2, seed=seed)
        hits[p[p[:, 0] == 0, 1]] += 1
    for group in (hits[1:7], hits[7:]):
        expected = group.mean()
        assert expected > 50
        assert np.all(np.abs(group - expected) < 5 * np.sqrt(expected)), group


def test_floyd_subsets_are_uniform():
    rng = np.random.default_rng(0)
    draws = _sample_subsets(rng, 30000, 6, 2)
    assert all(len(set(row)) == 2 for row in draws[:100].tolist())
    counts = Counter(tuple(sorted(r)) for r in draws.tolist())
    assert len(counts) == 15
    expected = 30000 / 15
    # 15 cells: a 5-sigma band on each count is far from flaky and catches a biased sampler.
    assert all(abs(v - expected) < 5 * np.sqrt(expected) for v in counts.values())


def test_paper_sized_pairs_scan_only_a_prefix(monkeypatch):
    # Complexity, not wall-clock: each target's random order is scanned in doubling chunks
    # only until every category has its partners, far from the n x n cells of a full scan.
    import soundsearch.training.pairs as pairs_module

    labels = random_labels(2351, [0.62, 0.18, 0.25, 0.08, 0.33, 0.13, 0.47, 0.08])
    scanned = []

    class CountingNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        def cumsum(self, a, *args, **kwargs):  # one call per scanned (rows, columns, cats) chunk
            scanned.append(a.shape[0] * a.shape[1])
            return np.cumsum(a, *args, **kwargs)

    monkeypatch.setattr(pairs_module, "np", CountingNumpy())
    pairs = make_pairs(labels, seed=0)
    n = len(labels)
    assert len(pairs) > 200_000
    assert 0 < sum(scanned) < n * n // 2


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_pairs(np.zeros(5), seed=0)
    with pytest.raises(ValueError):
        make_pairs(np.zeros((5, 2)), per_side=0)
    assert make_pairs(np.zeros((1, 2)), seed=0).shape == (0, 2)
