"""Values the library and the command line share, importable without numpy or torch.

`soundsearch --help`, shell completion and `soundsearch models` run without numpy (and torch):
completion runs the program on every Tab. The help texts and defaults they show live here, and
the library modules that need numpy read the same values from here, so nothing is copied:

    DUPLICATE_COSINE   search.ranking flags near-duplicates of a query with it; `duplicates`
                       groups copies at it by default
    RANKING_MODES,     the `--mode` choices and their help (search.ranking.RankingMode names
    MODE_HELP          the same modes)
    TUNABLE_DEFAULTS   each featurizer's tunable parameters with their defaults, which
                       `models` describes a model's featurizer by
"""

from __future__ import annotations

from typing import Any

# Acoustic cosine at or above which a stored item counts as a near-duplicate of the query,
# chosen on the real corpus with the default aisfx features (the measurements are written
# beside its import in search/ranking.py; tests/test_duplicates.py repeats them).
DUPLICATE_COSINE = 0.90

# The ranking modes (search.ranking.RankingMode) and what each orders by, for `--mode`.
MODE_HELP: dict[str, str] = {
    "presence": "the model's similarity level, then its expected agreement (same sound events present and absent)",
    "blend": "the model's expected agreement blended with acoustic similarity, by the weight fitted on validation data",
    "acoustic": "acoustic similarity alone (sounds like, rather than contains the same)",
}
RANKING_MODES: tuple[str, ...] = tuple(MODE_HELP)

# Each featurizer's tunable parameters with their defaults, the same on every machine (unlike
# the checksum of whichever weights are installed). Describing a model by these needs no
# featurizer built: building aisfx or openl3 imports torch and loads weights, seconds that
# `soundsearch models` should not cost. Tests check they are the featurizers' own defaults.
TUNABLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "logmel": {"sample_rate": 22050, "n_fft": 4096, "hop_length": 2048, "n_mels": 128, "fmin": 0.0,
               "fmax": 11025.0, "steps": 10, "stats": "mean,std,max"},
    "aisfx": {"steps": 10, "stats": "mean,max", "hop_frames": 100},
    "openl3": {"content_type": "env", "input_repr": "mel256", "embedding_size": 512, "hop_seconds": 1.0,
               "steps": 10, "stats": "mean", "frontend": "kapre-0.1.4"},
}

# Stores of at least this many items search with the candidate prefilter (search.prefilter)
# in the blend and acoustic modes: a cheap predictor of the score picks the candidates, and
# only those are scored exactly. Measured by bench/query.py --clustered --prefilter on 2 shared cores, one
# run per size: the exact scan costs 126 ms at 10k items and 1193 ms at 100k (~12 us per item),
# so ~0.25 s here; the prefilter with 1000 candidates 23 and 28 ms; its index builds in 12% and
# 24% of the search cache's build (0.39 s vs 3.25 s; 7.1 s vs 29.8 s).
PREFILTER_MIN_ITEMS = 20_000
# Candidates scored exactly (`query --candidates`) through the acoustic HNSW index (presence
# searches asked for the prefilter; bench comparisons): at least PREFILTER_CANDIDATES, and at
# least PREFILTER_SHARE of the store. Recall of the exact top 10 (50 queries, blend w=0.75): 0.974
# with 1000 candidates at 10k items (10%), but 0.772 with 1000 at 100k (1%): the share is what
# held the recall; 10% at 100k is an extrapolation from the 10k run, not yet measured.
PREFILTER_CANDIDATES = 1000
PREFILTER_SHARE = 0.10
# The presence predictor (search.prefilter: the blend score predicted from each item's
# self-presence and its acoustic cosine), what blend and acoustic searches use, scores exactly
# PREFILTER_CANDIDATES items at every store size. Recall of the exact top 10, bench/query.py
# --clustered --prefilter, 50 queries, one run per size on 2 shared cores: 100k items, 500 /
# 1000 / 2000 candidates 0.992 / 0.998 / 1.000 (the float32 predictor); 1M items (the int8
# predictor), 1000 / 2000 / 5000 / 10000: 0.986 / 0.998 / 1.000 / 1.000, worst query 0.8 / 0.9
# / 1 / 1. A count that grew with the store (1%: 10,000 at 1M) paid ~3x the time there for
# the last percent: the exact scoring of the candidates is most of a prefiltered search.

# Stores of at least this many items keep the search cache compact (search.cache: the halves in
# bfloat16, the top re-scored exactly from float32 values, search.rerank), so the same results
# for about half the disk and memory: 11.7 GB instead of ~20 GB at 1M logmel items. Below it
# float32, whose full scans are faster with the numpy backend on CPUs without bfloat16
# products; at this size the float32 cache would be ~4.5 GB (logmel) and most searches
# (blend, acoustic) score only the prefilter's candidates, so the slower full scan is rare.
COMPACT_CACHE_MIN_ITEMS = 200_000
COMPACT_CACHE_DTYPE = "bfloat16"

# A query of up to 30 s also looks for its own sound inside the store's long recordings
# (search.contains) when they add up to at most this many hours: the scan costs about 0.25-0.4 s
# per hour of them per query on 2 busy cores, so 10 hours keep it within ~3 s. Past that it
# runs only when asked (`query --inside`), and the query says it was not made.
INSIDE_MAX_HOURS = 10.0
