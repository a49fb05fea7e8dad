"""Counting recordings, not items, so that finer items cannot inflate a figure.

A store may cut a long recording into many items, overlapping ones included (audio.Cutting:
windows every few seconds, event items). Counted item by item, such a recording would fill a
ranking with copies of one relevant answer, and a long query would weigh as many queries as it
has items. So the protocol counts each recording once:

    database   a system's ranking of items becomes a ranking of recordings, each at its best
               (first ranked) item; a recording's items share its labels, so its agreement
               with a query is the recording's.
    queries    every query item is scored; the scores of one recording's items are averaged,
               so a recording is one query whatever it is cut into.

Where every recording is one item (10 s clips, one-shots) nothing changes: the orders and
scores are the items' own.
"""

from __future__ import annotations

import numpy as np

from soundsearch import metrics


class Recordings:
    """Which recording each query and database item belongs to (the dataset's example index,
    DatasetFeatures.test_example / train_example), and the labels per recording."""

    def __init__(self, test_example, train_example, test_labels, train_labels):
        self.q_rec, q_first = _dense(test_example)
        self.db_rec, db_first = _dense(train_example)
        self.test_labels = np.asarray(test_labels)
        self.q_labels = self.test_labels[q_first]  # (Rq, C)
        self.db_labels = np.asarray(train_labels)[db_first]  # (Rd, C)
        self.n_queries = int(q_first.size)
        self.n_database = int(db_first.size)
        self.most_items = int(np.bincount(self.db_rec).max()) if self.db_rec.size else 1
        self.one_item_each = self.db_rec.size == self.n_database and self.q_rec.size == self.n_queries

    def items_to_rank(self, top: int) -> int:
        """How many items a system must rank so that `top` distinct recordings are among them."""
        return min(self.db_rec.size, top * self.most_items)

    def agreement(self) -> np.ndarray:
        """(query items, database recordings) agreement."""
        return metrics.agreement(self.test_labels, self.db_labels)

    def rank_recordings(self, order: np.ndarray, top: int) -> np.ndarray:
        """(query items, top) database recordings, each at its first item in `order` (rows of
        item positions, best first)."""
        order = np.asarray(order)
        top = min(top, self.n_database)
        if self.one_item_each:
            return order[:, :top]  # each item is its own recording, numbered as the items
        recs = self.db_rec[order]
        out = np.empty((order.shape[0], top), dtype=np.int64)
        for q in range(order.shape[0]):
            _, first = np.unique(recs[q], return_index=True)
            out[q] = recs[q][np.sort(first)[:top]]
        return out

    def per_recording(self, per_item: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Per-query-item scores ({s: (items, K)}) averaged over each query recording's items."""
        if self.one_item_each:
            return per_item
        counts = np.bincount(self.q_rec, minlength=self.n_queries).astype(np.float64)[:, None]
        out = {}
        for s, v in per_item.items():
            v = np.asarray(v, dtype=np.float64)
            sums = np.zeros((self.n_queries, v.shape[1]))
            np.add.at(sums, self.q_rec, v)
            out[s] = sums / counts
        return out


def _dense(example: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each item's recording as 0..R-1 in order of first appearance, each recording's first item)."""
    example = np.asarray(example, dtype=np.int64)
    if example.size == 0:
        return example, example
    _, first, inverse = np.unique(example, return_index=True, return_inverse=True)
    # Number recordings by where they first appear, so one item each keeps the items' order.
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse], np.sort(first)


__all__ = ["Recordings"]
