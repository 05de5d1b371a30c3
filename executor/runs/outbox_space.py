"""outbox.db's size: the bound on results the supervisor has not taken, and the space given back.

While the supervisor is away every result waits in outbox.db whole (up to 2 x
``output_bytes`` each): an output flood during an outage filled the data dir's disk
the way ``history_max_bytes`` was added to prevent (60 runs of 2 MB made 128 MB). So
past ``outbox_max_bytes`` of pages in use by results waiting for delivery (the file's
pages in use, read from its header: microseconds, measured after each commit on the
loop, less what the dead letters take) the executor runs nothing new: Execute answers
UNAVAILABLE saying why, and fired callbacks wait in their queue (their firings are
durable), until delivery has taken results out; a run waiting for a slot is refused so
when it gets one (the dispatcher checks again). No result waiting is ever refused or
dropped: runs already started are recorded whatever the size, so the file may pass the
bound by those. Dead letters (results the supervisor refused for good) wait for nobody:
they are not counted there, or a supervisor refusing some would stop every run for
good, and they keep to ``outbox_max_bytes`` of their own, the oldest dropped first
(``DeadLetters.bound``). In a fleet the outbox is PostgreSQL's table, not this
file: no bound here.

A delivered row keeps only its key, but the file keeps its peak size (SQLite reuses
free pages, it does not give them back): after an outage, ``compact`` rewrites it when
most of it is free, at start-up (before serving) and when delivery has caught up,
and only while little is kept (``COMPACT_MAX_KEPT_BYTES``): the VACUUM holds the
outbox's write lock for its copy, and the loop's commits wait for it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from executor.errors import UnavailableError
from executor.plurals import counted

if TYPE_CHECKING:  # the table imports this module
    from executor.runs.outbox_table import OutboxTable

logger = logging.getLogger(__name__)

MIB: Final = 1 << 20
# Compacted when at least this much of the file, and half of it, is free...
COMPACT_FREE_BYTES: Final = 64 * MIB
# ...and the rows kept take at most this much (a copy of ~8 MiB: tens of milliseconds).
COMPACT_MAX_KEPT_BYTES: Final = 8 * MIB


def pages(db: sqlite3.Connection) -> tuple[int, int]:
    """(bytes in use, bytes free) of the database, from its header."""
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (count,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    return int((count - free) * page_size), int(free * page_size)


def over_bound(pending: int, waiting_bytes: int, max_bytes: int) -> str:
    """Why no run may start now, as Execute's refusal and the metrics say it.

    ``waiting_bytes``: what the results waiting for delivery take of outbox.db. With
    none pending, what is over the bound is the notes of runs delivered before the
    history recorded them (``Outbox.notes_written``), and the supervisor is not behind.
    """
    if not pending:
        return (
            f"the history has not recorded the runs of results the supervisor took, and"
            f" their notes take {waiting_bytes / MIB:.1f} MiB of outbox.db"
            f" (outbox_max_bytes = {max_bytes / MIB:.1f} MiB): the executor runs nothing"
            f" until it has (fired callbacks wait)"
        )
    they, them = ("it", "it") if pending == 1 else ("they", "them")
    return (
        f"the supervisor has not taken {counted(pending, 'result')}, and {they} take"
        f"{'s' if pending == 1 else ''} {waiting_bytes / MIB:.1f} MiB of outbox.db"
        f" (outbox_max_bytes = {max_bytes / MIB:.1f} MiB): the executor runs nothing until"
        f" it takes {them} (fired callbacks wait)"
    )


def compact(
    db: sqlite3.Connection,
    path: str,
    *,
    free_bytes: int = COMPACT_FREE_BYTES,
    max_kept_bytes: int = COMPACT_MAX_KEPT_BYTES,
) -> bool:
    """VACUUM ``db`` (outside a transaction) when most of it is free; whether it did.

    A VACUUM that fails (no room for its copy, a lock) is logged; the file is unchanged.
    """
    in_use, free = pages(db)
    if free < free_bytes or free < in_use or in_use > max_kept_bytes:
        return False
    try:
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as err:
        logger.warning("%s: not compacted (%s); it keeps its size and works as before", path, err)
        return False
    logger.info(
        "%s: compacted: %.1f MiB of %.1f MiB were free (results delivered)",
        path,
        free / MIB,
        (free + in_use) / MIB,
    )
    return True


class OutboxSpace:
    """Whether the results waiting in outbox.db are past ``max_bytes``: why no run may start.

    Args:
        table: the outbox's.
        max_bytes: the bound (None: no bound; never in a fleet).
        compact_free_bytes: outbox.db is compacted (``compact``) when at least this much
            of it, and half of it, is free.
        pending: the results waiting for delivery (``Outbox.pending``).
    """

    def __init__(
        self,
        table: OutboxTable,
        *,
        max_bytes: int | None,
        compact_free_bytes: int,
        pending: Callable[[], int],
    ) -> None:
        self._table = table
        self.max_bytes = max_bytes
        self._compact_free_bytes = compact_free_bytes
        self._pending = pending
        # Why no run may start now ("" while the results waiting are within max_bytes).
        self.refusal = ""
        # What the dead letters' payloads take of outbox.db: not results that wait, so
        # not part of that bound (they have one of their own, ``DeadLetters.bound``).
        self.dead_bytes = 0

    def measure(self) -> None:
        """(SQLite, after each commit on the loop) Whether the results waiting are past ``max_bytes``.

        Measured as outbox.db's pages in use (read from its header: no scan) less what
        the dead letters take, known since they last changed. Every such commit measures
        (a message's, notes dropped, delivery's marks, the dead letters' changes): a
        refusal that no later commit would measure again stops every run.
        """
        if self.max_bytes is None or self._table.fleet:
            return
        try:
            in_use, _ = pages(cast(sqlite3.Connection, self._table.db))
            waiting = max(0, in_use - self.dead_bytes)
            if waiting < self.max_bytes:
                if self.refusal:
                    # Taken by the supervisor, or (none pending) recorded by the history.
                    logger.warning(
                        "outbox: what waits in outbox.db is within outbox_max_bytes again;"
                        " runs start again"
                    )
                self.refusal = ""
                return
            refusal = over_bound(self._pending(), waiting, self.max_bytes)
        except (sqlite3.Error, UnavailableError) as err:  # the storage's: its writes say so
            logger.debug("outbox: its size was not read: %s", err)
            return
        if not self.refusal:
            logger.error("outbox: %s", refusal)
        self.refusal = refusal

    def compact(self) -> None:
        """(SQLite, delivery caught up) An outage's peak size given back, then measured."""
        db = cast(sqlite3.Connection, self._table.db)
        try:
            if compact(db, self._table.path, free_bytes=self._compact_free_bytes):
                self.measure()
        except sqlite3.Error as err:  # its size unread: the next commit says what is wrong
            logger.debug("outbox: not compacted: %s", err)
