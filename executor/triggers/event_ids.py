"""The event ids the trigger store remembers (a repeat is ignored), bounded by age.

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
from executor.sql import Db, row_lock

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


class EventIdPruner:
    """Forgets the ids seen more than ``retention_s`` ago, batch by batch, off the event loop."""

    def __init__(
        self,
        store: TriggerStore,
        retention_s: float,
        clock: Callable[[], float],
        *,
        batch: int = PRUNE_BATCH,
    ) -> None:
        self._store = store
        self._retention_s = retention_s
        self._clock = clock
        self._batch = batch
        # Set by ``stop``: the thread ends after the batch it is in, the task at once.
        self._stopping = threading.Event()
        self._woken = asyncio.Event()

    def prune(self) -> int:
        """Every id past the retention, a batch per transaction (blocks); how many went."""
        cutoff = self._clock() - self._retention_s
        total = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._store.transaction() as db:
                gone = prune_batch(db, cutoff, self._batch)
            total += gone
            if gone < self._batch:
                break
            # Let the events' transactions and the loop have the store in between.
            took = time.monotonic() - started
            self._stopping.wait(max(_MIN_PAUSE_S, _PAUSE_PER_BATCH_TIME * took))
        if total:
            logger.debug("forgot %d event ids seen before %.0f", total, cutoff)
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
