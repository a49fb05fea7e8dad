"""Which rows a search shows: one result per moment, or per file.

An item mostly inside a better-ranked item of the same file (overlapping windows, event items;
see audio.Cutting) is the same moment and is left out. By file: one result per file, its best
moment, with the count of its moments that rank above the first file left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from soundsearch.search.query import Scored
    from soundsearch.store import ItemRecord


def choose_rows(ranking, scored: Scored, cand: np.ndarray, c: int, k: int, items, by_file: bool, dup_cos, sounds, contains=None):
    """(rows to show best first, {row: moments}, the ranking's order of `cand`).

    The query recording itself comes first whatever the model says (its presence matrix with
    itself has no "differs" by construction), then its near-duplicates (`dup_cos`: each
    candidate's best acoustic cosine with a query item; `sounds`: each store row's fingerprint
    similarity with the query, nan where not compared, or None), then the items holding the
    query's sound (`contains`: search.contains scores per store row, nan elsewhere, or None). Overlapping items of one file are one
    moment, so the walk may need more than k of the order: it asks for a few times k first and
    for all of it only when those do not suffice."""
    from soundsearch.search.ranking import order_items

    s = scored
    want = min(cand.size, max(8 * k, 64))
    while True:
        ordered = order_items(
            ranking, s.level[cand], s.expected[cand], s.closeness[cand], s.acoustic[cand], c, k=want,
            is_query=s.is_self[cand], duplicate_acoustic=dup_cos,
            fingerprint=None if sounds is None else sounds[cand],
            contains=None if contains is None else contains[cand],
        )
        order = cand[ordered.order]
        chosen, moments, done = walk_moments(order, items, s.is_self, k, by_file)
        if done or want >= cand.size:
            break
        want = min(cand.size, want * 8)
    return np.asarray(chosen, dtype=np.int64), moments, ordered


def _overlap(a: "ItemRecord", b: "ItemRecord") -> bool:
    """Whether two items of one file are the same moment: they share at least half of the
    shorter one (consecutive windows, which only touch, are two moments)."""
    shared = min(a.end, b.end) - max(a.start, b.start)
    return shared > 0 and shared >= 0.5 * min(a.end - a.start, b.end - b.start)


def walk_moments(order: np.ndarray, items, is_self: np.ndarray, k: int, by_file: bool):
    """(rows to show, {row: moments}, whether the order sufficed) from rows best first.

    An item that is the same moment as a better one of its file is passed over (the query's
    own items are listed as they are). By file: the first item of each file, until k files;
    each file's moments are counted until the best item of the first file left out."""
    chosen: list[int] = []
    moments: dict[int, int] = {}
    spans: dict[str, list] = {}
    first_of: dict[str, int] = {}
    for row in order.tolist():
        if is_self[row]:
            if not by_file and len(chosen) < k:
                chosen.append(row)
            if not by_file and len(chosen) >= k:
                return chosen, moments, True
            if not by_file:
                continue
        it = items[row]
        key = str(it.path)
        seen = spans.setdefault(key, [])
        if not is_self[row] and any(_overlap(it, other) for other in seen):
            continue
        seen.append(it)
        if not by_file:
            chosen.append(row)
            if len(chosen) >= k:
                return chosen, moments, True
        elif key in first_of:
            moments[first_of[key]] += 1
        elif len(first_of) >= k:
            return chosen, moments, True  # the first file left out: counting stops here
        else:
            first_of[key] = row
            moments[row] = 1
            chosen.append(row)
    return chosen, moments, False
