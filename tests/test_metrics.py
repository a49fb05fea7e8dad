"""mAP_s@K against hand-worked cases, a plain-loop reference, and the exact random baseline."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from soundsearch import metrics


# ---------- an independent reference: plain Python, straight from the paper's formula ----------

def ref_agreement(q, d):
    return sum(1 for a, b in zip(q, d) if bool(a) == bool(b))


def ref_ap(rels, s, k):
    """AP_s@K for one ranked list of r values, written as PAPER.md states it."""
    top = rels[:k]
    hits_k = sum(1 for r in top if r >= s)
    if hits_k == 0:
        return 0.0
    total = 0.0
    for n in range(1, len(top) + 1):
        if top[n - 1] >= s:
            total += (1.0 / n) * sum(1 for i in range(n) if top[i] >= s)
    return total / hits_k


def ref_map(q_labels, d_labels, orders, s, k):
    aps = []
    for q, order in zip(q_labels, orders):
        rels = [ref_agreement(q, d_labels[i]) for i in order]
        aps.append(ref_ap(rels, s, k))
    return sum(aps) / len(aps)


def ref_random_exact(n, h, k):
    """E[AP@K] over every placement of h hits among n positions (all equally likely)."""
    vals = []
    for pos in itertools.combinations(range(n), h):
        hit = [0] * n
        for p in pos:
            hit[p] = 1
        vals.append(ref_ap(hit, 1, k))
    return sum(vals) / len(vals)


# ---------- hand-worked cases ----------

def test_agreement_counts_both_present_and_both_absent():
    q = np.array([[1, 0, 0]])
    d = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert metrics.agreement(q, d).tolist() == [[3, 1, 1, 2]]


def test_agreement_rejects_mismatched_categories():
    with pytest.raises(ValueError):
        metrics.agreement(np.zeros((1, 3)), np.zeros((2, 4)))


def test_ap_hand_worked():
    # hits at ranks 1 and 3: AP@5 = (1/1 + 2/3) / 2
    hits = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    ap = metrics.average_precision(hits, ks=(1, 2, 3, 5))
    np.testing.assert_allclose(ap[0], [1.0, 1.0, (1 + 2 / 3) / 2, (1 + 2 / 3) / 2])
    np.testing.assert_allclose(ap[1], [0.0, 0.5, (1 / 2 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2])
    np.testing.assert_allclose(ap[2], [0.0, 0.0, 0.0, 0.0])  # no hit: AP is 0, not NaN
    np.testing.assert_allclose(ap[3], [0.0, 0.0, 0.0, 1 / 5])


def test_k_beyond_ranking_uses_whole_ranking():
    ap = metrics.average_precision(np.array([[0, 1]]), ks=(2, 100))
    np.testing.assert_allclose(ap, [[0.5, 0.5]])


def test_map_through_agreement_and_order():
    # C = 2. Query [1,0]; db: [1,0] (r=2), [0,0] (r=1), [0,1] (r=0), [1,1] (r=1)
    q = np.array([[1, 0], [0, 0]])
    d = np.array([[1, 0], [0, 0], [0, 1], [1, 1]])
    agree = metrics.agreement(q, d)
    assert agree.tolist() == [[2, 1, 0, 1], [1, 2, 1, 0]]
    order = np.array([[2, 0, 1, 3], [0, 1, 2, 3]])
    ap2 = metrics.ap_at_k(agree, order, threshold=2, ks=(1, 2, 4))
    np.testing.assert_allclose(ap2[0], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(ap2[1], [0.0, 0.5, 0.5])
    ap1 = metrics.ap_at_k(agree, order, threshold=1, ks=(1, 2, 4))
    # query 0 ranked r: 0,2,1,1 -> hits 0,1,1,1: AP@4 = (1/2 + 2/3 + 3/4) / 3
    np.testing.assert_allclose(ap1[0], [0.0, 0.5, (1 / 2 + 2 / 3 + 3 / 4) / 3])
    # query 1 ranked r: 1,2,1,0 -> hits 1,1,1,0
    np.testing.assert_allclose(ap1[1], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(metrics.mean_ap(ap1), [0.5, 0.75, (0.5 + 2 / 3 + 0.75) / 3 / 2 + 0.5])


def test_mean_ap_of_empty_group_is_nan():
    assert np.isnan(metrics.mean_ap(np.zeros((0, 3)))).all()


def test_bad_ks_rejected():
    with pytest.raises(ValueError):
        metrics.average_precision(np.ones((1, 3)), ks=(0,))


# ---------- cross-check against the plain-loop reference on random data ----------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_reference(seed):
    rng = np.random.default_rng(seed)
    c = 5
    q_labels = rng.integers(0, 2, size=(12, c))
    d_labels = rng.integers(0, 2, size=(40, c))
    orders = np.stack([rng.permutation(40) for _ in range(12)])
    agree = metrics.agreement(q_labels, d_labels)
    for qi in range(12):
        for i in range(40):
            assert agree[qi, i] == ref_agreement(q_labels[qi], d_labels[i])
    ks = (1, 3, 10, 25, 40, 60)
    for s in (c, c - 1, c - 2):
        ours = metrics.mean_ap(metrics.ap_at_k(agree, orders, s, ks))
        theirs = [ref_map(q_labels.tolist(), d_labels.tolist(), orders.tolist(), s, k) for k in ks]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


# ---------- the exact random baseline ----------

def test_random_hand_worked():
    assert metrics.expected_random_ap(2, 1, 1) == pytest.approx(0.5)
    # hit at rank 1 -> AP 1, at rank 2 -> AP 1/2
    assert metrics.expected_random_ap(2, 1, 2) == pytest.approx(0.75)
    # hits {1,2}: 1, {1,3}: 1, {2,3}: 1/2 (top 2 only)
    assert metrics.expected_random_ap(3, 2, 2) == pytest.approx(2.5 / 3)
    assert metrics.expected_random_ap(10, 0, 5) == 0.0
    assert metrics.expected_random_ap(10, 10, 5) == 1.0


@pytest.mark.parametrize("n,h,k", [(6, 1, 3), (7, 3, 1), (7, 3, 4), (8, 4, 8), (8, 2, 20), (9, 5, 6), (9, 8, 2)])
def test_random_exact_matches_enumeration(n, h, k):
    assert metrics.expected_random_ap(n, h, k) == pytest.approx(ref_random_exact(n, h, k), abs=1e-12)


def test_random_matches_monte_carlo_at_paper_scale():
    rng = np.random.default_rng(0)
    n, trials = 2351, 40000
    for h, k in [(40, 10), (300, 100), (5, 50), (2000, 30)]:
        # Simulate the top K of a uniformly random ranking as draws from an urn without
        # replacement: position i is a hit with probability (hits left) / (items left).
        left = np.full(trials, h, dtype=np.int64)
        ranked = np.zeros((trials, k), dtype=bool)
        for i in range(k):
            ranked[:, i] = rng.random(trials) * (n - i) < left
            left -= ranked[:, i]
        aps = metrics.average_precision(ranked, ks=(k,))[:, 0]
        se = aps.std() / math.sqrt(trials)
        exact = metrics.expected_random_ap(n, h, k)
        assert abs(aps.mean() - exact) < 4 * se + 1e-4, (h, k, aps.mean(), exact)


def test_random_ap_per_query():
    agree = np.array([[2, 1, 1, 0], [2, 2, 2, 2], [0, 0, 0, 0]])
    out = metrics.random_ap(agree, threshold=2, ks=(1, 4))
    np.testing.assert_allclose(out[0], [0.25, (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4])
    np.testing.assert_allclose(out[1], [1.0, 1.0])
    np.testing.assert_allclose(out[2], [0.0, 0.0])
