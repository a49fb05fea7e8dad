"""Index library folders into a feature store.

    update.py    index_paths: scan, stat, remove what is gone, featurize what changed, compact
    batches.py   featurize in worker processes and commit in batches; Ctrl-C keeps what is done
    workers.py   the worker side: one file in, one FileEntry out, never a crash
    report.py    IndexProgress while it runs, IndexReport when it is done
"""

from soundsearch.indexing.report import IndexInterrupted, IndexProgress, IndexReport
from soundsearch.indexing.update import index_paths

__all__ = ["IndexInterrupted", "IndexProgress", "IndexReport", "index_paths"]
