"""Where the query's own sound occurs inside longer recordings, located to 16 ms: a one-shot used
in a session mix, a bark a field recording caught, the same siren under traffic.

The acoustic cosine and the model compare whole items: a 0.3 s bark is 3% of a 10 s window of
street noise, and even an event item cut around it carries the street. Measured on
bench/moments.py, the item holding an inserted one-shot ranked below 100 other items by
acoustic cosine for half the queries, at any event-to-background ratio. The sound itself is
still there, so it is looked for directly:

    query     the query file (no longer than MAX_QUERY_SECONDS) fingerprinted as for
              near-duplicates (search.fingerprint: 16 kHz, 40 Mel bands every 16 ms, dB,
              trimmed of silence, floored 40 dB under its loudest).
    scan      at every offset into the print of each long recording (search.prints), the
              Pearson correlation of the two dB images over the query's loud bins: those
              within LOUD_DB of its loudest (its quiet bins are left out because other sound
              fills them). The CANDIDATES best offsets per recording scoring SCAN_SCORE or
              more go on.
    score     at each candidate (and TRY_FRAMES either side): where the query's sound is
              present under other sound, the mixture's dB is the query's plus a gain g in the
              bins the query dominates, and more where the other sound does. So g is read as
              a low quantile (GAIN_QUANTILE) of mixture minus query over the loud bins, the
              bins within BACKGROUND_DB above query + g are taken as the query's, and the
              score is their Pearson correlation times the square root of their share of
              the loud bins (a match made of a few bins counts for little). Elsewhere no g
              makes the mixture follow the query.
    places    candidates scoring CONTAINS_SCORE or more, best first, at most MAX_PER_FILE per
              recording and at least a query length apart.

Each place is named by the stored item of its recording that covers it best (ranking.order_items
ranks those items right after near-duplicates of the query) and by its own time range
(Result.located), which is finer than any item. The query's own recording is not searched.

LOUD_DB (of 15, 20 and 25) and CONTAINS_SCORE were chosen on bench/moments.py's validation
draw (seed 1; 6 x 3 min recordings with 30 one-shots inserted at +6, 0 and -6 dB over their
background; 46 queries, the inserted sounds and other takes of their sources), see
CONTAINS_SCORE; the figures reported in the README are from draws 0 and 2, which no choice saw. The cost is a scan of
every long recording's print per query: the query time per hour of long audio is in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from soundsearch.search.fingerprint import HOP, N_FFT, SAMPLE_RATE
from soundsearch.search.prints import FRAME_SECONDS, PrintCache, dequantise

if TYPE_CHECKING:
    from soundsearch.store import Store

LOUD_DB = 20.0
# At or above: the recording contains the query's sound at that place. Chosen on the validation
# draw (bench/moments.py --seed 1 --contains-score T, default cutting) as the value finding
# the most queries' moments in the top 5 while at most 1 query in 20 gets a claim at a wrong
# place among its results. With the scan's score alone (no second score):
#     T          0.75   0.80   0.85   0.90
#     found@5    0.587  0.543  0.522  0.435
#     wrong      0.196  0.087  0.043  0.000
# and with the gain-aware second score (module docstring), kept:
#     T                 0.80   0.85   0.90
#     found@5           0.630  0.587  0.500
#     wrong             0.087  0.022  0.000
CONTAINS_SCORE = 0.85
MAX_PER_FILE = 8
# The scan's candidates (module docstring), and the second score's settings, chosen on the
# validation draw with CONTAINS_SCORE (probe: of 3 and 6 dB, with and without the share).
SCAN_SCORE = 0.5
CANDIDATES = 8
TRY_FRAMES = 2
GAIN_QUANTILE = 30.0
BACKGROUND_DB = 6.0
# Longer queries are matched by items (and near-duplicates by search.fingerprint) only.
MAX_QUERY_SECONDS = 30.0
# Frame grids the query is tried on (query_image).
SHIFTS = 4
# A query this short (after trimming) carries too little to locate: 4 frames, 64 ms.
MIN_QUERY_FRAMES = 4
# Print frames per FFT: long recordings are scanned in pieces of this many frames (4.4 min),
# overlapping by a query length, so memory stays bounded whatever their length.
_CHUNK = 1 << 14


@dataclass(frozen=True)
class Located:
    """Per store row: the best place inside it where the query's sound was found."""

    score: np.ndarray  # (N,) float64, nan where none
    start: np.ndarray  # (N,) seconds into the item's file, nan where none
    end: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(~np.isnan(self.score))

    def take(self, rows: np.ndarray) -> "Located":
        """The same at store rows `rows` only (a prefiltered search's positions)."""
        return Located(self.score[rows], self.start[rows], self.end[rows])


def _query_mask(query_db: np.ndarray) -> np.ndarray:
    return query_db >= query_db.max() - LOUD_DB


class Scanner:
    """One query's scan of prints (module docstring). The query's side of every correlation
    is transformed once, at a fixed FFT size, and reused for every piece of every print, so a
    scan costs two transforms of the print per piece; float32 on a print centred per piece
    (the score ignores a constant added to the print). numpy's FFT, not scipy's: as fast at
    these power-of-two sizes, and importing scipy would cost a cold query 0.2 s."""

    def __init__(self, query_db: np.ndarray):
        qs = np.asarray(query_db, np.float64)
        qs = qs[None] if qs.ndim == 2 else qs
        self.nq = qs.shape[1]
        masks = np.stack([_query_mask(q) for q in qs])
        self.images, self.masks = qs, masks
        self.bands = np.flatnonzero(masks.any((0, 1)))
        self.size = max(_CHUNK, 1 << int(np.ceil(np.log2(2 * self.nq))))
        self.kernels = []
        for q, mask in zip(qs, masks):
            m = mask[:, self.bands].astype(np.float32)
            qm = (q[:, self.bands] * m).astype(np.float64)
            n_in = float(m.sum())
            sq, sqq = qm.sum(), (qm * q[:, self.bands]).sum()
            spec_m = np.conj(np.fft.rfft(m, self.size, axis=0))
            spec_qm = np.conj(np.fft.rfft(qm.astype(np.float32), self.size, axis=0))
            self.kernels.append((spec_m, spec_qm, n_in, sq, max(sqq - sq * sq / n_in, 1e-9)))

    def scores(self, print_u8: np.ndarray) -> np.ndarray:
        """(offsets,) float32: the best score over the query's frame grids at each offset of
        the print at which the whole query fits; empty when the print is shorter."""
        nq, nf = self.nq, print_u8.shape[0]
        if nf < nq or nq == 0:
            return np.zeros(0, np.float32)
        out = np.full(nf - nq + 1, -1.0, np.float32)
        step = self.size - nq + 1
        for a in range(0, nf - nq + 1, step):
            piece = dequantise(print_u8[a : min(nf, a + self.size), self.bands])
            centre = float(piece.mean())
            piece -= centre
            valid = piece.shape[0] - nq + 1
            fp = np.fft.rfft(piece, self.size, axis=0)
            fp2 = np.fft.rfft(piece * piece, self.size, axis=0)
            for spec_m, spec_qm, n_in, sq, var_q in self.kernels:
                sm = np.fft.irfft((spec_m * fp).sum(1), self.size)[:valid].astype(np.float64)
                smm = np.fft.irfft((spec_m * fp2).sum(1), self.size)[:valid].astype(np.float64)
                sqm = np.fft.irfft((spec_qm * fp).sum(1), self.size)[:valid].astype(np.float64)
                var_p = np.maximum(smm - sm * sm / n_in, 0.0)
                score = (sqm - sq * sm / n_in) / np.sqrt(var_q * np.maximum(var_p, 1e-9))
                # A stretch with (almost) no level change under the query's loud bins (digital
                # silence, a clipped floor) has no shape to follow.
                score[var_p < 1e-4 * n_in] = 0.0
                np.maximum(out[a : a + valid], score, out=out[a : a + valid])
        return out


    def places(self, print_u8: np.ndarray) -> list[tuple[int, float]]:
        """(offset, score) of the places in a print where the query's sound is (module
        docstring: the scan's candidates, scored again by the gain-aware correlation), best
        first."""
        scan_scores = self.scores(print_u8)
        nq = self.nq
        cands = places(scan_scores, max(1, nq // 2), threshold=SCAN_SCORE, limit=CANDIDATES)
        found = np.full(scan_scores.size, -1.0)
        for offset, _ in cands:
            lo, hi = max(0, offset - TRY_FRAMES), min(scan_scores.size, offset + TRY_FRAMES + 1)
            windows = dequantise(np.stack([print_u8[o : o + nq] for o in range(lo, hi)])).astype(np.float64)
            best = np.max([_gain_score(q[m], windows[:, m]) for q, m in zip(self.images, self.masks)], axis=0)
            found[lo:hi] = np.maximum(found[lo:hi], best)
        return places(found, nq) if cands else []


def scan(query_db: np.ndarray, print_u8: np.ndarray) -> np.ndarray:
    """(offsets,) float32: the score (module docstring) of the query's (frames, bands) dB image
    at each offset of a print at which the whole query fits; empty when the print is shorter.
    A (shifts, frames, bands) stack of images of the query on shifted frame grids
    (query_image) scores each offset by its best shift."""
    return Scanner(query_db).scores(print_u8)


def places(scores: np.ndarray, query_frames: int, threshold: float | None = None, limit: int = MAX_PER_FILE) -> list[tuple[int, float]]:
    """(offset, score) of the best offsets at or above `threshold` (default CONTAINS_SCORE),
    best first, at least a query length apart, at most `limit`."""
    threshold = CONTAINS_SCORE if threshold is None else threshold
    over = np.flatnonzero(scores >= threshold)
    chosen: list[tuple[int, float]] = []
    for i in over[np.argsort(-scores[over], kind="stable")]:
        if all(abs(int(i) - j) >= query_frames for j, _ in chosen):
            chosen.append((int(i), float(scores[i])))
            if len(chosen) >= limit:
                break
    return chosen


def _gain_score(query: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(W,) the gain-aware score of the query's loud bins (B,) against each of W windows'
    same bins (W, B)."""
    d = windows - query[None]
    g = np.percentile(d, GAIN_QUANTILE, axis=1, keepdims=True)
    sel = (d - g) < BACKGROUND_DB
    n = sel.sum(1).astype(np.float64)
    x = np.where(sel, query[None], 0.0)
    y = np.where(sel, windows, 0.0)
    nn = np.maximum(n, 1.0)
    mx, my = x.sum(1) / nn, y.sum(1) / nn
    cov = (x * y).sum(1) / nn - mx * my
    vx = (x * x).sum(1) / nn - mx * mx
    vy = (y * y).sum(1) / nn - my * my
    r = np.where((n > 5) & (vx > 1e-9) & (vy > 1e-9), cov / np.sqrt(np.maximum(vx * vy, 1e-18)), 0.0)
    return r * np.sqrt(n / query.size)


def query_image(query_path, segments) -> np.ndarray | None:
    """(SHIFTS, frames, bands): the query's fingerprint image on SHIFTS frame grids, HOP /
    SHIFTS samples apart, or None when it cannot be located (not a file, too long, too short,
    silent or unreadable). A sound that starts between two of the print's frames matches the
    grid nearest it: measured on a chirp call, half a frame (8 ms) off cost 0.22 of the score."""
    from soundsearch.search.fingerprint import fingerprint, read_signal

    if query_path is None or not segments:
        return None
    start, end = min(s for s, _ in segments), max(e for _, e in segments)
    if end - start > MAX_QUERY_SECONDS:
        return None
    x = read_signal(query_path, start, end)
    if x is None:
        return None
    images = [fingerprint(np.concatenate([np.zeros(i * HOP // SHIFTS, np.float32), x]), SAMPLE_RATE) for i in range(SHIFTS)]
    if any(img is None for img in images):
        return None
    n = min(img.shape[0] for img in images)
    if n < MIN_QUERY_FRAMES:
        return None
    return np.stack([img[:n] for img in images])


def locate(store: "Store", query_path, segments, cache: PrintCache | None = None) -> Located | None:
    """Where the query's sound is inside the store's long recordings (module docstring), as the
    best place per store row; None when the query cannot be located or nothing can hold it.
    Places in the query's own file that overlap the query (itself) are not places. `cache`:
    where prints are kept (default: the store's prints/ folder)."""
    img = query_image(query_path, segments)
    if img is None:
        return None
    cache = cache or PrintCache(store.path)
    longs, _ = cache.recordings(store)
    if not longs:
        return None
    own = str(query_path)  # absolute, as query_features gives it and the store keeps paths
    q0, q1 = min(s for s, _ in segments), max(e for _, e in segments)
    table = store.item_table()
    n = len(table)
    score = np.full(n, np.nan)
    start = np.full(n, np.nan)
    end = np.full(n, np.nan)
    length = ((img.shape[1] - 1) * HOP + N_FFT) / SAMPLE_RATE
    prints = cache.prints(store, sorted(longs))
    scanner = Scanner(img)
    for path, u8 in prints.items():
        rows = longs[path]
        for offset, value in scanner.places(u8):
            t0 = offset * FRAME_SECONDS
            t1 = t0 + length
            if path == own and t0 < q1 and t1 > q0:
                continue
            row = _covering_item(table, rows, t0, t1)
            if row is not None and not value <= score[row]:
                score[row], start[row], end[row] = value, t0, t1
    if np.all(np.isnan(score)):
        return None
    return Located(score, start, end)


def _covering_item(table, rows: list[int], t0: float, t1: float) -> int | None:
    """The row among `rows` whose item covers [t0, t1) most (`table`: the store's ItemTable);
    the shorter item on a tie."""
    best, key = None, None
    for r in rows:
        start, end = float(table.start[r]), float(table.end[r])
        shared = min(end, t1) - max(start, t0)
        if shared <= 0:
            continue
        k = (round(shared, 6), -(end - start))
        if key is None or k > key:
            best, key = r, k
    return best


__all__ = ["CONTAINS_SCORE", "LOUD_DB", "MAX_QUERY_SECONDS", "Located", "Scanner", "locate", "places", "query_image", "scan"]
