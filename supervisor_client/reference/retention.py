"""How long the reference supervisor keeps reported results: by age and by count.

A result is kept with the run's whole report, its output included, so a busy farm's
``results`` table grows by megabytes a minute. ``ResultRetention`` bounds it: results
stored longer ago than ``retention_s`` go at open and every ``prune_every`` results, and
the count never passes ``max_results`` (the oldest go first, in the transaction that
stores the new ones). None keeps results for ever, the library's default.

What goes is the stored result only: the job's history lines (``result of invocation
...``) and its callbacks' counts stay. A report of a result no longer kept is stored
again as new (a history line without "replaces"), so the count must cover a resent batch
of reports (the executor's outbox sends up to 64 at once).

A prune of most of a large table (the first start after an upgrade from a version that
kept every result) leaves the file as large as it was; ``compact`` gives the space back.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Final

logger = logging.getLogger(__name__)

#: Age pruning runs after this many new results (the count holds at every write).
PRUNE_EVERY: Final = 50
#: ``compact`` rewrites the file when at least this much of it, and half of it, is free.
COMPACT_FREE_BYTES: Final = 64 << 20


class ResultRetention:
    """The bounds of the ``results`` table of one supervisor database (used under its lock).

    Raises ValueError naming the argument when a bound is not positive.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        retention_s: float | None,
        max_results: int | None,
        prune_every: int = PRUNE_EVERY,
    ) -> None:
        if retention_s is not None and not retention_s > 0:
            raise ValueError(f"result_retention_s: expected seconds > 0, got {retention_s}")
        if max_results is not None and max_results <= 0:
            raise ValueError(f"max_results: expected a count > 0, got {max_results}")
        self._db = db
        self._retention_s = retention_s
        self._max_results = max_results
        self._prune_every = prune_every
        self._since_prune = 0
        self._count = self._counted() if max_results is not None else 0

    def _counted(self) -> int:
        (count,) = self._db.execute("SELECT count(*) FROM results").fetchone()
        return int(count)

    def prune(self, now: float) -> int:
        """Drop results older than the retention, then the oldest beyond the count."""
        self._since_prune = 0
        dropped = 0
        if self._retention_s is not None:
            cursor = self._db.execute(
                "DELETE FROM results WHERE time < ?", (now - self._retention_s,)
            )
            dropped += max(cursor.rowcount, 0)
        if self._max_results is not None:
            self._count = self._counted()
            dropped += self._drop_oldest(self._count - self._max_results)
        return dropped

    def added(self, new: int, now: float) -> None:
        """``new`` results were just stored: keep the count, and prune by age now and then."""
        if self._max_results is not None:
            self._count += new
            self._drop_oldest(self._count - self._max_results)
        self._since_prune += new
        if self._since_prune >= self._prune_every:
            self.prune(now)

    def _drop_oldest(self, excess: int) -> int:
        if excess <= 0:
            return 0
        self._db.execute(
            "DELETE FROM results WHERE rowid IN"
            " (SELECT rowid FROM results ORDER BY time, rowid LIMIT ?)",
            (excess,),
        )
        self._count -= excess
        return excess


def compact(db: sqlite3.Connection, name: str) -> None:
    """VACUUM the database when most of it is free pages (outside any transaction).

    Free pages are reused by later writes, so this matters only after a prune far larger
    than what comes back: the first one after an upgrade. A VACUUM that fails (no room
    for the copy it makes) is logged; the database is unchanged and works as before.
    """
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    if free * page_size < COMPACT_FREE_BYTES or free * 2 < pages:
        return
    logger.info(
        "%s: compacting: %d MiB of its %d MiB are free after pruning old results",
        name,
        free * page_size >> 20,
        pages * page_size >> 20,
    )
    try:
        db.execute("VACUUM")
    except sqlite3.OperationalError as err:
        logger.warning("%s: not compacted (%s); it keeps its size and works as before", name, err)
