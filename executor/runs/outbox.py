"""Durable outbox: results are stored in SQLite first, then delivered in order until acknowledged.

Why an outbox: a run's result must reach the supervisor even when the supervisor is
down for a while or the executor is killed right after the run. ``put`` commits the
message (WAL, ``synchronous=NORMAL``: it survives a SIGKILL of the executor; an OS
crash may drop the last moments) before the run's caller is answered; one background
task delivers the oldest undelivered message first, marks it delivered when the
receiver acknowledges it, and backs off exponentially (with jitter, so a fleet of
executors does not reconnect in step) while the receiver is unavailable. After a
restart the task starts again from the oldest undelivered row.

A message may be sent twice: when the executor dies (or the connection breaks) after
the receiver applied it and before the acknowledgement was recorded. One acknowledged
while its mark cannot be written (a full disk) is held in memory as delivered and not
sent again by this process; it is marked once the storage takes writes, and only a
stop before that sends it once more after the restart. The receiver
(``Supervisor.ReportResult``) is idempotent on the message key (the invocation id), so
at-least-once delivery + an idempotent receiver = exactly-once effect. Another
message under a key (the report of a later run of the same invocation id) replaces the
one there, delivered or not, and is delivered in its turn; the receiver tells the two
apart (``ReportResultRequest.ended_at``).

No message blocks the ones behind it. One the receiver refuses as malformed will never
succeed: it is set aside at once as a *dead letter* (logged at ERROR, kept in the table
with its error, counted, listed and retried on request). One the receiver answers but
fails (too large for it, or anything else) waits out a backoff of its own while the
messages behind it go on, and is set aside after ``max_attempts`` such failures spread
over at least ``min_refusing_s`` (so a supervisor that fails for a few seconds, an
upgrade's INTERNAL, does not set aside everything that came meanwhile). While
the receiver does not answer at all (down, hanging), everything waits together and is
retried for as long as it takes. A row damaged from outside (a column not of its type,
an empty payload; see ``outbox_rows``) blocks nothing either: it is set aside as a dead
letter naming the column when it is read.

With a ``BatchTransport``, what has piled up goes in one exchange (at most
``batch_size`` messages and ``batch_bytes`` bytes, so a batch stays under the
receiver's message limit) and is marked delivered in one commit; a batch the receiver
does not take is retried message by message, so a bad message is found and set aside.

The delivery task survives every error: each is logged, backed off from, and retried.
A commit that fails because of the storage (``executor.storage``) raises
``StorageError`` from ``put``, so a caller never gets an answer whose result has no
durable record.

This module knows nothing of gRPC: ``Transport`` delivers bytes (``api/reporting.py``
has the gRPC one).

``Outbox`` ties the pieces together: ``outbox_table`` (the schema, the connections),
``outbox_commits`` (storing messages; ``outbox_fences`` for a fleet's fenced ones),
``outbox_delivery`` (the delivery task; ``outbox_transport`` what it sends through),
``outbox_marks`` (delivered marks and trimming), ``outbox_dead`` (dead letters),
``outbox_notes`` (the notes kept until the history has the run) and ``outbox_space``
(outbox.db's size).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from executor.errors import UnavailableError
from executor.runs import outbox_space
from executor.runs.outbox_commits import OutboxCommits
from executor.runs.outbox_dead import DeadLetter, DeadLetters
from executor.runs.outbox_delivery import ASK_FOR_BATCHES_AGAIN_S, OutboxDelivery
from executor.runs.outbox_fences import Alongside
from executor.runs.outbox_marks import DeliveredMarks
from executor.runs.outbox_notes import KeptNotes, OutboxNotes
from executor.runs.outbox_space import OutboxSpace
from executor.runs.outbox_table import OutboxTable
from executor.runs.outbox_transport import Transport
from executor.sql import Db
from executor.storage import StorageHealth, reading

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits in [d/2, d], d = min(cap, first * 2^(n-1))."""

    first_s: float = 0.1
    cap_s: float = 5.0

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.first_s * 2.0 ** max(0, failures - 1))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    delivered: int
    dead: int
    duplicates_acknowledged: int


class Outbox:
    """The outbox table and its delivery task.

    Args:
        path: the SQLite file (created when missing).
        transport: what delivers a message.
        backoff: retry timing while the transport fails.
        keep_delivered: delivered rows kept (their keys, not their payloads); older ones are deleted.
        linger_s: how long delivery waits before it sends, after a quiet spell or an
            exchange that was not full, so the run's caller is answered first and the
            results of runs ending meanwhile share one exchange (under a steady stream
            of runs, one exchange per result cost more executor CPU than the run).
        batch_size, batch_bytes: the most messages, and bytes of them, one exchange
            carries (a single larger message still goes, alone).
        ask_for_batches_again_s: how long after a receiver said it takes no batches
            it is asked again (sooner once it was out of reach, or the transport
            connected anew).
        max_attempts, min_refusing_s: a message the receiver keeps refusing (while it
            answers) is set aside after this many failed tries, the first of them (since
            this outbox last saw it delivered, queued or started) at least this long ago.
        health: told when a write fails because of the storage.
        max_bytes: past this many bytes of outbox.db's pages in use, no run may start
            (``refusal``; ``outbox_space``). None: no bound; never in a fleet.
        compact_free_bytes: outbox.db is compacted (``outbox_space.compact``) when at
            least this much of it, and half of it, is free.
        clock: Unix time source, replaceable in tests.
        rng: jitter source, seedable in tests.
    """

    def __init__(
        self,
        path: Path | str,
        transport: Transport,
        *,
        backoff: Backoff = Backoff(),
        keep_delivered: int = 1000,
        linger_s: float = 0.05,
        batch_size: int = 64,
        batch_bytes: int = 3 << 20,
        ask_for_batches_again_s: float = ASK_FOR_BATCHES_AGAIN_S,
        max_attempts: int = 8,
        min_refusing_s: float = 30.0,
        health: StorageHealth | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        lease_s: float = 15.0,
        max_bytes: int | None = None,
        compact_free_bytes: int = outbox_space.COMPACT_FREE_BYTES,
    ) -> None:
        self._table = OutboxTable(
            path,
            health=health,
            clock=clock,
            lease_s=lease_s,
            compact_free_bytes=compact_free_bytes,
        )
        self._space = OutboxSpace(
            self._table,
            max_bytes=max_bytes,
            compact_free_bytes=compact_free_bytes,
            pending=self.pending,
        )
        self._marks = DeliveredMarks(self._table, self._space, keep_delivered)
        self._dead = DeadLetters(self._table, self._space)
        self._delivery = OutboxDelivery(
            self._table,
            transport,
            marks=self._marks,
            dead=self._dead,
            space=self._space,
            pending=self.pending,
            backoff=backoff,
            rng=rng or random.Random(),
            linger_s=linger_s,
            batch_size=batch_size,
            batch_bytes=batch_bytes,
            ask_for_batches_again_s=ask_for_batches_again_s,
            max_attempts=max_attempts,
            min_refusing_s=min_refusing_s,
        )
        self._commits = OutboxCommits(self._table, self._committed)
        self._notes = OutboxNotes(self._table, self._committed_freeing)
        self._task: asyncio.Task[None] | None = None
        if self.pending():
            logger.info("outbox: %d results from an earlier run still to deliver", self.pending())
        # Before the first run: one must not start past the bound, nor be refused for letters.
        self._dead.bound()
        self._space.measure()

    @property
    def fleet(self) -> bool:
        """Whether the outbox is a fleet's, in PostgreSQL (shared by every replica)."""
        return self._table.fleet

    @property
    def path(self) -> str:
        """Its SQLite file, or a fleet's PostgreSQL URL."""
        return self._table.path

    # -- the producer side: synchronous, durable before it returns ------------------------

    def put(
        self,
        key: str,
        payload: bytes,
        ended_at: float | None = None,
        notes: str | None = None,
        alongside: Alongside | None = None,
    ) -> bool:
        """Commit one message; False when nothing was added (it, or a later run's, is there).

        ``ended_at``: when the run it reports ended (None: now). Another message under
        ``key`` replaces the one there unless that one's run ended later (``outbox_commits``).
        ``notes``: kept with it until the history has the key's run (``notes_written``).
        ``alongside``: a statement committed with it, whether or not it was added (a
        fleet's only). Raises StorageError when the commit fails because of the storage,
        ValueError for an empty ``payload`` or an ``alongside`` outside a fleet.
        """
        return self._commits.put(self._commits.message(key, payload, ended_at, notes, alongside))

    async def commit(
        self,
        key: str,
        payload: bytes,
        ended_at: float | None = None,
        notes: str | None = None,
        alongside: Alongside | None = None,
    ) -> None:
        """``put``, in one transaction with the messages of this turn of the event loop.

        Runs that end together (concurrent callers) share one commit, one round trip to
        PostgreSQL, instead of one each. Returns once the message is committed; raises
        as ``put`` does, every caller of a failed commit alike.
        """
        await self._commits.commit(self._commits.message(key, payload, ended_at, notes, alongside))

    def _committed(self, added: int) -> None:
        self._table.checkpoints.committed()
        self._space.measure()
        if added:
            self._delivery.wake()

    def refusal(self) -> str:
        """Why no run may start now: outbox.db past ``max_bytes``; "" when one may."""
        return self._space.refusal

    def _committed_freeing(self) -> None:
        """After a commit on the loop that may have freed space (notes dropped, rows deleted).

        Measured again at once: the refusal must lift as soon as the space is free. Found
        by probe 104: delivery's last mark measured a file still holding the delivered
        runs' notes (past the bound), the notes went without a measure, and with every
        run refused no later commit came to lift it.
        """
        self._table.checkpoints.committed()
        self._space.measure()

    def last_error(self) -> str:
        """Why the last try to deliver failed; "" when none failed since one was delivered.

        What an operator asks while results pile up: the supervisor away, refusing them,
        or the storage.
        """
        return self._delivery.last_error

    def pending(self) -> int:
        """Messages not yet acknowledged (dead ones excluded)."""
        with reading(self._table.path):
            row = self._table.db.execute(
                "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
            ).fetchone()
        return int(row[0]) - len(self._marks.unmarked)

    def dead(self) -> int:
        """Messages set aside as dead letters."""
        with reading(self._table.path):
            return int(self._table.db.execute("SELECT count(dead_at) FROM outbox").fetchone()[0])

    def stats(self) -> OutboxStats:
        with reading(self._table.path):
            delivered, dead = self._table.db.execute(
                "SELECT count(delivered_at), count(dead_at) FROM outbox"
            ).fetchone()
        return OutboxStats(self.pending(), int(delivered), int(dead), self._delivery.duplicates)

    # -- the notes of runs whose bookkeeping a crash may have lost ----------------------------

    def kept_notes(self) -> list[KeptNotes]:
        """The rows that still keep their run's notes, oldest first (``recovery`` reads them)."""
        return self._notes.kept_notes()

    def notes(self, seqs: list[int]) -> dict[int, str]:
        """The notes of these rows (seq: notes), those that still have them."""
        return self._notes.notes(seqs)

    def forget_notes(self, seqs: list[int]) -> None:
        """Drop these rows' notes (their runs are in the history), in one commit."""
        self._notes.forget_notes(seqs)

    def notes_written(self, runs: Sequence[tuple[str, float]]) -> None:
        """These runs (key, ended_at) are in the history now: drop their rows' notes soon.

        Called by the bookkeeping thread after each history commit (any thread): the
        notes then mean exactly "this run may lack its history record", and a start-up
        rebuilds only what a crash lost. The rows are updated on the event loop, which
        owns the SQLite connection (one UPDATE per history commit, after the answers); in
        a fleet, in a thread, on delivery's connection. A row whose run ended later (a
        resend's) keeps its notes. One committed after its history record (a result the
        storage refused at first) keeps them until the next start drops them.
        """
        self._notes.notes_written(runs)

    def forget_written(self, db: Db | None = None) -> None:
        """Drop now the notes of the runs ``notes_written`` told of (``db``: the loop's).

        Nothing is lost when the storage refuses: the runs are kept for the next try (up
        to ``outbox_notes.MAX_WRITTEN_KEPT``), and a start-up drops the notes of runs in the history.
        """
        self._notes.forget_written(db)

    # -- the delivery task ------------------------------------------------------------------

    def start(self) -> None:
        """Start delivering (in the running event loop); idempotent."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._delivery.deliver_forever())
            self._notes.started(loop)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is pending, at most ``timeout_s``; True when drained.

        False at once when the outbox cannot be read (its ``-shm`` made immutable, say):
        nothing is known drained, and the stop goes on.
        """
        try:
            if not self.pending():
                return True
        except UnavailableError:
            return False
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancel
                await self._delivery.drained.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the delivery task and close the database; undelivered rows stay for next time."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._marks.unmarked:
            logger.warning(
                "outbox: %d results the supervisor acknowledged could not be marked delivered "
                "(the storage); they are sent once more after the next start",
                len(self._marks.unmarked),
            )
        # The writer has stopped (Recorder.close): what it wrote last loses its notes now,
        # so a clean stop leaves notes only of runs the history does not have.
        await self._notes.close()
        self._table.close()

    # -- dead letters ----------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages set aside, newest first."""
        return self._dead.dead_letters(limit)

    def retry_dead(self, keys: Sequence[str] | None = None) -> int:
        """Queue dead letters again (all of them when ``keys`` is None); returns how many.

        Each is queued as if new: its ``attempts`` start again at 0, so a letter retried
        once the receiver is fixed gets ``max_attempts`` tries of its own, and a letter
        set aside again shows the refusals since it was retried. The keys are updated a
        list at a time (``in_lists``), in one transaction: one UPDATE per key, each its
        own commit, held the event loop 11 s for 1.5 million of them.
        """
        queued = self._dead.retry_dead(keys)
        if queued:
            self._delivery.wake()
        return queued
