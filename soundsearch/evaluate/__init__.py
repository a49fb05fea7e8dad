"""The paper's evaluation protocol: mAP_s@K of query-by-example retrieval, with baselines.

Queries are the dataset's test recordings, the database its training recordings, each counted
once however a store cuts it into items (recordings.py). Queries are grouped by how many categories they hold: single-label,
multi-label, and none (reported on its own rather than dropped). Every system is one ranking of
the database per query; the random baseline is the exact expectation over random rankings.

    protocol.py  evaluate(): load, featurize (cached), rank with every system, score
    systems.py   the systems (the model through the search engine, cosine baselines) and scoring
    recordings.py  item rankings and scores turned into recording ones
    report.py    EvalReport: per-query AP, mAP per query group
    plot.py      the paper's Fig. 3
"""

from soundsearch.evaluate.plot import plot_report
from soundsearch.evaluate.protocol import VARIANTS, evaluate, parse_ints
from soundsearch.evaluate.report import (
    COSINE_ITEM,
    COSINE_MEAN,
    COSINE_STATS,
    COSINES,
    GROUP_TITLES,
    GROUPS,
    RANDOM,
    EvalReport,
    SystemResult,
)
from soundsearch.evaluate.systems import (
    cosine_scores,
    feature_norm,
    item_stats_scores,
    model_order,
    pooled,
    query_groups,
    random_per_query,
    score_per_query,
    top_order,
)

__all__ = [
    "COSINES",
    "COSINE_ITEM",
    "COSINE_MEAN",
    "COSINE_STATS",
    "GROUPS",
    "GROUP_TITLES",
    "RANDOM",
    "VARIANTS",
    "EvalReport",
    "SystemResult",
    "cosine_scores",
    "evaluate",
    "feature_norm",
    "item_stats_scores",
    "model_order",
    "parse_ints",
    "plot_report",
    "pooled",
    "query_groups",
    "random_per_query",
    "score_per_query",
    "top_order",
]
