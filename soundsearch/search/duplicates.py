"""Groups of exact and near-identical recordings in a store (same audio re-encoded, trimmed,
gain-changed), from the acoustic vectors the search engine already caches.

Exact copies: items whose stored features are identical (hashed rows). Near copies: items whose
acoustic cosine (ranking's standardised whole-item statistics) reaches the threshold,
constants.DUPLICATE_COSINE by default, the value the search flags copies of a query with, and
whose sounds follow each other over time (search.fingerprint, as search confirms the copies of a
query: other takes of one source reach the cosine too, but not the fingerprint; a pair whose
files cannot be read is kept on the cosine alone). Pairs
are found with a blocked matrix product over the upper triangle (memory stays at one block of
similarities) and grouped transitively with union-find. Items of one recording never pair with
each other: the windows of a steady ambience are alike, not copies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

BLOCK = 2048  # rows per block: 2048 x N float32 similarities at a time


@dataclass(frozen=True)
class Member:
    row: int
    path: str
    start: float
    end: float
    file_duration: float
    cosine: float  # to the group's first member


@dataclass(frozen=True)
class Group:
    kind: str  # "exact": identical stored features; "near": acoustic cosine >= threshold
    members: list[Member]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_pairs(vectors: np.ndarray, file_ids: np.ndarray, threshold: float, block: int = BLOCK):
    """(i, j, cosine) with i < j, cosine >= threshold, different files; blocked products."""
    import torch

    a = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    n = a.shape[0]
    out_i, out_j, out_c = [], [], []
    for s in range(0, n, block):
        e = min(n, s + block)
        sims = (a[s:e] @ a[s:].T).numpy()  # rows s..e against s..n: the upper triangle
        ii, jj = np.nonzero(sims >= threshold)
        jj = jj + s
        ii = ii + s
        keep = (jj > ii) & (file_ids[ii] != file_ids[jj])
        out_i.append(ii[keep])
        out_j.append(jj[keep])
        out_c.append(sims[ii[keep] - s, jj[keep] - s])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_c)


class _Fingerprints:
    """Each item's fingerprint (search.fingerprint), made once, when a pair first needs it."""

    def __init__(self, items):
        self.items = items
        self.cache: dict[int, object] = {}

    def get(self, row: int):
        if row not in self.cache:
            from soundsearch.search.fingerprint import read_fingerprint

            it = self.items[row]
            self.cache[row] = read_fingerprint(it.path, it.start, it.end)
        return self.cache[row]

    def same_sound(self, i: int, j: int) -> bool:
        """Whether the pair's sounds follow each other over time; True when either cannot be
        read (the acoustic cosine decides alone, as search does for items it did not compare)."""
        from soundsearch.search.fingerprint import DUPLICATE_FINGERPRINT, similarity

        a, b = self.get(i), self.get(j)
        if a is None or b is None:
            return True
        return max(similarity(a, b), similarity(b, a)) >= DUPLICATE_FINGERPRINT


def find_duplicates(engine, threshold: float | None = None) -> list[Group]:
    """Exact groups first (largest first), then near groups (largest, then closest first)."""
    from soundsearch.constants import DUPLICATE_COSINE

    threshold = DUPLICATE_COSINE if threshold is None else float(threshold)
    store = engine.store
    table = store.item_table()
    n = len(table)
    if n == 0:
        return []
    items = store.items()
    feats = store.features()
    names = table.path_names()  # as str(ItemRecord.path) spells them
    paths = [names[f] for f in table.file_index.tolist()]
    _, file_number = np.unique(np.array(names, dtype=object), return_inverse=True)
    file_ids = file_number[table.file_index]
    vectors = engine.acoustic_matrix()

    # Exact: identical feature rows from different files.
    by_hash: dict[bytes, list[int]] = {}
    for r in range(n):
        by_hash.setdefault(hashlib.blake2b(np.ascontiguousarray(feats[r]).tobytes(), digest_size=16).digest(), []).append(r)
    exact_sets = [rows for rows in by_hash.values() if len({file_ids[r] for r in rows}) > 1]
    in_exact = {r for rows in exact_sets for r in rows}

    uf = _UnionFind(n)
    ii, jj, _ = near_pairs(vectors, file_ids, threshold)
    heard = _Fingerprints(items)
    for i, j in zip(ii.tolist(), jj.tolist()):
        if heard.same_sound(i, j):
            uf.union(i, j)
    near: dict[int, list[int]] = {}
    for r in range(n):
        near.setdefault(uf.find(r), []).append(r)

    def member(r: int, first: int) -> Member:
        it = items[r]
        cos = float(np.dot(vectors[r], vectors[first]))
        return Member(r, paths[r], it.start, it.end, it.file_duration, round(min(cos, 1.0), 6))

    groups: list[Group] = []
    for rows in sorted(exact_sets, key=lambda rs: (-len(rs), paths[rs[0]])):
        groups.append(Group("exact", [member(r, rows[0]) for r in rows]))
    near_groups = []
    for rows in near.values():
        if len({file_ids[r] for r in rows}) < 2:
            continue
        # A group that is exactly one exact set adds nothing: it is listed above.
        if all(r in in_exact for r in rows) and any(set(rows) == set(e) for e in exact_sets):
            continue
        first = rows[0]
        members = [member(r, first) for r in rows]
        members = [members[0]] + sorted(members[1:], key=lambda m: -m.cosine)
        near_groups.append(Group("near", members))
    near_groups.sort(key=lambda g: (-len(g.members), -min(m.cosine for m in g.members[1:]), g.members[0].path))
    return groups + near_groups


def groups_document(groups: list[Group], threshold: float, items: int) -> dict:
    return {
        "threshold": threshold,
        "items_compared": items,
        "groups": [
            {
                "kind": g.kind,
                "members": [
                    {"path": m.path, "row": m.row, "start": round(m.start, 3), "end": round(m.end, 3),
                     "file_duration": round(m.file_duration, 3), "cosine": m.cosine,
                     "windowed": m.end - m.start < m.file_duration - 1e-6}
                    for m in g.members
                ],
            }
            for g in groups
        ],
    }
