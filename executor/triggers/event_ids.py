"""The event ids the trigger store remembers (a repeat is ignored), bounded by age and count.

Every event published with an ``event_id`` leaves a row in ``seen_events`` (the store's
``sighting``; a fleet's group, group_reads.py), so that a publisher that resends an
event it is not sure was applied (a call that timed out, its own outage) gets it
answered as a repeat. Such a resend comes within hours; kept for ever, the rows grew
with every event published (1M events made ``triggers.db`` 78 MB, all of which start-up's
``quick_check`` reads). So an id is remembered for ``event_id_retention_hours`` after
its event was applied, then forgotten: a repeat after that is a new event.

The pruning runs at start and every ``PRUNE_EVERY_S`` off the event path: on a thread,
in batches of ``PRUNE_BATCH`` rows, each a transaction of its own, with a pause three
times as long as the batch took before the next one. On SQLite the event loop shares the
store's one connection and lock (timers, a firing done), and the events' group commit
does too: a batch holds them as long as it takes, and the pause lets them in between
(Python's locks are not fair: a thread that lets go and takes the lock again at once
starves the others) and lets the log's checkpoints keep up. Measured on the 2-core dev
machine, an engine started over 1M expired uuid ids (a 124 MB ``triggers.db``) while
events were published: batches of 1,000 took 8 ms (p99 19 ms), all 1M went in 41 s,
the loop's longest wait for the store was 28 ms and a PublishEvent's 21 ms, and the
``-wal`` stayed under 13 MB. With a pause only as long as the batch, the prune took 24 s
but the ``-wal`` grew to 451 MB (the checkpoints could not restart it) and the loop
waited up to 241 ms (with batches of 5,000 too, 128 ms). A fleet's replicas
prune the shared table alike, each skipping the rows another is deleting (``FOR UPDATE
SKIP LOCKED``).

The age alone does not bound the table: one callback's ``qb.workblock`` over a
100,000-frame job of the embedded farm is 100,000 events, each with its id, and a
callback that loops so made ~15,000 ids a second, kept 72 h (probe 75: ~25 GB of
``triggers.db`` an hour over four slots). So the store also keeps at most
``max_count`` ids: after the age, each prune forgets the oldest ids past that many, in
the same batches, with a WARNING (a resend of one of them would now be applied again)
and a count in the engine's stats (``cbexec_event_ids_forgotten_early_total``). Which
are past it: on SQLite, the rows more than ``max_count`` below the largest rowid (rowids
go up with every insert and the ids go oldest first, so this is the count, read from
two ends of the table's b-tree; a gap left by the age's prune only makes it keep
fewer); on PostgreSQL, the ids seen no later than the ``max_count + 1``-th newest, ids
seen at the same instant as it included, counted ``_COUNT_STEP`` index entries a
statement on a snapshot connection that waits for no lock, and only while PostgreSQL's
own estimate of the rows (``pg_class.reltuples``) is unknown or at least half of
``max_count``: 10.1M ids took 1.9-2.4 s to count. Between prunes the table may pass
``max_count`` by a minute of ids.

The embedded farm's own ids are kept as long as any other. Their resends mostly come
within seconds (forwarder.py), but the events sent before a stop go again at the next
start, however long the executor was down, and a call answered UNAVAILABLE after its
commit (a fleet's connection lost at COMMIT) is retried for as long as the store stays
away: a shorter retention would have to count from those, per replica in a fleet, where
it is counted from ``seen_at``. The count bounds the table without that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from executor.errors import UnavailableError
from executor.sql import Db, PgDb, row_lock

if TYPE_CHECKING:
    from executor.triggers.store import TriggerStore

logger = logging.getLogger(__name__)

# Created with the table on SQLite; a fleet's PostgreSQL gets it at ``cbexec store migrate``.
SCHEMA: Final = """
CREATE INDEX IF NOT EXISTS seen_events_by_age ON seen_events (seen_at);
"""

# How long an id is remembered unless told (``event_id_retention_hours``): a publisher's
# resend after an outage of a day or two still finds it.
DEFAULT_RETENTION_S: Final = 72 * 3600.0
# The most ids remembered unless told (``event_id_max_count``): about 1.2 GB of
# triggers.db with uuid ids, ~46 h of a steady 60 events/s, the 72 h of 38 events/s.
DEFAULT_MAX_COUNT: Final = 10_000_000
# Index entries PostgreSQL counts per statement to find the ids past the most kept:
# ~0.1 s each (measured: 1M in 70-110 ms on the 2-core dev machine).
_COUNT_STEP: Final = 1_000_000
# How often the engine prunes (as it prunes the journal, engine._prune).
PRUNE_EVERY_S: Final = 60.0
# Rows deleted per transaction: a few ms of the store's lock.
PRUNE_BATCH: Final = 1_000
# The pause after a batch, as a multiple of the time it took (at least _MIN_PAUSE_S): the
# store's other writers, and the log's checkpoints, get the rest of the time.
_PAUSE_PER_BATCH_TIME: Final = 3.0
_MIN_PAUSE_S: Final = 0.001


def prune_batch(db: Db, cutoff: float, limit: int) -> int:
    """Forget at most ``limit`` ids seen before ``cutoff`` (Unix seconds); how many went."""
    cursor = db.execute(
        "DELETE FROM seen_events WHERE event_id IN (SELECT event_id FROM seen_events"  # noqa: S608 - a clause of ours
        f" WHERE seen_at < ? LIMIT ?{row_lock(db, skip_locked=True)})",
        (cutoff, limit),
    )
    return int(cursor.rowcount)


def past_max_count(db: Db, max_count: int, *, step: int = _COUNT_STEP) -> float | None:
    """Where the ids past the newest ``max_count`` end (``forget_batch``'s ``mark``); None: none are.

    SQLite: the largest rowid to go; PostgreSQL: the latest ``seen_at`` to go (counted
    ``step`` index entries a statement).
    """
    if isinstance(db, PgDb):
        return _pg_past_max_count(db, max_count, step)
    # Two subqueries: SQLite reads a lone min() or max() off the b-tree's end, both in
    # one SELECT by a scan of the table.
    row = db.execute(
        "SELECT (SELECT min(rowid) FROM seen_events), (SELECT max(rowid) FROM seen_events)"
    ).fetchone()
    if row[0] is None or row[1] - max_count < row[0]:
        return None
    return float(row[1] - max_count)


def _pg_past_max_count(db: Db, max_count: int, step: int) -> float | None:
    """The ``seen_at`` of the ``max_count + 1``-th newest id, counting ``step`` at a time.

    Each step counts the ids seen in [its end, the step before's end): one statement
    well within the store's answer deadline however large ``max_count`` is.
    """
    estimate = db.execute(
        "SELECT reltuples FROM pg_class WHERE oid = 'seen_events'::regclass"
    ).fetchone()[0]
    if 0 <= estimate < max_count / 2:  # -1: never analyzed, count
        return None
    counted, before = 0, float("inf")
    while True:
        row = db.execute(
            "WITH s AS (SELECT seen_at FROM seen_events WHERE seen_at < ?"
            " ORDER BY seen_at DESC LIMIT ?), e AS (SELECT min(seen_at) AS at FROM s)"
            " SELECT e.at, (SELECT count(*) FROM s WHERE s.seen_at > e.at)"
            " + (SELECT count(*) FROM seen_events WHERE seen_at = e.at) FROM e",
            (before, step),
        ).fetchone()
        if row[0] is None:
            return None
        if counted + row[1] > max_count:
            found = db.execute(
                "SELECT seen_at FROM seen_events WHERE seen_at < ? ORDER BY seen_at DESC"
                " OFFSET ? LIMIT 1",
                (before, max_count - counted),
            ).fetchone()
            return float(found[0])
        counted, before = counted + row[1], float(row[0])


def forget_batch(db: Db, mark: float, limit: int) -> int:
    """Forget at most ``limit`` of the ids up to ``mark`` (``past_max_count``); how many went."""
    if isinstance(db, PgDb):
        cursor = db.execute(
            "DELETE FROM seen_events WHERE event_id IN (SELECT event_id FROM seen_events"
            " WHERE seen_at <= ? LIMIT ? FOR UPDATE SKIP LOCKED)",
            (mark, limit),
        )
    else:
        cursor = db.execute(
            "DELETE FROM seen_events WHERE rowid IN"
            " (SELECT rowid FROM seen_events WHERE rowid <= ? LIMIT ?)",
            (int(mark), limit),
        )
    return int(cursor.rowcount)


class EventIdPruner:
    """Forgets the ids seen more than ``retention_s`` ago, then the oldest past ``max_count``.

    Batch by batch, off the event loop; ``forgotten_early`` is told how many ids went for
    the count before their age.
    """

    def __init__(
        self,
        store: TriggerStore,
        retention_s: float,
        clock: Callable[[], float],
        *,
        max_count: int = DEFAULT_MAX_COUNT,
        forgotten_early: Callable[[int], None] = lambda n: None,
        batch: int = PRUNE_BATCH,
    ) -> None:
        self._store = store
        self._retention_s = retention_s
        self._clock = clock
        self._max_count = max_count
        self._forgotten_early = forgotten_early
        self._batch = batch
        # Set by ``stop``: the thread ends after the batch it is in, the task at once.
        self._stopping = threading.Event()
        self._woken = asyncio.Event()

    def prune(self) -> int:
        """Every id past the retention, then past ``max_count`` (blocks); how many went."""
        cutoff = self._clock() - self._retention_s
        total = self._in_batches(lambda db: prune_batch(db, cutoff, self._batch))
        if total:
            logger.debug("forgot %d event ids seen before %.0f", total, cutoff)
        if self._stopping.is_set():
            return total
        with self._store.snapshot() as db:  # PostgreSQL's read may take a second: no lock
            mark = past_max_count(db, self._max_count)
        if mark is None:
            return total
        early = self._in_batches(lambda db: forget_batch(db, mark, self._batch))
        if early:
            self._forgotten_early(early)
            with self._store.snapshot() as db:
                oldest = db.execute("SELECT min(seen_at) FROM seen_events").fetchone()[0]
            kept = "none" if oldest is None else _age(self._clock() - oldest)
            logger.warning(
                "event ids: forgot the %d oldest before their event_id_retention_hours: the"
                " store keeps at most event_id_max_count (%d); a resend of one of them now is"
                " applied again (the oldest id kept was seen %s)",
                early,
                self._max_count,
                kept,
            )
        return total + early

    def _in_batches(self, batch: Callable[[Db], int]) -> int:
        """``batch`` a transaction at a time until it forgets fewer than a batch; how many went."""
        total = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._store.transaction() as db:
                gone = batch(db)
            total += gone
            if gone < self._batch:
                break
            # Let the events' transactions and the loop have the store in between.
            took = time.monotonic() - started
            self._stopping.wait(max(_MIN_PAUSE_S, _PAUSE_PER_BATCH_TIME * took))
        return total

    async def run(self, every_s: float = PRUNE_EVERY_S) -> None:
        """Prune now and every ``every_s`` until ``stop``; a store that refuses waits a period."""
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self.prune)
            except UnavailableError as err:  # a full disk, PostgreSQL restarting: next period
                logger.warning("event ids: pruning failed: %s; trying again in %.0fs", err, every_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every_s):
                    await self._woken.wait()

    def stop(self) -> None:
        """End ``run`` (on the loop): at once while it waits, after its batch while it prunes.

        Await the task rather than cancel it: a cancelled ``to_thread`` leaves its thread
        running, which could still be writing when the store closes.
        """
        self._stopping.set()
        self._woken.set()


def _age(seconds: float) -> str:
    if seconds < 7200:
        return f"{max(0.0, seconds) / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
