"""The outbox's delivery task: the oldest rows due go out in batches, a failure is backed off from.

``Outbox``'s docstring says what delivery promises (order, at-least-once, no message
blocking the ones behind it); this module is the loop that keeps it: it reads the rows
due (a fleet's claimed with a lease), sends them in one exchange when the receiver takes
batches (else, or when it refuses one, one by one), and marks what was acknowledged
(``outbox_marks``). A row the receiver keeps refusing waits a backoff of its own and is
set aside in time (``outbox_dead``); a receiver out of reach holds everything, and is
tried again for as long as it takes (``outbox_outage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar, cast

from executor.errors import DataLossError, UnavailableError
from executor.runs.outbox_dead import DeadLetters
from executor.runs.outbox_marks import DeliveredMarks
from executor.runs.outbox_outage import OutboxOutage
from executor.runs.outbox_rows import (
    UNREADABLE_TIME_ABOVE,
    DamagedRow,
    PendingRow,
    read_pending,
    shown_key,
)
from executor.runs.outbox_space import OutboxSpace
from executor.runs.outbox_table import OutboxTable
from executor.runs.outbox_transport import (
    BatchTransport,
    CountsConnections,
    DeliveryError,
    Transport,
)
from executor.sql import StoreUnavailable, row_lock
from executor.storage import DatabaseLocked, writing
from executor.visible_text import escaped

if TYPE_CHECKING:  # the outbox imports this module
    from executor.runs.outbox import Backoff

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# A receiver that said it takes no batches (UNIMPLEMENTED) is asked again this long after,
# or sooner once it was out of reach or the transport connected anew: an upgraded or
# replaced supervisor may take them, and one call per result costs more executor CPU than
# the run itself.
ASK_FOR_BATCHES_AGAIN_S: Final = 60.0

# What delivery reads of a pending row (``outbox_rows.read_pending``'s arguments).
_PENDING_COLUMNS: Final = "seq, key, payload, retry_at, attempts, ended_at"


class OutboxDelivery:
    """The outbox's delivery task (``Outbox.start`` runs ``deliver_forever``).

    Args:
        table: the rows.
        transport: what delivers a message.
        marks: where acknowledged rows are marked delivered.
        dead: where rows are set aside.
        space: compacted when delivery has caught up.
        pending: the messages not yet acknowledged (``Outbox.pending``).
        backoff, rng, linger_s, batch_size, batch_bytes, ask_for_batches_again_s,
            max_attempts, min_refusing_s: as ``Outbox`` takes them.
    """

    def __init__(
        self,
        table: OutboxTable,
        transport: Transport,
        *,
        marks: DeliveredMarks,
        dead: DeadLetters,
        space: OutboxSpace,
        pending: Callable[[], int],
        backoff: Backoff,
        rng: random.Random,
        linger_s: float,
        batch_size: int,
        batch_bytes: int,
        ask_for_batches_again_s: float,
        max_attempts: int,
        min_refusing_s: float,
    ) -> None:
        self._table = table
        self._marks = marks
        self._dead = dead
        self._space = space
        self._pending = pending
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._max_attempts = max_attempts
        self._min_refusing_s = min_refusing_s
        # When each message the receiver refuses was first refused (this process's view).
        self._first_refused: dict[int, float] = {}
        self._transport = transport
        self._batches = isinstance(transport, BatchTransport)
        # When the receiver last said it takes no batches (monotonic; None: ask it), and
        # the transport's connections then.
        self._no_batches_since: float | None = None
        self._no_batches_connections = 0
        self._ask_for_batches_again_s = ask_for_batches_again_s
        self._told_no_batches = False
        self._linger_s = linger_s
        self._backoff = backoff
        self._rng = rng
        # Spells of failed tries: their backoff, and their few lines in the log.
        self._outage = OutboxOutage(backoff, self._rng)
        self._wakeup = asyncio.Event()
        # Set while nothing is left to send (``Outbox.flush`` waits for it).
        self.drained = asyncio.Event()
        # Acknowledged as applied already (``OutboxStats.duplicates_acknowledged``).
        self.duplicates = 0
        # Why the last try to deliver failed; "" once one was delivered since (``last_error``).
        self.last_error = ""

    def wake(self) -> None:
        """Messages were queued: deliver them."""
        self.drained.clear()
        self._wakeup.set()

    def _next_batch(self) -> tuple[list[tuple[int, str, bytes]], bool]:
        """The oldest rows due now, at most ``batch_size`` and ``batch_bytes`` (always one).

        And whether the batch is full: either bound left rows due now out of it.

        In a fleet: this replica's own, and those whose replica's lease ran out, claimed
        ``FOR UPDATE SKIP LOCKED`` with a lease of this replica's.
        """
        table = self._table
        now = table.clock()
        limit = self._batch_size + len(self._marks.unmarked)  # those are skipped below
        if table.fleet:
            table.leases.measure_if_due(table.ddb)
            leases_now = table.leases.now()
            rows = table.ddb.execute(
                "UPDATE outbox SET owner = ?, lease_until = ? WHERE seq IN (SELECT seq FROM outbox"  # noqa: S608 - a lock clause
                " WHERE delivered_at IS NULL AND dead_at IS NULL AND (retry_at <= ? OR retry_at > ?)"
                " AND (owner = ? OR lease_until < ?) ORDER BY seq LIMIT ?"
                + row_lock(table.ddb, skip_locked=True)
                + f") RETURNING {_PENDING_COLUMNS}",
                (
                    table.owner,
                    leases_now + table.lease_s,
                    now,
                    UNREADABLE_TIME_ABOVE,
                    table.owner,
                    leases_now,
                    limit,
                ),
            ).fetchall()
            rows.sort(key=lambda row: int(row[0]))
        else:
            rows = table.ddb.execute(
                f"SELECT {_PENDING_COLUMNS} FROM outbox WHERE delivered_at IS NULL"  # noqa: S608 - a constant
                " AND dead_at IS NULL AND (retry_at <= ? OR retry_at > ?) ORDER BY seq LIMIT ?",
                (now, UNREADABLE_TIME_ABOVE, limit),
            ).fetchall()
        pending, damaged = self._readable(rows, now)
        pending = [row for row in pending if row.seq not in self._marks.unmarked][
            : self._batch_size
        ]
        batch: list[tuple[int, str, bytes]] = []
        size = 0
        for row in pending:
            size += len(row.payload)
            if batch and size > self._batch_bytes:
                break
            batch.append((row.seq, row.key, row.payload))
        # A row set aside as damaged left room for another: look again at once.
        full = len(batch) < len(pending) or len(pending) == self._batch_size or damaged > 0
        return batch, full

    def _readable(self, rows: list[tuple[object, ...]], now: float) -> tuple[list[PendingRow], int]:
        """The rows read as their types and due now, and how many were damaged.

        The damaged ones are set aside on the way (logged at ERROR, once: a dead letter
        is read no more), before anything sends or waits for them: a time that is not a
        number would never fall due (and failed the wait for it), an empty payload would
        go out as a blank report (it parses as a default request).
        """
        readable: list[PendingRow] = []
        damaged = 0
        for row in rows:
            try:
                pending = read_pending(*row)
            except DamagedRow as damage:
                self._dead.set_aside(row[0], shown_key(row[1]), str(damage))
                damaged += 1
                continue
            if pending.retry_at <= now:  # not a number above UNREADABLE_TIME_ABOVE
                readable.append(pending)
        return readable, damaged

    async def deliver_forever(self) -> None:
        """Deliver until cancelled; no error ends it (each is logged, then backed off from)."""
        health = self._table.health
        while True:
            delivered_before = self._marks.delivered
            try:
                delivered = await self._deliver_next()
            except UnavailableError as err:  # the disk is full, PostgreSQL is restarting: wait
                self.last_error = str(err)
                logger.warning("outbox: %s", err)
                if health is not None and isinstance(err, StoreUnavailable):
                    # Met here first while no run ends: health says so before a run does.
                    health.failed(err)
                if health is not None and isinstance(err, DatabaseLocked):
                    # Each try would wait for the lock on the loop, stalling every request
                    # for a while: the probe (a thread) tells when it is gone. (On a full
                    # disk delivery goes on: only its marks wait, in memory.)
                    await health.sound()
                delivered = False
            except Exception:  # a database or transport bug: it must not end delivery
                self.last_error = "an error in the executor (its log has the traceback)"
                logger.exception("outbox: delivery failed unexpectedly; retrying")
                delivered = False
            if delivered is None:
                continue  # nothing was pending: woken by a new message
            if delivered:
                self._outage.went_through(
                    self._marks.delivered - delivered_before, self._pending_now()
                )
                continue
            delay = self._outage.failed(escaped(self.last_error), self._pending_now())
            await asyncio.sleep(delay)

    def _pending_now(self) -> int | None:
        """``pending()``, or None when the store itself is what is away."""
        try:
            return self._pending()
        except (UnavailableError, DataLossError):
            return None

    async def _io(self, step: Callable[[], _T]) -> _T:
        """A delivery step's database work: in a thread in a fleet, inline on SQLite."""
        if self._table.ddb is self._table.db:
            return step()
        return await asyncio.to_thread(step)

    async def _deliver_next(self) -> bool | None:
        """Deliver what is pending now, or wait for something to be.

        True when all of it is done with (delivered or set aside), False to back off, None
        when nothing was pending (after waiting for some).
        """
        unmarked: UnavailableError | None = None
        if self._marks.unmarked:
            try:
                await self._io(lambda: self._marks.mark({}))
            except UnavailableError as err:  # still: the rows behind them go on meanwhile
                unmarked = err
        # Cleared before the query, not after it: in a fleet the query runs in a thread, and
        # a message committed meanwhile sets it again (its wake-up is not lost, nor is
        # ``drained`` set while it waits).
        self._wakeup.clear()
        batch, full = await self._io(self._next_batch)
        if not batch:
            if unmarked is not None:
                if not self._wakeup.is_set():
                    self.drained.set()  # nothing is left to send
                raise unmarked  # back off, then try the marks again
            waiting = await self._io(self._next_retry_at)
            if waiting is None and not self._wakeup.is_set():
                self.drained.set()
                if not self._table.fleet:  # caught up: an outage's peak size given back
                    self._space.compact()
            if self._table.fleet:
                # Another replica's results wait for this one if that replica dies: look again.
                waiting = min(
                    waiting or float("inf"), self._table.clock() + self._table.lease_s / 3
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(
                    None if waiting is None else waiting - self._table.clock()
                ):
                    await self._wakeup.wait()
            # Linger a moment: the caller's answer leaves first, and results of runs that
            # end meanwhile go out in the same exchange.
            await asyncio.sleep(self._linger_s)
            return None
        # Whether the receiver answered the whole batch and refused it: that attempt
        # counts for the message(s) it then refuses alone (the ones it was refused for).
        batch_refused = False
        if len(batch) > 1 and self._sends_batches():
            error = await self._deliver_many(batch)
            if error is None:
                await self._linger_unless(full)
                return True
            if error.unreachable:
                return False  # back off, as for one message
            # Refused, too large, or not supported: one by one finds the message at fault.
            # Not "refused" when the receiver takes no batches at all.
            batch_refused = self._no_batches_since is None
        for seq, key, payload in batch:
            if not await self._deliver_one(seq, key, payload, batch_refused=batch_refused):
                return False  # back off; then re-read from the oldest pending row
        await self._linger_unless(full)
        return True

    def _sends_batches(self) -> bool:
        """Whether to send a batch: the transport can, and the receiver did not lately say no."""
        if not self._batches:
            return False
        since = self._no_batches_since
        if since is not None and (
            time.monotonic() - since >= self._ask_for_batches_again_s
            or self._connections() != self._no_batches_connections
        ):
            self._no_batches_since = None
        return self._no_batches_since is None

    def _connections(self) -> int:
        transport = self._transport
        return transport.connections if isinstance(transport, CountsConnections) else 0

    async def _linger_unless(self, full: bool) -> None:
        """After an exchange that was not full, let the next results gather a moment.

        A full one (by count or by bytes) means more are waiting: they go at once.
        """
        if not full:
            await asyncio.sleep(self._linger_s)

    async def _deliver_many(self, batch: list[tuple[int, str, bytes]]) -> DeliveryError | None:
        """Deliver a batch in one exchange: None when delivered, else why not.

        An error that is not ``unreachable`` means: send them one by one.
        """
        transport = cast(BatchTransport, self._transport)
        try:
            duplicates = await transport.deliver_many([(key, payload) for _, key, payload in batch])
        except DeliveryError as err:
            self.last_error = str(err)
            # The receiver's words, escaped as the dead-letter line's (``set_aside``); out
            # of reach, the outage's lines say it (``OutboxOutage``).
            logger.log(
                logging.DEBUG if err.unreachable else logging.INFO,
                "outbox: a batch of %d was not delivered (%s)",
                len(batch),
                escaped(str(err)),
            )
            return err
        if duplicates is None:
            # Said once; each later ask that gets the same answer only at DEBUG.
            logger.log(
                logging.DEBUG if self._told_no_batches else logging.INFO,
                "outbox: the receiver takes no batches; sending results one by one"
                " (asking again in %.0f s, or once it was out of reach or connected anew)",
                self._ask_for_batches_again_s,
            )
            self._told_no_batches = True
            self._no_batches_since = time.monotonic()
            self._no_batches_connections = self._connections()
            return DeliveryError("the receiver takes no batches", retryable=True)
        self.duplicates += sum(duplicates)
        self.last_error = ""
        for seq, _, _ in batch:
            self._first_refused.pop(seq, None)
        await self._io(lambda: self._marks.mark({seq: key for seq, key, _ in batch}))
        return None

    async def _deliver_one(
        self, seq: int, key: str, payload: bytes, *, batch_refused: bool = False
    ) -> bool:
        """Deliver one row; True when it is done with (delivered or set aside).

        ``batch_refused``: the receiver refused a batch holding it just before; a refusal
        of the row alone then counts that attempt too.
        """
        try:
            duplicate = await self._transport.deliver(key, payload)
        except DeliveryError as err:
            error = self.last_error = str(err)
            counted = 0 if err.unreachable else 1 + int(batch_refused)
            attempts = await self._io(lambda: self._note_failure(seq, error, counted=counted))
            if not err.retryable:
                self._first_refused.pop(seq, None)
                await self._io(lambda: self._dead.set_aside(seq, key, f"refused: {error}"))
                return True
            if err.unreachable:
                logger.debug("outbox: delivery of %s failed (%s)", escaped(key), escaped(error))
                # What answers next may be another supervisor (upgraded, replaced).
                self._no_batches_since = None
                return False  # nothing moves: back off as a whole
            first = self._first_refused.setdefault(seq, time.monotonic())
            refusing_s = time.monotonic() - first
            if attempts >= self._max_attempts and refusing_s >= self._min_refusing_s:
                # The receiver answers, but never takes this one.
                tries = "once" if attempts == 1 else f"{attempts} times"
                why = f"failed {tries} over {refusing_s:.0f} s, last: {err}"
                self._first_refused.pop(seq, None)
                await self._io(lambda: self._dead.set_aside(seq, key, why))
                return True
            # It waits its own backoff while the messages behind it go on.
            delay = self._backoff.delay(attempts, self._rng)
            logger.warning(
                "outbox: delivery of %s failed (%s); retrying it in %.2fs",
                escaped(key),
                escaped(error),
                delay,
            )
            with writing(self._table.path, self._table.health):
                self._table.ddb.execute(
                    "UPDATE outbox SET retry_at = ? WHERE seq = ?",
                    (self._table.clock() + delay, seq),
                )
            return True
        self.duplicates += duplicate
        self.last_error = ""
        self._first_refused.pop(seq, None)
        await self._io(lambda: self._marks.mark({seq: key}))
        return True

    def _next_retry_at(self) -> float | None:
        """When the earliest message waiting out its own backoff is due; None if none waits."""
        # Not a time that cannot be read: ``_next_batch`` takes such a row, to set it aside.
        row = self._table.ddb.execute(
            "SELECT min(retry_at) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
            " AND NOT retry_at > ?",
            (UNREADABLE_TIME_ABOVE,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def _note_failure(self, seq: int, error: str, *, counted: int) -> int:
        """Record a failed attempt of one row, ``counted`` of them answered and refused.

        Returns how many attempts the receiver answered and refused since the row was
        (last) queued; an unreachable receiver's are not counted.
        """
        with writing(self._table.path, self._table.health):
            row = self._table.ddb.execute(
                "UPDATE outbox SET attempts = attempts + ?, last_error = ? WHERE seq = ?"
                " RETURNING attempts",
                (counted, error, seq),
            ).fetchone()
        self._table.checkpoints.committed()
        return int(row[0]) if row else 0
