"""How long the reference supervisor keeps reported results: by age, by count and by bytes.

A result is kept with the run's whole report, its output included, so a busy farm's
``results`` table grows by megabytes a minute. ``ResultRetention`` bounds it: results
stored longer ago than ``retention_s`` go at open and every ``prune_every`` results, and
neither the count nor the payloads' bytes ever pass ``max_results`` and ``max_bytes``
(the oldest go first, in the transaction that stores the new ones; never the newest, so
a result larger than ``max_bytes`` is kept, alone). None keeps results for ever, the
library's default. The payloads' bytes are summed at open (which reads them: the
executor's ``quick_check`` of the file reads every page anyway) and kept from there.

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
#: A stored payload's size in bytes, in SQL.
PAYLOAD_BYTES: Final = "length(CAST(payload AS BLOB))"
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
        max_bytes: int | None = None,
        prune_every: int = PRUNE_EVERY,
    ) -> None:
        if retention_s is not None and not retention_s > 0:
            raise ValueError(f"result_retention_s: expected seconds > 0, got {retention_s}")
        if max_results is not None and max_results <= 0:
            raise ValueError(f"max_results: expected a count > 0, got {max_results}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_result_bytes: expected a size > 0, got {max_bytes}")
        self._db = db
        self._retention_s = retention_s
        self._max_results = max_results
        self._max_bytes = max_bytes
        self._prune_every = prune_every
        self._since_prune = 0
        self._count = self._counted()
        self._bytes = 0
        if max_bytes is not None:
            query = f"SELECT total({PAYLOAD_BYTES}) FROM results"  # noqa: S608 - our expression
            (total,) = self._db.execute(query).fetchone()
            self._bytes = int(total)

    def _counted(self) -> int:
        (count,) = self._db.execute("SELECT count(*) FROM results").fetchone()
        return int(count)

    def prune(self, now: float) -> int:
        """Drop results older than the retention, then the oldest beyond the count."""
        self._since_prune = 0
        dropped = 0
        if self._retention_s is not None:
            dropped += self._delete(
                "DELETE FROM results WHERE time < ?", (now - self._retention_s,)
            )
        self._count = self._counted()
        if self._max_results is not None:
            dropped += self._drop_oldest(self._count - self._max_results)
        return dropped + self._drop_oldest_beyond_bytes()

    def added(self, new: int, now: float, new_bytes: int = 0) -> None:
        """``new`` results were just stored, ``new_bytes`` more payload (less when replaced).

        Keeps the count and the bytes within their bounds, and prunes by age now and then.
        """
        self._count += new
        self._bytes += new_bytes
        if self._max_results is not None:
            self._drop_oldest(self._count - self._max_results)
        self._drop_oldest_beyond_bytes()
        self._since_prune += new
        if self._since_prune >= self._prune_every:
            self.prune(now)

    def _drop_oldest(self, excess: int) -> int:
        if excess <= 0:
            return 0
        return self._delete(
            "DELETE FROM results WHERE rowid IN"
            " (SELECT rowid FROM results ORDER BY time, rowid LIMIT ?)",
            (excess,),
        )

    def _drop_oldest_beyond_bytes(self) -> int:
        """The oldest results, one at a time, while the payloads pass ``max_bytes``; never the last."""
        dropped = 0
        while self._max_bytes is not None and self._bytes > self._max_bytes and self._count > 1:
            if not self._drop_oldest(1):
                break
            dropped += 1
        return dropped

    def _delete(self, delete: str, parameters: tuple[float | int, ...]) -> int:
        """Run a DELETE of results; keep the count and the bytes; how many went."""
        if self._max_bytes is None:
            gone = max(self._db.execute(delete, parameters).rowcount, 0)
        else:
            # Their payloads are read as they go (a deletion reads their pages anyway).
            sizes = self._db.execute(f"{delete} RETURNING {PAYLOAD_BYTES}", parameters).fetchall()
            gone = len(sizes)
            self._bytes -= sum(int(size) for (size,) in sizes)
        self._count -= gone
        return gone


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
