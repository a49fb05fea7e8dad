"""Searching a store with a presence model.

    engine.py      SearchEngine: scores a query against every stored item, and search()
    database.py    the database side: per-item rows computed once per (store, model)
    cache.py       where that database side is cached beside the store, and its layout
    backends.py    where the arithmetic runs: numpy (no torch) or torch, one interface
    kernel.py      the pair-specific arithmetic on chunks of items (torch)
    kernel_numpy.py  the same in numpy
    rerank.py      a compact cache's search: which items are re-scored exactly
    query.py       what the query is, and which stored items are the query itself
    filters.py     --require, --exclude, --min-level, and what each removes
    ranking.py     the ranking modes, near-duplicates, the fitted blend weight
    moments.py     one result per moment, or per file
    results.py     ScoreMatrix, Result, SearchResults, and the model's own order (rank)
    fingerprint.py a time-aware fingerprint of the sound that confirms near-duplicates
    prints.py      sound prints of the store's long recordings, kept beside it
    contains.py    where the query's own sound occurs inside long recordings, located in time
    duplicates.py  groups of exact and near-identical recordings in a store
"""
