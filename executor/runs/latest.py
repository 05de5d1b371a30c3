"""Of several runs of one invocation id, the one that ended last: the rule the supervisor keeps.

The history and the outbox both meet two runs of an id in one write (a group commit); the
supervisor keeps the result with the latest ``ended_at`` (``ReportResultRequest``), and
so do they.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

_T = TypeVar("_T")


def latest_per_key(
    items: Iterable[_T], *, key: Callable[[_T], str], ended_at: Callable[[_T], float]
) -> list[_T]:
    """One item per key, the one that ended last (of equal ends, the later given), in first-seen order."""
    latest: dict[str, _T] = {}
    for item in items:
        kept = latest.get(key(item))
        if kept is None or ended_at(item) >= ended_at(kept):
            latest[key(item)] = item
    return list(latest.values())
