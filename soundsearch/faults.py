"""Named fault points: die like `kill -9` at an exact moment, for the crash tests.

Crash safety is claimed for the moments between two steps of a commit (rows written but not
fsync'ed, fsync'ed but not committed, committed but not cleaned up, ...). A kill at a random time
rarely lands in those windows, which are microseconds wide; `point(name)` placed in each of them
lets tests/test_faults.py land there every time:

    SOUNDSEARCH_FAULT=write.before_commit:3 soundsearch index ...

makes the process exit with status 137 (what a shell reports for SIGKILL) the 3rd time it reaches
`point("write.before_commit")`. `os._exit` runs no cleanup: no `finally`, no atexit, no SQLite
rollback, no buffered-file flush beyond what the code itself already did, as with a real kill.

The variable is read once, at import; without it `point` is one comparison. A malformed value is
ignored rather than reported: this is a test hook, never a user setting.
"""

from __future__ import annotations

import os

ENV = "SOUNDSEARCH_FAULT"
EXIT_STATUS = 137  # 128 + SIGKILL


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value or ":" not in value:
        return None
    name, _, n = value.rpartition(":")
    try:
        count = int(n)
    except ValueError:
        return None
    return (name, count) if name and count >= 1 else None


_TARGET = _parse(os.environ.get(ENV))
_seen = 0


def point(name: str) -> None:
    """Exit at once with status 137 if this is the armed point's n-th passage; else nothing."""
    global _seen
    if _TARGET is None or name != _TARGET[0]:
        return
    _seen += 1
    if _seen == _TARGET[1]:
        os._exit(EXIT_STATUS)
