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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, Protocol, TypeVar, cast, runtime_checkable

from executor.errors import DataLossError, TakenOverError, UnavailableError, own_copy
from executor.fleet_clock import FleetClock
from executor.runs import outbox_space
from executor.runs.latest import latest_per_key
from executor.runs.outbox_outage import OutboxOutage
from executor.runs.outbox_rows import (
    UNREADABLE_TIME_ABOVE,
    DamagedRow,
    PendingRow,
    listed_count,
    listed_time,
    read_pending,
    read_seq,
    read_time,
    shown_key,
)
from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from executor.sql import (
    Db,
    NoCheckpoints,
    PgDb,
    StoreUnavailable,
    execute_counted,
    first_row,
    in_lists,
    is_postgres,
    row_lock,
)
from executor.storage import (
    LOOP_CHECKPOINT_BUSY_TIMEOUT_S,
    DatabaseLocked,
    StorageHealth,
    open_database,
    opening,
    reading,
    wait_briefly_for_locks,
    writing,
)
from executor.visible_text import escaped

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Room left in a receiver's message limit for the batch around the messages and framing:
# a message, or a batch of them, is at most the limit less this.
MESSAGE_MARGIN_BYTES: Final = 64 << 10
# A receiver that said it takes no batches (UNIMPLEMENTED) is asked again this long after,
# or sooner once it was out of reach or the transport connected anew: an upgraded or
# replaced supervisor may take them, and one call per result costs more executor CPU than
# the run itself.
ASK_FOR_BATCHES_AGAIN_S: Final = 60.0

_INSERT: Final = (
    "INSERT INTO outbox (key, payload, created_at, owner, lease_until, ended_at, notes)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
)
# _INSERT where a fence (Alongside, a WITH query before it) holds: one statement that
# says whether it held and whether the message was added.
_FENCED_INSERT: Final = (
    "{fence}, added AS (INSERT INTO outbox"
    " (key, payload, created_at, owner, lease_until, ended_at, notes)"
    " SELECT ?::text, ?::bytea, ?::float8, ?::text, ?::float8, ?::float8, ?::text"
    " WHERE EXISTS (SELECT 1 FROM held)"
    " ON CONFLICT (key) DO NOTHING RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM held) AS held, EXISTS (SELECT 1 FROM added) AS added"
)
# Before _INSERT, when the key is there already: another message under it that ended no
# earlier (a later run of the invocation id) takes the place of the one there, delivered
# or not, as a new row: a new seq, so a delivery of the old one still on its way marks
# nothing. An earlier run's message (one committed late, after a full disk) never
# replaces a later one's: the supervisor's rule (``ReportResultRequest.ended_at``). The
# same message again (a commit retried on a new connection) stays a no-op; once
# delivered, its payload is gone (``_mark_delivered``), so it would be sent again, and
# the supervisor answers it as the duplicate it is.
_REPLACE: Final = "DELETE FROM outbox WHERE key = ? AND payload <> ? AND ended_at <= ?"
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    -- Failed attempts the receiver answered (an unreachable receiver's are not counted).
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_at REAL,
    dead_at REAL,
    -- Not before this Unix time: a message the receiver refused waits its own backoff.
    retry_at REAL NOT NULL DEFAULT 0,
    -- In a fleet: which replica delivers it, until when (a dead replica's are taken over).
    owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    -- When the run it reports ended (Unix seconds; 0 in rows from before the column).
    ended_at REAL NOT NULL DEFAULT 0,
    -- The run's bookkeeping (run_notes), kept until the history has the run: what a
    -- start-up after a kill -9 rebuilds its history record from. NULL once written.
    notes TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
"""


# outbox.db's dead letters, so their size and the oldest of them are read without a scan
# of the table (whose rows hold their payloads inline). SQLite only: the bounds are
# outbox.db's, and a fleet's schema is its migrations'.
_DEAD_INDEX: Final = (
    "CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (dead_at, seq) WHERE dead_at IS NOT NULL"
)


class Alongside(NamedTuple):
    """A fence committed with a message, in its transaction (a fleet's: PostgreSQL's).

    A write returning a row while the message may be committed (``RETURNING 1``), ``?``
    for its parameters: an Execute's release of its claim on the invocation id
    (``invocation_ids.FleetIds``) goes with its result, so the answer waits for one
    round trip, not two, and the claim ends exactly as the result becomes the id's
    record. A claim gone (another replica's run of the id took it over) leaves the
    message out, and ``commit`` raises TakenOverError; unless that same message is there
    already (a commit retried after its answer was lost).
    """

    sql: str
    parameters: tuple[str | int | float, ...]


class _Message(NamedTuple):
    """A message to commit: ``_REPLACE``'s values, in its order, then its notes."""

    key: str
    payload: bytes
    ended_at: float  # when the run it reports ended
    notes: str | None = None  # kept with it until the history has the run
    alongside: Alongside | None = None

    @property
    def replaced(self) -> tuple[str, bytes, float]:
        """``_REPLACE``'s values."""
        return self.key, self.payload, self.ended_at


# A run the history has (its key, when it ended): its row's notes go, not a later run's.
_FORGET_WRITTEN: Final = (
    "UPDATE outbox SET notes = NULL WHERE key = ? AND ended_at <= ? AND notes IS NOT NULL"
)
# Runs whose notes a refusing storage kept from being dropped, kept for the next try.
MAX_WRITTEN_KEPT: Final = 10_000

# What delivery reads of a pending row (``outbox_rows.read_pending``'s arguments).
_PENDING_COLUMNS: Final = "seq, key, payload, retry_at, attempts, ended_at"


class KeptNotes(NamedTuple):
    """A row whose notes are kept: its run may not be in the history yet."""

    seq: int
    key: str
    ended_at: float


# Columns added since the first outbox.db: (column, definition).
_ADDED_COLUMNS: Final = (
    ("retry_at", "REAL NOT NULL DEFAULT 0"),
    ("owner", "TEXT NOT NULL DEFAULT ''"),
    ("lease_until", "REAL NOT NULL DEFAULT 0"),
    ("ended_at", "REAL NOT NULL DEFAULT 0"),
    ("notes", "TEXT"),
)


class DeliveryError(Exception):
    """The transport could not deliver a message.

    ``retryable``: trying again may work (False: the receiver refused it for good).
    ``unreachable``: the receiver did not answer at all (down, hanging); such failures
    never count toward setting a message aside, since nothing else moves either.
    """

    def __init__(self, message: str, *, retryable: bool, unreachable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.unreachable = unreachable


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


@runtime_checkable
class CountsConnections(Protocol):
    """A transport that counts its connections (and the one its next call makes, if any).

    A new one may reach another receiver.
    """

    @property
    def connections(self) -> int: ...


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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message set aside: never delivered, kept for a person to look at or retry."""

    key: str
    created_at: float
    dead_at: float
    attempts: int
    last_error: str
    size_bytes: int


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

    def __init__(  # noqa: PLR0915 - one attribute a statement
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
        self._path = str(path)
        self._max_bytes = max_bytes
        self._compact_free_bytes = compact_free_bytes
        # Why no run may start now ("" while the results waiting are within max_bytes).
        self._refusal = ""
        # What the dead letters' payloads take of outbox.db: not results that wait, so
        # not part of that bound (they have one of their own, ``_bound_dead_letters``).
        self._dead_bytes = 0
        self._lease_s = lease_s
        self._owner = uuid.uuid4().hex
        self._health = health
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
        self._keep_delivered = keep_delivered
        self._clock = clock
        # The delivery claims' clock: the database's, in a fleet (FleetClock).
        self._leases = FleetClock(clock)
        self._rng = rng or random.Random()
        # Spells of failed tries: their backoff, and their few lines in the log.
        self._outage = OutboxOutage(backoff, self._rng)
        # Results delivered by this process (the count a resumed spell tells).
        self._delivered = 0
        self._db: Db
        self._checkpoints: BackgroundCheckpoints | NoCheckpoints
        if is_postgres(self._path):
            from executor.migrations import open_postgres

            self._db = open_postgres(self._path, application_name="cbexec-outbox")
            # Delivery's bookkeeping goes through a connection of its own, in a thread:
            # a round trip to PostgreSQL is ~0.3-1 ms, and the event loop's requests
            # (an Execute committing its result) must not wait behind them.
            self._ddb: Db = open_postgres(self._path, application_name="cbexec-delivery")
            self._checkpoints = NoCheckpoints()
            self._leases.measure(self._ddb)
        else:
            with opening(self._path):  # a read-only filesystem, say: a refusal saying so
                self._db = self._open_sqlite(self._path)
            self._ddb = self._db
            # Before serving: an outage's peak size, given back if a stop came first.
            outbox_space.compact(self._db, self._path, free_bytes=compact_free_bytes)
            # The log's checkpoints fsync; in a thread, they stall no answer.
            self._checkpoints = BackgroundCheckpoints(
                self._db, path, busy_timeout_s=LOOP_CHECKPOINT_BUSY_TIMEOUT_S
            )
        self._wakeup = asyncio.Event()
        # Messages given to ``commit`` in this turn of the event loop, and their callers.
        self._gathered: list[tuple[_Message, asyncio.Future[None]]] = []
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._duplicates = 0
        # Why the last try to deliver failed; "" once one was delivered since (``last_error``).
        self._last_error = ""
        self._delivered_since_trim = 0
        # Rows the receiver acknowledged whose mark the storage did not take yet (a full
        # disk): never sent again by this process, marked at the next chance.
        self._unmarked: dict[int, str] = {}
        self._init_written()
        if self.pending():
            logger.info("outbox: %d results from an earlier run still to deliver", self.pending())
        # Before the first run: one must not start past the bound, nor be refused for letters.
        self._bound_dead_letters()
        self._measure()

    def _init_written(self) -> None:
        # Runs the history has committed (key, ended_at), told by the bookkeeping thread:
        # their rows' notes are dropped on the loop (``notes_written``).
        self._written: list[tuple[str, float]] = []
        self._written_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._forgetting: asyncio.Task[None] | None = None
        self._closed = False

    @staticmethod
    def _open_sqlite(path: str) -> sqlite3.Connection:
        # Its INSERTs bind each result's report: no kept statement keeps the last one's.
        db = open_database(path, cached_statements=0)
        db.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a commit survives the executor's own crash (kill -9); only an OS
        # crash or power loss can drop the last commits. FULL fsyncs every run on the
        # event loop, which measured ~5 ms per callback and capped throughput.
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(SCHEMA)
        db.execute(_DEAD_INDEX)
        columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        for column, definition in _ADDED_COLUMNS:
            if column not in columns:  # an outbox.db from before the column
                db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {definition}")
        # Written on the loop (each result's commit, delivery's marks): a lock held by
        # another process is waited for briefly, then refused as the storage's.
        wait_briefly_for_locks(db)
        return db

    @property
    def fleet(self) -> bool:
        """Whether the outbox is a fleet's, in PostgreSQL (shared by every replica)."""
        return isinstance(self._db, PgDb)

    @property
    def path(self) -> str:
        """Its SQLite file, or a fleet's PostgreSQL URL."""
        return self._path

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
        ``key`` replaces the one there unless that one's run ended later (``_REPLACE``).
        ``notes``: kept with it until the history has the key's run (``notes_written``).
        ``alongside``: a statement committed with it, whether or not it was added (a
        fleet's only). Raises StorageError when the commit fails because of the storage,
        ValueError for an empty ``payload`` or an ``alongside`` outside a fleet.
        """
        message = self._message(key, payload, ended_at, notes, alongside)
        if alongside is not None:  # one statement: PostgreSQL's data-modifying WITH
            with writing(self._path, self._health, store_refusals=True):
                row = first_row(
                    self._db,
                    _FENCED_INSERT.format(fence=_fence(alongside)),
                    (*_fence_parameters(message, alongside), *self._row(message)),
                )
            if not row["held"]:
                raise TakenOverError(f"the fence of the message under {key!r} no longer holds")
            added = bool(row["added"])
        else:
            with writing(self._path, self._health, store_refusals=True):
                added = bool(execute_counted(self._db, _INSERT, self._row(message)))
        if not added:  # the key is there: a repeat of the message, or another run's
            return self._put_many([message._replace(alongside=None)])[0]  # fenced: held
        self._committed(added)
        return True

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
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        message = self._message(key, payload, ended_at, notes, alongside)
        self._gathered.append((message, committed))
        if len(self._gathered) == 1:
            loop.call_soon(self._commit_gathered)
        await committed

    def _commit_gathered(self) -> None:
        gathered, self._gathered = self._gathered, []
        messages = [message for message, _ in gathered]
        try:
            try:
                fenced = self._put_any(messages)
            except StoreUnavailable:
                # A connection PostgreSQL dropped (a restart, an admin's kill) is met by the
                # first statement after it: once more, on a new one. The inserts are
                # idempotent on their message, so a commit that did land is not doubled
                # (nor fenced off by its own fence: its message is there).
                fenced = self._put_any(messages)
        except Exception as err:  # noqa: BLE001 - the storage's, or a bug: each caller hears of it
            for n, (_, committed) in enumerate(gathered):
                if not committed.done():
                    committed.set_exception(err if n == 0 else own_copy(err))
            return
        for n, (message, committed) in enumerate(gathered):
            if committed.done():
                continue
            if n in fenced:
                committed.set_exception(
                    TakenOverError(
                        f"the fence of the message under {message.key!r} no longer holds"
                    )
                )
            else:
                committed.set_result(None)

    def _put_any(self, messages: list[_Message]) -> set[int]:
        """Commit the messages; the positions of those a fence left out."""
        if len(messages) == 1:
            try:
                self.put(*messages[0])
            except TakenOverError:
                return {0}
            return set()
        return self._put_many(messages)[1]

    def _put_many(self, messages: list[_Message]) -> tuple[bool, set[int]]:
        """Commit the messages in one transaction: whether any was added, and those fenced off."""
        with writing(self._path, self._health, store_refusals=True):
            self._db.execute("BEGIN")
            try:
                fenced = {
                    n
                    for n, message in enumerate(messages)
                    if message.alongside is not None
                    and not self._fence_holds(message, message.alongside)
                }
                # Of two messages under one key, the one whose run ended last.
                latest = latest_per_key(
                    [message for n, message in enumerate(messages) if n not in fenced],
                    key=lambda message: message.key,
                    ended_at=lambda message: message.ended_at,
                )
                added: int = 0
                if latest:
                    self._db.executemany(_REPLACE, [message.replaced for message in latest])
                    added = self._db.executemany(
                        _INSERT, [self._row(message) for message in latest]
                    ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):  # the store's own error, either kind
                    self._db.execute("ROLLBACK")
                raise
        # A driver that cannot count the rows of a batch says -1: wake delivery anyway.
        self._committed(added != 0)
        return added != 0, fenced

    def _fence_holds(self, message: _Message, alongside: Alongside) -> bool:
        """Run a message's fence (in the open transaction); whether it held.

        A message not the latest under its key keeps its fence too: it ends that claim.
        """
        sql = f"{_fence(alongside)} SELECT EXISTS (SELECT 1 FROM held) AS held"  # noqa: S608 - constants
        return bool(first_row(self._db, sql, _fence_parameters(message, alongside))["held"])

    def _message(
        self,
        key: str,
        payload: bytes,
        ended_at: float | None,
        notes: str | None,
        alongside: Alongside | None,
    ) -> _Message:
        if not payload:  # a delivered row's payload: a pending one holding it is damaged
            raise ValueError(f"payload: the message under {key!r} is empty")
        if alongside is not None and not self.fleet:
            raise ValueError("alongside: a statement committed with a message is a fleet's")
        ended_at = self._clock() if ended_at is None else ended_at
        return _Message(key, payload, ended_at, notes, alongside)

    def _row(self, message: _Message) -> tuple[str, bytes, float, str, float, float, str | None]:
        # The replica that ran it delivers it (its lease); another only if it dies.
        now = self._clock()
        key, payload, ended_at, notes, _ = message
        lease_until = self._leases.now() + self._lease_s
        return (key, payload, now, self._owner, lease_until, ended_at, notes)

    def _committed(self, added: int) -> None:
        self._checkpoints.committed()
        self._measure()
        if added:
            self._drained.clear()
            self._wakeup.set()

    def refusal(self) -> str:
        """Why no run may start now: outbox.db past ``max_bytes``; "" when one may."""
        return self._refusal

    def _committed_freeing(self) -> None:
        """After a commit on the loop that may have freed space (notes dropped, rows deleted).

        Measured again at once: the refusal must lift as soon as the space is free. Found
        by probe 104: delivery's last mark measured a file still holding the delivered
        runs' notes (past the bound), the notes went without a measure, and with every
        run refused no later commit came to lift it.
        """
        self._checkpoints.committed()
        self._measure()

    def _measure(self) -> None:
        """(SQLite, after each commit on the loop) Whether the results waiting are past ``max_bytes``.

        Measured as outbox.db's pages in use (read from its header: no scan) less what
        the dead letters take, known since they last changed. Every such commit measures
        (``_committed``, ``_committed_freeing``, delivery's marks, the dead letters'
        changes): a refusal that no later commit would measure again stops every run.
        """
        if self._max_bytes is None or self.fleet:
            return
        try:
            in_use, _ = outbox_space.pages(cast(sqlite3.Connection, self._db))
            waiting = max(0, in_use - self._dead_bytes)
            if waiting < self._max_bytes:
                if self._refusal:
                    # Taken by the supervisor, or (none pending) recorded by the history.
                    logger.warning(
                        "outbox: what waits in outbox.db is within outbox_max_bytes again;"
                        " runs start again"
                    )
                self._refusal = ""
                return
            refusal = outbox_space.over_bound(self.pending(), waiting, self._max_bytes)
        except (sqlite3.Error, UnavailableError) as err:  # the storage's: its writes say so
            logger.debug("outbox: its size was not read: %s", err)
            return
        if not self._refusal:
            logger.error("outbox: %s", refusal)
        self._refusal = refusal

    def last_error(self) -> str:
        """Why the last try to deliver failed; "" when none failed since one was delivered.

        What an operator asks while results pile up: the supervisor away, refusing them,
        or the storage.
        """
        return self._last_error

    def pending(self) -> int:
        """Messages not yet acknowledged (dead ones excluded)."""
        with reading(self._path):
            row = self._db.execute(
                "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
            ).fetchone()
        return int(row[0]) - len(self._unmarked)

    def dead(self) -> int:
        """Messages set aside as dead letters."""
        with reading(self._path):
            return int(self._db.execute("SELECT count(dead_at) FROM outbox").fetchone()[0])

    def stats(self) -> OutboxStats:
        with reading(self._path):
            delivered, dead = self._db.execute(
                "SELECT count(delivered_at), count(dead_at) FROM outbox"
            ).fetchone()
        return OutboxStats(self.pending(), int(delivered), int(dead), self._duplicates)

    # -- the notes of runs whose bookkeeping a crash may have lost ----------------------------

    def kept_notes(self) -> list[KeptNotes]:
        """The rows that still keep their run's notes, oldest first (``recovery`` reads them)."""
        rows = self._db.execute(
            "SELECT seq, key, ended_at FROM outbox WHERE notes IS NOT NULL ORDER BY seq"
        ).fetchall()
        kept = []
        for seq, key, ended_at in rows:
            try:
                kept.append(
                    KeptNotes(read_seq(seq), shown_key(key), read_time("ended_at", ended_at))
                )
            except DamagedRow:  # delivery sets it aside (``outbox_rows``), as damaged
                logger.warning(
                    "outbox row %r: its ended_at %r is no time; not rebuilt", seq, ended_at
                )
        return kept

    def notes(self, seqs: list[int]) -> dict[int, str]:
        """The notes of these rows (seq: notes), those that still have them."""
        found: dict[int, str] = {}
        for chunk, marks in in_lists(seqs):
            found.update(
                (int(seq), str(notes))
                for seq, notes in self._db.execute(
                    f"SELECT seq, notes FROM outbox WHERE seq IN ({marks})"  # noqa: S608 - ? marks
                    " AND notes IS NOT NULL",
                    chunk,
                ).fetchall()
            )
        return found

    def forget_notes(self, seqs: list[int]) -> None:
        """Drop these rows' notes (their runs are in the history), in one commit."""
        if not seqs:
            return
        with writing(self._path, self._health):
            self._db.execute("BEGIN")
            try:
                for chunk, marks in in_lists(seqs):
                    self._db.execute(
                        f"UPDATE outbox SET notes = NULL WHERE seq IN ({marks})",  # noqa: S608
                        chunk,
                    )
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):  # the store's own error, either kind
                    self._db.execute("ROLLBACK")
                raise
        self._committed_freeing()

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
        with self._written_lock:
            wake = not self._written
            self._written.extend(runs)
        loop = self._loop
        if wake and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (a stop)
                loop.call_soon_threadsafe(self._forget_written_soon)

    def _forget_written_soon(self) -> None:
        """(On the loop) Drop the notes told of: inline on SQLite, in a thread in a fleet."""
        if self._closed:
            return
        if not self.fleet:
            self.forget_written()
        elif self._forgetting is None or self._forgetting.done():
            self._forgetting = asyncio.get_running_loop().create_task(self._forget_in_thread())

    async def _forget_in_thread(self) -> None:
        # On delivery's connection (its lock takes turns with delivery's own statements,
        # also in threads): no sixth connection per replica for an UPDATE now and then.
        while self._written and not self._closed:
            await asyncio.to_thread(self.forget_written, self._ddb)

    def forget_written(self, db: Db | None = None) -> None:
        """Drop now the notes of the runs ``notes_written`` told of (``db``: the loop's).

        Nothing is lost when the storage refuses: the runs are kept for the next try (up
        to ``MAX_WRITTEN_KEPT``), and a start-up drops the notes of runs in the history.
        """
        with self._written_lock:
            written, self._written = self._written, []
        if not written:
            return
        db = self._db if db is None else db
        try:
            with writing(self._path):  # no health: notes kept too long harm nothing
                if isinstance(db, PgDb):
                    db.executemany(_FORGET_WRITTEN, written)
                else:
                    db.execute("BEGIN")
                    try:
                        db.executemany(_FORGET_WRITTEN, written)
                        db.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(Exception):
                            db.execute("ROLLBACK")
                        raise
        except UnavailableError as err:
            with self._written_lock:
                self._written[:0] = written[-MAX_WRITTEN_KEPT:]
            logger.debug("outbox: notes of %d written runs kept for now: %s", len(written), err)
            return
        if db is self._db:
            self._committed_freeing()

    # -- the delivery task ------------------------------------------------------------------

    def start(self) -> None:
        """Start delivering (in the running event loop); idempotent."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._deliver_forever())
            if self._written:  # told before the start (recovery's writes, say)
                self._forget_written_soon()

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
        if self._unmarked:
            logger.warning(
                "outbox: %d results the supervisor acknowledged could not be marked delivered "
                "(the storage); they are sent once more after the next start",
                len(self._unmarked),
            )
        # The writer has stopped (Recorder.close): what it wrote last loses its notes now,
        # so a clean stop leaves notes only of runs the history does not have.
        self._closed = True
        if self._forgetting is not None:
            await asyncio.gather(self._forgetting, return_exceptions=True)
        self.forget_written()
        self._checkpoints.close()
        if self._ddb is not self._db:
            self._ddb.close()
        self._db.close()

    def _next_batch(self) -> tuple[list[tuple[int, str, bytes]], bool]:
        """The oldest rows due now, at most ``batch_size`` and ``batch_bytes`` (always one).

        And whether the batch is full: either bound left rows due now out of it.

        In a fleet: this replica's own, and those whose replica's lease ran out, claimed
        ``FOR UPDATE SKIP LOCKED`` with a lease of this replica's.
        """
        now = self._clock()
        limit = self._batch_size + len(self._unmarked)  # those are skipped below
        if self.fleet:
            self._leases.measure_if_due(self._ddb)
            leases_now = self._leases.now()
            rows = self._ddb.execute(
                "UPDATE outbox SET owner = ?, lease_until = ? WHERE seq IN (SELECT seq FROM outbox"  # noqa: S608 - a lock clause
                " WHERE delivered_at IS NULL AND dead_at IS NULL AND (retry_at <= ? OR retry_at > ?)"
                " AND (owner = ? OR lease_until < ?) ORDER BY seq LIMIT ?"
                + row_lock(self._ddb, skip_locked=True)
                + f") RETURNING {_PENDING_COLUMNS}",
                (
                    self._owner,
                    leases_now + self._lease_s,
                    now,
                    UNREADABLE_TIME_ABOVE,
                    self._owner,
                    leases_now,
                    limit,
                ),
            ).fetchall()
            rows.sort(key=lambda row: int(row[0]))
        else:
            rows = self._ddb.execute(
                f"SELECT {_PENDING_COLUMNS} FROM outbox WHERE delivered_at IS NULL"  # noqa: S608 - a constant
                " AND dead_at IS NULL AND (retry_at <= ? OR retry_at > ?) ORDER BY seq LIMIT ?",
                (now, UNREADABLE_TIME_ABOVE, limit),
            ).fetchall()
        pending, damaged = self._readable(rows, now)
        pending = [row for row in pending if row.seq not in self._unmarked][: self._batch_size]
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
                self._set_aside(row[0], shown_key(row[1]), str(damage))
                damaged += 1
                continue
            if pending.retry_at <= now:  # not a number above UNREADABLE_TIME_ABOVE
                readable.append(pending)
        return readable, damaged

    async def _deliver_forever(self) -> None:
        """Deliver until cancelled; no error ends it (each is logged, then backed off from)."""
        while True:
            delivered_before = self._delivered
            try:
                delivered = await self._deliver_next()
            except UnavailableError as err:  # the disk is full, PostgreSQL is restarting: wait
                self._last_error = str(err)
                logger.warning("outbox: %s", err)
                if self._health is not None and isinstance(err, StoreUnavailable):
                    # Met here first while no run ends: health says so before a run does.
                    self._health.failed(err)
                if self._health is not None and isinstance(err, DatabaseLocked):
                    # Each try would wait for the lock on the loop, stalling every request
                    # for a while: the probe (a thread) tells when it is gone. (On a full
                    # disk delivery goes on: only its marks wait, in memory.)
                    await self._health.sound()
                delivered = False
            except Exception:  # a database or transport bug: it must not end delivery
                self._last_error = "an error in the executor (its log has the traceback)"
                logger.exception("outbox: delivery failed unexpectedly; retrying")
                delivered = False
            if delivered is None:
                continue  # nothing was pending: woken by a new message
            if delivered:
                self._outage.went_through(self._delivered - delivered_before, self._pending_now())
                continue
            delay = self._outage.failed(escaped(self._last_error), self._pending_now())
            await asyncio.sleep(delay)

    def _pending_now(self) -> int | None:
        """``pending()``, or None when the store itself is what is away."""
        try:
            return self.pending()
        except (UnavailableError, DataLossError):
            return None

    async def _io(self, step: Callable[[], _T]) -> _T:
        """A delivery step's database work: in a thread in a fleet, inline on SQLite."""
        if self._ddb is self._db:
            return step()
        return await asyncio.to_thread(step)

    async def _deliver_next(self) -> bool | None:
        """Deliver what is pending now, or wait for something to be.

        True when all of it is done with (delivered or set aside), False to back off, None
        when nothing was pending (after waiting for some).
        """
        unmarked: UnavailableError | None = None
        if self._unmarked:
            try:
                await self._io(lambda: self._mark_delivered({}))
            except UnavailableError as err:  # still: the rows behind them go on meanwhile
                unmarked = err
        # Cleared before the query, not after it: in a fleet the query runs in a thread, and
        # a message committed meanwhile sets it again (its wake-up is not lost, nor is
        # ``_drained`` set while it waits).
        self._wakeup.clear()
        batch, full = await self._io(self._next_batch)
        if not batch:
            if unmarked is not None:
                if not self._wakeup.is_set():
                    self._drained.set()  # nothing is left to send
                raise unmarked  # back off, then try the marks again
            waiting = await self._io(self._next_retry_at)
            if waiting is None and not self._wakeup.is_set():
                self._drained.set()
                if not self.fleet:  # caught up: an outage's peak size given back
                    self._compact()
            if self.fleet:
                # Another replica's results wait for this one if that replica dies: look again.
                waiting = min(waiting or float("inf"), self._clock() + self._lease_s / 3)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if waiting is None else waiting - self._clock()):
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

    def _compact(self) -> None:
        db = cast(sqlite3.Connection, self._db)
        try:
            if outbox_space.compact(db, self._path, free_bytes=self._compact_free_bytes):
                self._measure()
        except sqlite3.Error as err:  # its size unread: the next commit says what is wrong
            logger.debug("outbox: not compacted: %s", err)

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
            self._last_error = str(err)
            # The receiver's words, escaped as the dead-letter line's (``_set_aside``); out
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
        self._duplicates += sum(duplicates)
        self._last_error = ""
        for seq, _, _ in batch:
            self._first_refused.pop(seq, None)
        await self._io(lambda: self._mark_delivered({seq: key for seq, key, _ in batch}))
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
            error = self._last_error = str(err)
            counted = 0 if err.unreachable else 1 + int(batch_refused)
            attempts = await self._io(lambda: self._note_failure(seq, error, counted=counted))
            if not err.retryable:
                self._first_refused.pop(seq, None)
                await self._io(lambda: self._set_aside(seq, key, f"refused: {error}"))
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
                await self._io(lambda: self._set_aside(seq, key, why))
                return True
            # It waits its own backoff while the messages behind it go on.
            delay = self._backoff.delay(attempts, self._rng)
            logger.warning(
                "outbox: delivery of %s failed (%s); retrying it in %.2fs",
                escaped(key),
                escaped(error),
                delay,
            )
            with writing(self._path, self._health):
                self._ddb.execute(
                    "UPDATE outbox SET retry_at = ? WHERE seq = ?", (self._clock() + delay, seq)
                )
            return True
        self._duplicates += duplicate
        self._last_error = ""
        self._first_refused.pop(seq, None)
        await self._io(lambda: self._mark_delivered({seq: key}))
        return True

    def _next_retry_at(self) -> float | None:
        """When the earliest message waiting out its own backoff is due; None if none waits."""
        # Not a time that cannot be read: ``_next_batch`` takes such a row, to set it aside.
        row = self._ddb.execute(
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
        with writing(self._path, self._health):
            row = self._ddb.execute(
                "UPDATE outbox SET attempts = attempts + ?, last_error = ? WHERE seq = ?"
                " RETURNING attempts",
                (counted, error, seq),
            ).fetchone()
        self._checkpoints.committed()
        return int(row[0]) if row else 0

    def _set_aside(self, seq: object, key: str, why: str) -> None:
        """Set a row aside as a dead letter, logged at ERROR; ``seq`` as read (a damaged row's too)."""
        # The receiver's words (a supervisor may echo a job's text): a CR/LF or an escape
        # sequence in them must not split the log line or act on a terminal showing it.
        logger.error("outbox: %s set aside as a dead letter: %s", escaped(key), escaped(why))
        with writing(self._path, self._health):
            self._ddb.execute(
                "UPDATE outbox SET dead_at = ?, last_error = ? WHERE seq = ?",
                (self._clock(), why, seq),
            )
        self._checkpoints.committed()
        self._bound_dead_letters()
        self._measure()

    def _bound_dead_letters(self) -> None:
        """(SQLite, with ``max_bytes``) Keep the dead letters within ``max_bytes`` too.

        A supervisor that refuses every result (another version of the proto, say) would
        otherwise fill the data dir's disk with them. Past the bound the oldest go, each
        logged at WARNING; never the newest, nor one whose notes are kept (its run may not
        be in the history yet). The WARNING does not promise the run is in the history:
        the history's own bounds may have dropped it already (its records may take more
        bytes than the dead letters of the same runs).
        """
        if self._max_bytes is None or self.fleet:
            return
        try:
            self._dead_bytes = self._dead_letter_bytes()
            if self._dead_bytes <= self._max_bytes:
                return
            oldest = self._db.execute(
                "SELECT seq, key, length(payload) FROM outbox WHERE dead_at IS NOT NULL"
                " AND notes IS NULL AND seq <> (SELECT seq FROM outbox WHERE dead_at IS NOT NULL"
                " ORDER BY dead_at DESC, seq DESC LIMIT 1) ORDER BY dead_at, seq"
            ).fetchall()
            dropped: list[tuple[object, object]] = []
            excess = self._dead_bytes - self._max_bytes
            for seq, key, size in oldest:
                if excess <= 0:
                    break
                dropped.append((seq, key))
                excess -= int(size or 0)
            with writing(self._path, self._health):
                self._db.executemany(
                    "DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in dropped]
                )
            self._checkpoints.committed()
            self._dead_bytes = self._dead_letter_bytes()
        except (sqlite3.Error, UnavailableError) as err:  # the storage's: its writes say so
            logger.debug("outbox: dead letters not bounded now: %s", err)
            return
        for _, key in dropped:
            logger.warning(
                "outbox: dead letter %s dropped: the dead letters passed outbox_max_bytes"
                " (%.1f MiB), the oldest go first; its result was not delivered, and its run"
                " is in the history only as long as the history's own bounds keep it"
                " (history_max_runs, history_max_bytes, history_retention_days)",
                escaped(shown_key(key)),
                self._max_bytes / outbox_space.MIB,
            )

    def _dead_letter_bytes(self) -> int:
        """What the dead letters' payloads take (their sizes: no payload is read)."""
        row = self._db.execute(
            "SELECT coalesce(sum(length(payload)), 0) FROM outbox WHERE dead_at IS NOT NULL"
        ).fetchone()
        return int(row[0])

    # -- dead letters ----------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages set aside, newest first."""
        with reading(self._path):
            rows = self._db.execute(
                "SELECT key, created_at, dead_at, attempts, last_error, length(payload)"
                " FROM outbox WHERE dead_at IS NOT NULL ORDER BY dead_at DESC, seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        # A damaged row's columns show as they can: its last_error names the damage.
        return [
            DeadLetter(
                shown_key(k), listed_time(c), listed_time(d), listed_count(a), str(e), int(n)
            )
            for k, c, d, a, e, n in rows
        ]

    def retry_dead(self, keys: Sequence[str] | None = None) -> int:
        """Queue dead letters again (all of them when ``keys`` is None); returns how many.

        Each is queued as if new: its ``attempts`` start again at 0, so a letter retried
        once the receiver is fixed gets ``max_attempts`` tries of its own, and a letter
        set aside again shows the refusals since it was retried. The keys are updated a
        list at a time (``in_lists``), in one transaction: one UPDATE per key, each its
        own commit, held the event loop 11 s for 1.5 million of them.
        """
        queued = 0
        with writing(self._path, self._health):
            if keys is None:
                queued = int(
                    self._db.execute(
                        "UPDATE outbox SET dead_at = NULL, attempts = 0, retry_at = 0"
                        " WHERE dead_at IS NOT NULL"
                    ).rowcount
                )
            else:
                self._db.execute("BEGIN")
                try:
                    for chunk, marks in in_lists(list(dict.fromkeys(keys))):
                        sql = (
                            "UPDATE outbox SET dead_at = NULL, attempts = 0, retry_at = 0"  # noqa: S608 - ? marks
                            f" WHERE key IN ({marks}) AND dead_at IS NOT NULL"
                        )
                        queued += int(self._db.execute(sql, chunk).rowcount)
                    self._db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):  # the store's own error, either kind
                        self._db.execute("ROLLBACK")
                    raise
        self._checkpoints.committed()
        if queued:
            # Queued again, they are results waiting: the bound counts them once more.
            self._bound_dead_letters()
            self._measure()
            self._drained.clear()
            self._wakeup.set()
        return queued

    def _mark_delivered(self, delivered: dict[int, str]) -> None:
        """Record the rows (seq: key) as delivered, in one commit; trim delivered ones now and then.

        A delivered row keeps its key (a repeat of it is not queued again) but not its
        payload: the last ``keep_delivered`` rows of up to a report's size each could
        otherwise hold gigabytes that nothing reads. Its notes are the history's business
        (``notes_written``): a row keeping them is not trimmed.

        With those acknowledged earlier whose mark failed (``_unmarked``); on failure all
        of them stay there, so that none is sent again.
        """
        self._unmarked.update(delivered)
        seqs = sorted(self._unmarked)
        now = self._clock()
        if self.fleet:  # one statement is one transaction: one round trip
            self._ddb.execute(
                "UPDATE outbox SET delivered_at = ?, payload = ? WHERE seq = ANY(?)",
                (now, b"", seqs),
            )
        else:
            with writing(self._path, self._health):
                self._ddb.execute("BEGIN")
                try:
                    self._ddb.executemany(
                        "UPDATE outbox SET delivered_at = ?, payload = ? WHERE seq = ?",
                        [(now, b"", seq) for seq in seqs],
                    )
                    self._ddb.execute("COMMIT")
                except BaseException:
                    if self._ddb.in_transaction:  # SQLite may have rolled back already (disk full)
                        self._ddb.execute("ROLLBACK")
                    raise
            self._checkpoints.committed()
        delivered_now = len(self._unmarked)
        self._unmarked.clear()
        self._delivered += delivered_now
        self._delivered_since_trim += delivered_now
        if self._delivered_since_trim >= 100:
            self._trim_delivered()
        self._measure()

    def _trim_delivered(self) -> None:
        self._delivered_since_trim = 0
        with writing(self._path, self._health):
            self._ddb.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE delivered_at IS NOT NULL"  # noqa: S608
                # A row whose notes are kept stays until its run is in the history.
                " AND notes IS NULL"
                f" ORDER BY seq DESC LIMIT {'ALL' if self.fleet else '-1'} OFFSET ?)",
                (self._keep_delivered,),
            )
        self._checkpoints.committed()  # measured by _mark_delivered, its only caller


def _fence(alongside: Alongside) -> str:
    """The WITH clause of a fenced write: ``held`` has a row while it may be committed.

    The fence's own row, or the same message there already (a retried commit).
    """
    return (
        f"WITH alongside AS ({alongside.sql}), held AS (SELECT 1 FROM alongside"  # noqa: S608 - the executor's own statement
        " UNION ALL SELECT 1 FROM outbox WHERE key = ? AND payload = ?)"
    )


def _fence_parameters(message: _Message, alongside: Alongside) -> tuple[object, ...]:
    return (*alongside.parameters, message.key, message.payload)
