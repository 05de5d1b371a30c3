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
the receiver applied it and before the acknowledgement was recorded. The receiver
(``Supervisor.ReportResult``) is idempotent on the message key (the invocation id), so
at-least-once delivery + an idempotent receiver = exactly-once effect.

A message the receiver refuses as malformed will never succeed; it is set aside as
*dead* (logged at ERROR, kept in the table with its error) so it cannot block the
messages behind it. Everything else is retried for as long as it takes.

With a ``BatchTransport``, what has piled up (up to a batch) goes in one exchange and
is marked delivered in one commit; a batch the receiver refuses is retried message by
message, so the one bad message is found and set aside.

This module knows nothing of gRPC: ``Transport`` delivers bytes (``reporting.py`` has
the gRPC one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, cast, runtime_checkable

from executor.runs.sqlite_checkpoints import BackgroundCheckpoints

logger = logging.getLogger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_at REAL,
    dead_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
"""


class DeliveryError(Exception):
    """The transport could not deliver a message; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Transport(Protocol):
    """Sends one message; returns True when the receiver had already applied it."""

    async def deliver(self, key: str, payload: bytes) -> bool: ...


@runtime_checkable
class BatchTransport(Transport, Protocol):
    """Also sends several messages in one exchange, all applied or none.

    ``deliver_many`` returns, per message, whether the receiver had already applied it;
    None when the receiver does not take batches (then messages go one by one).
    """

    async def deliver_many(self, messages: list[tuple[str, bytes]]) -> list[bool] | None: ...


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
        keep_delivered: delivered rows kept for inspection; older ones are deleted.
        linger_s: how long delivery waits after a quiet spell before it sends, so the
            run's caller is answered first and the results of runs ending meanwhile
            share one exchange.
        rng: jitter source, seedable in tests.
    """

    def __init__(
        self,
        path: Path | str,
        transport: Transport,
        *,
        backoff: Backoff = Backoff(),
        keep_delivered: int = 1000,
        linger_s: float = 0.02,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport
        self._batches = isinstance(transport, BatchTransport)
        self._linger_s = linger_s
        self._backoff = backoff
        self._keep_delivered = keep_delivered
        self._clock = clock
        self._rng = rng or random.Random()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a commit survives the executor's own crash (kill -9); only an OS
        # crash or power loss can drop the last commits. FULL fsyncs every run on the
        # event loop, which measured ~5 ms per callback and capped throughput.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        # The log's checkpoints fsync; in a thread, they stall no answer (sqlite_checkpoints).
        self._checkpoints = BackgroundCheckpoints(self._db, path)
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._duplicates = 0
        self._delivered_since_trim = 0
        if self.pending():
            logger.info("outbox: %d results from an earlier run still to deliver", self.pending())

    # -- the producer side: synchronous, durable before it returns ------------------------

    def put(self, key: str, payload: bytes) -> bool:
        """Commit one message; False when ``key`` is already in the outbox (nothing added)."""
        added = self._db.execute(
            "INSERT INTO outbox (key, payload, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO NOTHING",
            (key, payload, self._clock()),
        ).rowcount
        self._checkpoints.committed()
        if added:
            self._drained.clear()
            self._wakeup.set()
        return bool(added)

    def pending(self) -> int:
        """Messages not yet acknowledged (dead ones excluded)."""
        row = self._db.execute(
            "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
        ).fetchone()
        return int(row[0])

    def stats(self) -> OutboxStats:
        delivered, dead = self._db.execute(
            "SELECT count(delivered_at), count(dead_at) FROM outbox"
        ).fetchone()
        return OutboxStats(self.pending(), int(delivered), int(dead), self._duplicates)

    # -- the delivery task ------------------------------------------------------------------

    def start(self) -> None:
        """Start delivering (in the running event loop); idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._deliver_forever())

    async def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is pending, at most ``timeout_s``; True when drained."""
        if not self.pending():
            return True
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancel
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the delivery task and close the database; undelivered rows stay for next time."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._checkpoints.close()
        self._db.close()

    def _next_batch(self, size: int = 64) -> list[tuple[int, str, bytes]]:
        rows = self._db.execute(
            "SELECT seq, key, payload FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
            " ORDER BY seq LIMIT ?",
            (size,),
        ).fetchall()
        return [(int(seq), str(key), bytes(payload)) for seq, key, payload in rows]

    async def _deliver_forever(self) -> None:
        failures = 0
        while True:
            batch = self._next_batch()
            if not batch:
                # No await between the query and clear(): put() cannot slip in between.
                self._wakeup.clear()
                self._drained.set()
                await self._wakeup.wait()
                # Linger a moment: the caller's answer leaves first, and results of
                # runs that end meanwhile go out in the same exchange.
                await asyncio.sleep(self._linger_s)
                continue
            if len(batch) > 1 and self._batches:
                error = await self._deliver_many(batch)
                if error is None:
                    failures = 0
                    continue
                if error:  # the receiver is unreachable: back off, as for one message
                    failures += 1
                    await asyncio.sleep(self._backoff.delay(failures, self._rng))
                    continue
                # Refused or not supported: one by one finds the message at fault.
            for seq, key, payload in batch:
                error = await self._deliver_one(seq, key, payload)
                if error is None:
                    failures = 0
                    continue
                failures += 1
                delay = self._backoff.delay(failures, self._rng)
                logger.warning(
                    "outbox: delivery of %s failed (%s); %d pending, retrying in %.2fs",
                    key,
                    error,
                    self.pending(),
                    delay,
                )
                await asyncio.sleep(delay)
                break  # re-read from the oldest pending row: order is kept

    async def _deliver_many(self, batch: list[tuple[int, str, bytes]]) -> str | None:
        """Deliver a batch in one exchange: None when delivered, '' when it must go one by
        one (refused, or batches not supported), else the error to back off on."""
        transport = cast(BatchTransport, self._transport)
        try:
            duplicates = await transport.deliver_many([(key, payload) for _, key, payload in batch])
        except DeliveryError as err:
            if err.retryable:
                logger.warning(
                    "outbox: delivery of %d results failed (%s); retrying", len(batch), err
                )
                return str(err)
            logger.info(
                "outbox: a batch of %d was refused (%s); sending them one by one", len(batch), err
            )
            return ""
        except Exception:
            logger.exception("outbox: transport failed unexpectedly on a batch")
            return ""
        if duplicates is None:
            logger.info("outbox: the receiver takes no batches; sending results one by one")
            self._batches = False
            return ""
        self._duplicates += sum(duplicates)
        self._mark_delivered([seq for seq, _, _ in batch])
        return None

    async def _deliver_one(self, seq: int, key: str, payload: bytes) -> str | None:
        """Deliver one row; None when it is done with (delivered or dead), else the error."""
        try:
            duplicate = await self._transport.deliver(key, payload)
        except DeliveryError as err:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                (str(err), seq),
            )
            self._checkpoints.committed()
            if err.retryable:
                return str(err)
            logger.error("outbox: %s refused for good, set aside: %s", key, err)
            self._db.execute("UPDATE outbox SET dead_at = ? WHERE seq = ?", (self._clock(), seq))
            self._checkpoints.committed()
            return None
        except Exception as err:
            # A bug in a transport must not end delivery for good: log it and back off.
            logger.exception("outbox: transport failed unexpectedly on %s", key)
            return f"{type(err).__name__}: {err}"
        self._duplicates += duplicate
        self._mark_delivered([seq])
        return None

    def _mark_delivered(self, seqs: list[int]) -> None:
        """Record the rows as delivered, in one commit; trim the delivered ones now and then."""
        now = self._clock()
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, delivered_at = ? WHERE seq = ?",
                [(now, seq) for seq in seqs],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._checkpoints.committed()
        self._delivered_since_trim += len(seqs)
        if self._delivered_since_trim >= 100:
            self._trim_delivered()

    def _trim_delivered(self) -> None:
        self._delivered_since_trim = 0
        self._db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE delivered_at IS NOT NULL"
            " ORDER BY seq DESC LIMIT -1 OFFSET ?)",
            (self._keep_delivered,),
        )
        self._checkpoints.committed()
