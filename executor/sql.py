"""One SQL dialect for the executor's stores: SQLite (one machine) or PostgreSQL (a fleet).

The stores (the trigger store, the outbox, the run history) write their SQL once, in
SQLite's spelling with ``?`` placeholders, and run it on a ``Db``: an SQLite connection
as it is, or ``PgDb``, which hands the same statements to PostgreSQL through psycopg 3.
The differences are few and spelled out here, not at every call site:

* Placeholders: ``?`` becomes ``%s`` (and a literal ``%`` is doubled).
* Row locks: ``FOR UPDATE`` / ``FOR UPDATE SKIP LOCKED`` are what a fleet's replicas
  claim and serialize with; SQLite has one writer per file and no such clause
  (``row_lock`` gives the clause for a connection).
* ``BEGIN IMMEDIATE`` (SQLite's write lock up front) is a plain ``BEGIN``.
* The schema: ``pg_ddl`` turns the stores' SQLite DDL into PostgreSQL's (serial keys,
  64-bit integers, doubles, ``bytea``, no PRAGMAs, an explicit ``rowid`` where SQLite's
  implicit one is read).

A store chosen by the ``store`` setting: empty means SQLite files in the data dir, a
``postgresql://`` URL means that database (``is_postgres``).
"""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, Final, Protocol, TypeVar

from executor.errors import ConfigError, UnavailableError

logger = logging.getLogger(__name__)

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
# How long a connection attempt to PostgreSQL may take before the call is answered UNAVAILABLE.
CONNECT_TIMEOUT_S: Final = 3
# How long a statement of ours may go unanswered before its connection is cut on our
# side (``_Watchdog``): a PostgreSQL that stops answering without closing anything (a
# frozen host or VM, a SIGSTOP) keeps TCP alive, and its statement_timeout never runs.
ANSWER_DEADLINE_S: Final = 5.0
# After one statement went unanswered, every statement of this process fails at once for
# this long (then one asks again): each would otherwise hold the event loop for its own
# deadline, one after another, while the server stays frozen.
UNANSWERED_QUIET_S: Final = 10.0
# How often the watchdog looks at the statements in flight; a look this much later than
# asked for means the process itself was stalled (SIGSTOP, a paused VM, a swapping host),
# not the server: the statements then in flight get a fresh ANSWER_DEADLINE_S from it.
WATCH_TICK_S: Final = 0.25
LATE_TICK_S: Final = 1.0
# How long a statement waits for a row or table lock another session holds (PostgreSQL's
# lock_timeout), then ``StoreLockTimeout``: well under ANSWER_DEADLINE_S, so a lock wait
# always ends as the server's own lock timeout, never as a frozen server's cut connection
# (equal, the watchdog won the race at times, and the whole replica stopped for
# UNANSWERED_QUIET_S over one row an admin held; probe 110). It also bounds how long one
# such statement holds the event loop.
LOCK_TIMEOUT_S: Final = 2.0
# How long a session of ours may sit idle inside a transaction before the server ends it
# (PostgreSQL's idle_in_transaction_session_timeout), which lets its row locks go: a
# replica stopped mid-transaction (SIGSTOP, a paused VM) would otherwise hold them, and
# every other replica's events of those jobs, for as long as it stays stopped (probe
# 114). A transaction's statements follow one another without an await between them:
# the longest gap is Python work of one thread (a group of 500 events decided, a big
# job's explanation read between two statements), a second or two on a loaded box; this
# is a few times that, and under the default lease (15 s).
IDLE_IN_TRANSACTION_S: Final = 10.0
# How long a statement waits for a lost connection to be made again (``_connect_again``).
RECONNECT_WAIT_S: Final = 0.5
# libpq's PQpipelineStatus of a connection not in pipeline mode (psycopg.pq.PipelineStatus.OFF).
PIPELINE_OFF: Final = 0


class Row(Protocol):
    """A result row read by column name or position (sqlite3.Row, ``PgRow``)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Db(Protocol):
    """The part of a DB-API connection the stores use (sqlite3.Connection, ``PgDb``)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


class StoreUnavailable(UnavailableError):
    """PostgreSQL cannot be reached (down, restarting, the network): try again later."""


class StoreLockTimeout(UnavailableError):
    """A statement waited ``LOCK_TIMEOUT_S`` for a lock another session holds, and gave up.

    Not an outage: the connection is sound and kept, and only what needs the locked rows
    or table fails (an admin's transaction left open, a ``LOCK TABLE``, a ``VACUUM
    FULL``). The storage is not marked degraded for it; try again later.
    """


class StoreConflict(UnavailableError):
    """A transaction lost a deadlock or a serialization race: run it again."""


class StorePermissionDenied(ConfigError):
    """The store's role lacks a privilege a statement needs: the deployment's to fix."""


def is_postgres(store: str) -> bool:
    """Whether a ``store`` setting names a PostgreSQL database."""
    return store.startswith(POSTGRES_SCHEMES)


@lru_cache(maxsize=4096)
def pg_sql(sql: str) -> str:
    """A statement in SQLite's spelling, as PostgreSQL (through psycopg) takes it."""
    if sql.strip().upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    return sql.replace("%", "%%").replace("?", "%s")


def row_lock(db: Db, *, skip_locked: bool = False) -> str:
    """The row-lock clause for a SELECT on ``db``: "" on SQLite (one writer per file).

    "" too on a read-only connection (a snapshot's: PostgreSQL refuses a lock in a
    read-only transaction, and a reader that writes nothing needs none).
    """
    if not isinstance(db, PgDb) or db.read_only:
        return ""
    return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


class NoCheckpoints:
    """PostgreSQL checkpoints itself: the stores' checkpoint hooks do nothing for it."""

    def committed(self) -> None:
        return None

    def settle(self) -> None:
        return None

    def wait(self) -> None:
        return None

    def close(self) -> None:
        return None


# Tables whose reads order by SQLite's implicit rowid (checks, runs) or whose migration reads it.
_READ_BY_ROWID: Final = frozenset({"trigger_checks", "runs", "atoms"})
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \(", re.IGNORECASE)


def pg_ddl(script: str) -> str:
    """The stores' SQLite schema as PostgreSQL DDL (see the module docstring)."""
    lines = [line for line in script.splitlines() if not line.strip().upper().startswith("PRAGMA")]
    ddl = "\n".join(lines)
    ddl = ddl.replace("rowid INTEGER PRIMARY KEY", "rowid BIGSERIAL PRIMARY KEY")
    ddl = ddl.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    ddl = re.sub(r"\bINTEGER\b", "BIGINT", ddl)
    ddl = re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)
    ddl = re.sub(r"\bBLOB\b", "BYTEA", ddl)
    ddl = ddl.replace(") WITHOUT ROWID;", ");")
    ddl = re.sub(r"^(\s+)user TEXT", r'\1"user" TEXT', ddl, flags=re.MULTILINE)
    # SQLite's implicit rowid orders some reads (checks, runs): PostgreSQL gets a column.
    out: list[str] = []
    pos = 0
    for match in _CREATE_TABLE.finditer(ddl):
        end = ddl.find("\n);", match.end())
        body = ddl[match.end() : end]
        out.append(ddl[pos : match.end()])
        if match.group(1) in _READ_BY_ROWID and not re.search(r"^\s+rowid\b", body, re.M):
            out.append("\n    rowid BIGSERIAL,")
        pos = match.end()
    out.append(ddl[pos:])
    return "".join(out)


class PgRow(tuple[Any, ...]):
    """A PostgreSQL row read as sqlite3.Row is: by column name or by position."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> PgRow:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _pg_rows(cursor: Any) -> Any:
    """Psycopg row factory: ``PgRow``s named after the cursor's columns."""
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, names)


# A PostgreSQL that stops answering without closing the connection (a partition, a
# table an admin locked) must not hold the executor: its statements run on the event
# loop. A lost peer is found by TCP within ~10 s and no statement of ours runs 30 s,
# each then StoreUnavailable, as a dropped connection is; a lock waited for gives up
# after LOCK_TIMEOUT_S (StoreLockTimeout). ``cbexec store migrate`` makes its own
# connection, without them. A session left idle in its transaction is ended by the
# server after IDLE_IN_TRANSACTION_S.
def _stall_limits() -> dict[str, Any]:
    return {
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
        "options": f"-c lock_timeout={round(LOCK_TIMEOUT_S * 1000)} -c statement_timeout=30000"
        f" -c idle_in_transaction_session_timeout={round(IDLE_IN_TRANSACTION_S * 1000)}",
    }


# How long the statements of this thread's transactions wait for a lock instead of
# LOCK_TIMEOUT_S (``lock_waits``); None: LOCK_TIMEOUT_S.
_lock_wait_s: ContextVar[float | None] = ContextVar("cbexec_lock_wait_s", default=None)


@contextmanager
def lock_waits(seconds: float) -> Iterator[None]:
    """The transactions begun in the block wait ``seconds`` at most for a lock (``SET LOCAL``).

    For work that has already waited out one lock timeout and only needs to know what is
    still locked (group_commit.py): each further wait would hold everything after it.
    """
    token = _lock_wait_s.set(seconds)
    try:
        yield
    finally:
        _lock_wait_s.reset(token)


class _Watchdog:
    """One thread that cuts the connection of any statement unanswered past its deadline.

    The statements run on the event loop, so an answer that never comes would hold the
    whole executor (health included). Shutting the socket down makes the waiting call
    fail at once, as a dropped connection does: ``StoreUnavailable``.

    The process's own stall is not the server's (probe 114): woken after one, the
    watchdog may look before the answer already waiting in the socket is read. So a look
    far later than asked for gives the statements in flight a fresh deadline, and a
    connection whose answer waits unread is not cut.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._watched: weakref.WeakSet[PgDb] = weakref.WeakSet()
        # When a statement was last cut off (monotonic); see UNANSWERED_QUIET_S.
        self.unanswered_at = float("-inf")
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._clock = clock
        self._looked_at = clock()
        # When the watchdog last looked late (the process was stalled): nothing in flight
        # then is cut before ANSWER_DEADLINE_S after it.
        self._stalled_until = float("-inf")

    def watch(self, db: PgDb) -> None:
        with self._lock:
            self._watched.add(db)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cbexec-pg-watchdog", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_TICK_S)
            self.look()

    def look(self) -> list[PgDb]:
        """Cut the connections whose statements are overdue; those it cut."""
        now = self._clock()
        if now - self._looked_at > WATCH_TICK_S + LATE_TICK_S:
            self._stalled_until = now
        self._looked_at = now
        if now < self._stalled_until + ANSWER_DEADLINE_S:
            return []
        with self._lock:
            overdue = [db for db in self._watched if 0 < db.answer_due < now]
        cut = [db for db in overdue if not db.answer_waiting()]
        for db in cut:
            db.cut_off()
        return cut


_watchdog = _Watchdog()


class PgDb:
    """A PostgreSQL connection that takes the stores' SQLite-spelled statements.

    Autocommit, as the stores' SQLite connections are: a transaction is an explicit
    ``BEGIN`` ... ``COMMIT``. A connection lost (PostgreSQL restarted, the network) is
    ``StoreUnavailable`` for the statement that met it; the next statement outside a
    transaction connects again, so the executor carries on once the server is back.
    A deadlock, a serialization failure or a unique key two replicas raced for is
    ``StoreConflict``: the caller runs the transaction again. A privilege the role lacks
    is ``StorePermissionDenied`` (a ConfigError naming the role).
    """

    def __init__(
        self, url: str, *, application_name: str = "cbexec", stall_limits: bool = True
    ) -> None:
        self._url = url
        self._application_name = application_name
        self._limits: dict[str, Any] = _stall_limits() if stall_limits else {}
        self._lock = threading.RLock()
        self._conn: Any = None
        self._in_transaction = False
        # When the statement in progress must have its answer (monotonic); 0 when idle.
        self.answer_due = 0.0
        self._cut_off = False
        # A new connection being made in a thread, for a lost one (``_connect_again``).
        self._connecting: Future[Any] | None = None
        # The connection ``execute_prepared``'s statements are prepared on, and their names.
        self._prepared_on: Any = None
        self._prepared: set[bytes] = set()
        # A query ``send_prepared`` sent whose row ``take_sent_row`` has not taken yet.
        self._sent = False
        # Set on the connections snapshots read on: ``row_lock`` then locks nothing.
        self.read_only = False
        self._conn = self._new_connection()
        if stall_limits:  # migrate's steps may wait and work as long as they need
            _watchdog.watch(self)

    def _new_connection(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=_pg_rows,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=self._application_name,
                # What the prepared statements' own text values are (``_pg_param``,
                # ``_PG_TEXT_VALUES``), whatever PGCLIENTENCODING says.
                client_encoding="UTF8",
                **self._limits,
            )
        except psycopg.OperationalError as err:
            raise StoreUnavailable(f"PostgreSQL store unreachable: {_first_line(err)}") from err

    def _connect_again(self, wait_s: float = RECONNECT_WAIT_S) -> None:
        """A new connection for the lost one, without holding the caller past a moment.

        Made in a thread: a PostgreSQL that accepts TCP but does not answer (frozen)
        would hold the event loop for the whole connect timeout, at every statement. The
        caller waits ``RECONNECT_WAIT_S`` at most (a server that is up answers in
        milliseconds), or ``wait_s``; past that it is ``StoreUnavailable``, and a later
        statement takes the connection once it is made.
        """
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = Future()
            threading.Thread(
                target=self._connect_into, args=(connecting,), name="cbexec-pg-connect", daemon=True
            ).start()
        else:
            wait_s = 0.0
        try:
            conn = connecting.result(timeout=wait_s)
        except FutureTimeout:
            raise StoreUnavailable("PostgreSQL store unreachable: connecting again") from None
        finally:
            if connecting.done():
                self._connecting = None
        self._conn = conn

    def _connect_into(self, connecting: Future[Any]) -> None:
        try:
            connecting.set_result(self._new_connection())
        except StoreUnavailable as err:
            connecting.set_exception(err)

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def close(self) -> None:
        with self._lock:
            connecting, self._connecting = self._connecting, None
            if connecting is not None:  # a connection made after all is closed too
                connecting.add_done_callback(
                    lambda made: made.exception() is None and made.result().close()
                )
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self._run(sql, lambda conn, text: conn.execute(text, tuple(parameters)))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        rows = [tuple(p) for p in parameters]

        def many(conn: Any, text: str) -> Any:
            cursor = conn.cursor()
            if rows:
                cursor.executemany(text, rows)
            return cursor

        return self._run(sql, many)

    def executescript(self, script: str) -> None:
        """Several statements without parameters (DDL), in one round trip."""
        self._run(script, lambda conn, text: conn.execute(text), translate=False)

    def execute_prepared(self, sql: str, parameters: Sequence[Any], /) -> int:
        """A hot statement that returns no rows, straight on libpq; the rows it changed.

        Prepared on the server once per connection and sent with libpq's own calls:
        psycopg's ``execute`` spends ~100 us of Python per call (a cursor, adapting each
        value, its own prepare bookkeeping), which was a third of the outbox commit that
        every Execute waits for. Errors are those of ``execute``. Parameters are ``str``,
        ``bytes`` (sent binary), ``int``, ``float`` or None.
        """
        return int(self._prepared_result(sql, parameters).command_tuples or 0)

    def fetchone_prepared(self, sql: str, parameters: Sequence[Any], /) -> dict[str, Any] | None:
        """A hot query's first row by column name (None: no row), as ``execute_prepared`` runs it.

        Its columns are booleans, integers, floats or text (``_PG_TEXT_VALUES``).
        """
        return _first_row_of(self._prepared_result(sql, parameters))

    def send_prepared(self, sql: str, parameters: Sequence[Any], /) -> bool:
        """Send a hot query now and take its first row later (``take_sent_row``).

        So its round trip overlaps the caller's own work. One at a time, on a connection
        nothing else uses meanwhile. False, with nothing sent, when it cannot be sent now
        (the connection lost, the store not answering of late, one sent already): the
        caller runs the statement as usual instead. It never waits for a connection: a
        lost one is made again meanwhile, for a later call.
        """
        with self._lock:
            if self._sent or self._in_transaction:
                return False
            try:
                self._not_while_unanswered()
                self._notice_closed_while_idle()
                if self._lost():
                    self._connect_again(wait_s=0.0)
                with self._errors_translated():
                    self._send(self._conn, sql, parameters)
            except UnavailableError:
                return False
            except Exception:
                # Whatever state the connection is in, the statement is run when asked for.
                logger.exception("sending a statement ahead failed; it is run when asked for")
                self._discard()
                return False
            self._sent = True
            return True

    def take_sent_row(self) -> dict[str, Any] | None:
        """The first row of the query ``send_prepared`` sent, waiting for it if need be.

        Errors are those of ``fetchone_prepared``; the statement may have run or not.
        """
        with self._lock:
            if not self._sent:
                raise RuntimeError("take_sent_row: no query was sent")
            self._sent = False
            if self._lost():
                raise StoreUnavailable("PostgreSQL store unreachable: the connection was lost")
            with self._errors_translated():
                pgconn = self._conn.pgconn
                return _first_row_of(_result_checked(pgconn, _first_result(pgconn)))

    def _prepared_result(self, sql: str, parameters: Sequence[Any]) -> Any:
        def run(conn: Any, _: str) -> Any:
            self._send(conn, sql, parameters)
            return _result_checked(conn.pgconn, _first_result(conn.pgconn))

        return self._run(sql, run, translate=False)

    def _send(self, conn: Any, sql: str, parameters: Sequence[Any]) -> None:
        """Send ``sql`` as a statement prepared on ``conn`` (preparing it the first time)."""
        name, text = _prepared_statement(sql)
        values = [_pg_param(value) for value in parameters]
        formats = [1 if isinstance(value, bytes) else 0 for value in parameters]
        pgconn = conn.pgconn
        if self._prepared_on is not conn:
            self._prepared_on, self._prepared = conn, set()
        if name not in self._prepared:
            _result_checked(pgconn, pgconn.prepare(name, text, None))
            self._prepared.add(name)
        pgconn.send_query_prepared(name, values, formats)
        while pgconn.flush():
            _wait_for(pgconn.socket, select.POLLOUT)

    def _lost(self) -> bool:
        return self._conn is None or self._conn.broken or self._conn.closed

    def _notice_closed_while_idle(self) -> None:
        """Read what waits on an idle connection, so one the server closed shows as lost.

        A crashed server (``pg_ctl stop -m immediate``, a failover) closes its sockets
        without a word libpq has read: a statement sent on one fails with "server closed
        the connection unexpectedly" and no SQLSTATE, which cannot tell whether it ran.
        Seen closed before anything is sent, the connection is made again instead
        (``_reconnect_if_lost``). A notice waiting there stays in libpq for later.
        """
        import psycopg

        if self._lost():
            return
        conn = self._conn
        try:
            poller = select.poll()
            poller.register(conn.pgconn.socket, select.POLLIN)
            # The server's last words (a FATAL) may come first, its end of file after.
            for _ in range(_IDLE_READS):
                if not poller.poll(0):
                    return
                conn.pgconn.consume_input()
        except (psycopg.OperationalError, OSError) as err:
            # libpq has marked the connection bad: ``_lost`` says so from now on.
            logger.info("a PostgreSQL connection was closed while idle: %s", _first_line(err))

    def _reconnect_if_lost(self, verb: str) -> bool:
        """Connect again after a lost connection; False when there is nothing to run.

        A statement of a transaction the lost connection held fails (StoreUnavailable):
        the rest of that transaction must not run on a new connection, outside it. A
        ``BEGIN`` starts afresh, whether or not its caller closed the lost transaction,
        and so does anything after a ``COMMIT`` or ``ROLLBACK`` that met the loss.
        """
        if not self._lost():
            return True
        if verb == "BEGIN":
            self._in_transaction = False
        if self._in_transaction and verb != "ROLLBACK":
            raise StoreUnavailable("PostgreSQL store: the connection was lost mid-transaction")
        self._in_transaction = False
        if verb in {"ROLLBACK", "COMMIT"}:
            return False
        self._connect_again()
        return True

    def answer_waiting(self) -> bool:
        """Whether input waits unread in the socket (the watchdog's thread): the server answered."""
        try:
            poller = select.poll()
            poller.register(self._conn.pgconn.socket, select.POLLIN)
            return bool(poller.poll(0))
        except Exception:  # noqa: BLE001 - closed meanwhile: nothing to cut either
            return False

    def cut_off(self) -> None:
        """Shut this connection's socket down (the watchdog's thread): its wait ends at once."""
        _watchdog.unanswered_at = time.monotonic()
        self._cut_off = True
        self.answer_due = 0.0
        try:
            fd = self._conn.pgconn.socket
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError, ValueError) as err:  # closed meanwhile
            logger.debug("cutting off a PostgreSQL connection: %s", err)

    @contextmanager
    def _answered_in_time(self) -> Iterator[None]:
        self._cut_off = False
        self.answer_due = time.monotonic() + ANSWER_DEADLINE_S
        try:
            yield
        finally:
            self.answer_due = 0.0

    @staticmethod
    def _not_while_unanswered() -> None:
        """StoreUnavailable at once within UNANSWERED_QUIET_S of a statement cut off."""
        quiet_s = _watchdog.unanswered_at + UNANSWERED_QUIET_S - time.monotonic()
        if quiet_s > 0:
            raise StoreUnavailable(
                f"PostgreSQL store did not answer a moment ago (a statement left unanswered"
                f" for {ANSWER_DEADLINE_S:.0f} s); none is sent to it for {quiet_s:.0f} s more"
            )

    def _run(self, sql: str, call: Any, *, translate: bool = True) -> Any:
        verb = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
        with self._lock:
            if verb not in {"COMMIT", "ROLLBACK"}:  # those end a transaction, or nothing
                self._not_while_unanswered()
            if verb == "BEGIN" or not self._in_transaction:
                self._notice_closed_while_idle()
            if not self._reconnect_if_lost(verb):
                return None
            text = pg_sql(sql) if translate else sql
            try:
                try:
                    with self._errors_translated():
                        cursor = call(self._conn, text)
                except StoreUnavailable as err:
                    if not self._terminated_before_it_counted(verb, err):
                        raise
                    # The server ended this connection (a restart, an admin's
                    # pg_terminate_backend) while it was idle: nothing of the statement
                    # stayed, so it runs once more on a new connection.
                    self._reconnect_if_lost(verb)
                    with self._errors_translated():
                        cursor = call(self._conn, text)
            except BaseException:
                if verb in {"COMMIT", "ROLLBACK"}:
                    # Over either way; a COMMIT that lost its answer may have committed,
                    # which is why every transaction of the stores can be run again.
                    self._in_transaction = False
                raise
            if verb == "BEGIN":
                self._in_transaction = True
                wait_s = _lock_wait_s.get()
                if wait_s is not None:
                    with self._errors_translated():
                        self._conn.execute(
                            f"SET LOCAL lock_timeout = {max(1, round(wait_s * 1000))}"
                        )
            elif verb in {"COMMIT", "ROLLBACK"}:
                self._in_transaction = False
            return cursor

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """The statements of the block are sent without waiting for each one's answer.

        For writes whose results nobody reads (psycopg's pipeline mode): the block costs
        one round trip whatever it holds. An error of any of them is raised at the end
        of the block, as ``execute`` would raise it (``StoreConflict``, ...).
        """
        with self._lock:
            self._not_while_unanswered()
            if not self._in_transaction:
                self._notice_closed_while_idle()
            self._reconnect_if_lost("")
            try:
                with self._errors_translated(), self._conn.pipeline():
                    try:
                        yield
                    finally:
                        # The block's statements each had (and ended) a deadline of their
                        # own; the Sync on the way out waits for all of their answers.
                        self.answer_due = time.monotonic() + ANSWER_DEADLINE_S
            finally:
                if not self._lost() and self._conn.pgconn.pipeline_status != PIPELINE_OFF:
                    # psycopg could not leave pipeline mode (an answer still awaited, after
                    # an error it gave up on): no statement would run on it again.
                    self._discard()

    def _terminated_before_it_counted(self, verb: str, err: StoreUnavailable) -> bool:
        """Whether a statement that met a terminated connection can simply run again.

        Only outside a transaction (or its BEGIN), and only for the server's own word
        that it ended the session (SQLSTATE 57P01): an aborted session keeps nothing of a
        statement it was running. A connection that just dropped could have committed.
        """
        from psycopg import errors

        return (
            not self._in_transaction
            and verb not in {"COMMIT", "ROLLBACK"}
            and isinstance(err.__cause__, errors.AdminShutdown)
        )

    @contextmanager
    def _errors_translated(self) -> Iterator[None]:
        """The driver's errors as the stores' own: a conflict to retry, a store unreachable.

        Every statement is answered within ``ANSWER_DEADLINE_S`` or its connection is
        cut (``_Watchdog``).
        """
        import psycopg
        from psycopg import errors

        try:
            with self._answered_in_time():
                yield
        except (
            errors.DeadlockDetected,
            errors.SerializationFailure,
            # Two replicas inserting the same key at once (registering one job): the
            # loser runs again and then sees the winner's row.
            errors.UniqueViolation,
        ) as err:
            raise StoreConflict(f"PostgreSQL store: {_first_line(err)}") from err
        except errors.InsufficientPrivilege as err:
            role = self._conn.info.user if self._conn is not None else "?"
            raise StorePermissionDenied(
                f"the PostgreSQL store's role '{role}': {_first_line(err)}"
            ) from err
        except errors.LockNotAvailable as err:  # lock_timeout (_stall_limits)
            # The connection stays: only this statement (and its transaction) failed.
            waited_s = _lock_wait_s.get() or LOCK_TIMEOUT_S
            raise StoreLockTimeout(
                f"PostgreSQL store: a lock another session holds was not let go within"
                f" {waited_s:g} s ({_first_line(err)}); what needs it fails until it is"
            ) from err
        except errors.IdleInTransactionSessionTimeout as err:
            # This process stalled mid-transaction (_stall_limits): the server ended the
            # session, and the transaction with it.
            self._discard()
            raise StoreUnavailable(
                f"PostgreSQL store ended this session, idle in its transaction for over"
                f" {IDLE_IN_TRANSACTION_S:g} s: {_first_line(err)}"
            ) from err
        except errors.QueryCanceled as err:  # statement_timeout (_stall_limits)
            raise StoreUnavailable(f"PostgreSQL store too slow: {_first_line(err)}") from err
        except errors.ReadOnlySqlTransaction as err:
            # A standby (the address reaches the old primary after a failover): a new
            # connection may reach the new primary (target_session_attrs=read-write).
            self._discard()
            raise StoreUnavailable(
                f"PostgreSQL store is read-only (a standby?): {_first_line(err)}"
            ) from err
        except psycopg.OperationalError as err:
            if self._cut_off:
                self._discard()
                raise StoreUnavailable(
                    f"PostgreSQL store did not answer within {ANSWER_DEADLINE_S:g} s"
                ) from err
            if self._lost() or _session_ended(err):
                self._discard()
                said = _server_said(err)
                raise StoreUnavailable(
                    f"PostgreSQL store unreachable: {_first_line(said)}"
                ) from err
            if _server_short(err):
                raise StoreUnavailable(
                    f"PostgreSQL store cannot take it now: {_first_line(err)}"
                ) from err
            raise

    def _discard(self) -> None:
        """Close the connection after a failure that leaves it unusable or of unknown state.

        The next statement outside a transaction makes a new one (``_reconnect_if_lost``);
        one inside the transaction it held fails, as for any connection lost.
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        except Exception as err:  # noqa: BLE001 - it is being thrown away either way
            logger.debug("closing a failed PostgreSQL connection: %s", err)

    def transaction_failed(self) -> bool:
        """Whether the open transaction can only be rolled back (an error inside it)."""
        from psycopg.pq import TransactionStatus

        return self._conn is not None and self._conn.info.transaction_status in (
            TransactionStatus.INERROR,
        )


_statements: dict[str, tuple[bytes, bytes]] = {}
_statements_lock = threading.Lock()


def _prepared_statement(sql: str) -> tuple[bytes, bytes]:
    """A statement in SQLite's spelling as a named server-side one (``$n`` placeholders)."""
    with _statements_lock:
        if sql not in _statements:
            pieces = sql.split("?")
            text = pieces[0] + "".join(f"${n}{rest}" for n, rest in enumerate(pieces[1:], 1))
            _statements[sql] = (f"cbexec_{len(_statements)}".encode(), text.encode())
        return _statements[sql]


def _pg_param(value: Any) -> bytes | None:
    """One parameter as libpq takes it: text, except ``bytes`` (binary ``bytea``)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"execute_prepared takes str, bytes, int, float or None, not {type(value)}")


# A text-format result value by its column's type: bool, int2/4/8, float4/8, text/varchar.
_PG_TEXT_VALUES: Final[dict[int, Callable[[bytes], Any]]] = {
    16: lambda value: value == b"t",
    20: int,
    21: int,
    23: int,
    700: float,
    701: float,
    25: bytes.decode,
    1043: bytes.decode,
}


def _wait_for(sock: int, event: int) -> None:
    """Until ``sock`` is ready for ``event`` (or has an error or hangup, which libpq reads)."""
    poller = select.poll()
    poller.register(sock, event)
    poller.poll()


def _first_result(pgconn: Any) -> Any:
    """The first result of the statement sent on ``pgconn``, once all of them are in.

    Not ``PQexec``: it discards what the server said before (``terminating connection
    due to administrator command``), which is how ``_terminated_before_it_counted``
    knows that a statement can run again. ``poll`` lets the GIL go while it waits, so
    the watchdog can cut the connection; not ``select``, which refuses a socket numbered
    past FD_SETSIZE (1024), as the executor's are with many connections or slots.
    """
    sock = pgconn.socket
    while pgconn.flush():
        _wait_for(sock, select.POLLOUT)
    first = None
    while True:
        while pgconn.is_busy():
            _wait_for(sock, select.POLLIN)
            try:
                pgconn.consume_input()
            except Exception:
                # The connection ended: what the server said before it closed, if anything.
                said = first if first is not None else pgconn.get_result()
                if said is None:
                    raise
                return said
        result = pgconn.get_result()
        if result is None:
            return first
        if first is None:
            first = result


def _first_row_of(result: Any) -> dict[str, Any] | None:
    """A prepared query's first row by column name (None: no row), read by column type."""
    if not result.ntuples:
        return None
    row: dict[str, Any] = {}
    for column in range(result.nfields):
        name = result.fname(column).decode()
        read = _PG_TEXT_VALUES.get(result.ftype(column))
        if read is None:
            raise TypeError(f"fetchone_prepared: column {name!r} is of a type it does not read")
        value = result.get_value(0, column)
        row[name] = None if value is None else read(value)
    return row


def _result_checked(pgconn: Any, result: Any) -> Any:
    """``result``, or the error psycopg's ``execute`` would have raised for it."""
    import psycopg
    from psycopg import errors
    from psycopg.pq import ConnStatus, DiagnosticField, ExecStatus

    if result.status in (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK):
        return result
    if pgconn.status == ConnStatus.BAD and not result.error_field(DiagnosticField.SQLSTATE):
        raise psycopg.OperationalError(result.get_error_message("utf-8") or "connection lost")
    raise errors.error_from_result(result, encoding="utf-8")


def execute_counted(db: Db, sql: str, parameters: Sequence[Any]) -> int:
    """Run a statement that returns no rows; the rows it changed (``PgDb.execute_prepared``)."""
    if isinstance(db, PgDb):
        return db.execute_prepared(sql, parameters)
    return int(db.execute(sql, parameters).rowcount)


def first_row(db: Db, sql: str, parameters: Sequence[Any]) -> Any:
    """A query's first row, by column name (``PgDb.fetchone_prepared`` on PostgreSQL)."""
    if isinstance(db, PgDb):
        return db.fetchone_prepared(sql, parameters)
    return db.execute(sql, parameters).fetchone()


_V = TypeVar("_V")

# Values per ``IN (...)`` list: SQLite bounds the parameters of one statement.
IN_LIST_VALUES: Final = 500


def in_lists(values: Sequence[_V]) -> Iterator[tuple[list[_V], str]]:
    """``values`` in parts of at most ``IN_LIST_VALUES``, each with its ``?, ?, ...`` marks."""
    for start in range(0, len(values), IN_LIST_VALUES):
        part = list(values[start : start + IN_LIST_VALUES])
        yield part, ", ".join("?" * len(part))


@contextmanager
def one_transaction(db: Db) -> Iterator[None]:
    """The block's statements in one transaction: committed at its end, rolled back if it raises.

    The rollback's own failure (SQLite rolls back by itself on a full disk, say, and then
    has no transaction to roll back) never hides the error that ended the block.
    """
    db.execute("BEGIN")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        with suppress(Exception):  # the store's own error, either kind
            db.execute("ROLLBACK")
        raise


def pipelined(db: Db) -> AbstractContextManager[None]:
    """``PgDb.pipeline`` on PostgreSQL; nothing on SQLite (its statements make no round trips)."""
    return db.pipeline() if isinstance(db, PgDb) else nullcontext()


# SQLSTATEs of a session the server ended: an admin's pg_terminate_backend or a shutdown
# (57P01), a crash of another backend (57P02), a server starting or stopping (57P03).
_SESSION_ENDED: Final = frozenset({"57P01", "57P02", "57P03"})


# How often an idle connection's waiting input is read before a statement: a notice or
# two, or the server's last words and the end of its connection.
_IDLE_READS: Final = 4


def _session_ended(err: Any) -> bool:
    """Whether a driver error means the connection is over, or in a state nothing can follow.

    The server's word that it ended the session (it may come before libpq has seen the
    connection close), a connection exception (class 08), or an error of libpq's own,
    without an SQLSTATE (a query it could not send, a pipeline it could not leave).
    """
    sqlstate = getattr(err, "sqlstate", None)
    return sqlstate is None or sqlstate in _SESSION_ENDED or sqlstate.startswith("08")


def _server_short(err: Any) -> bool:
    """Whether the server refused for want of a resource: the statement did nothing.

    Its disk, memory or connection slots (class 53), or its file system failed it (58).
    """
    sqlstate = getattr(err, "sqlstate", None) or ""
    return sqlstate.startswith(("53", "58"))


def _server_said(err: BaseException) -> BaseException:
    """The server's error behind one of libpq's own, if any: what to tell the caller.

    Leaving a pipeline after the server ended the session fails with "cannot exit
    pipeline mode while busy", raised while handling the server's "terminating
    connection due to administrator command", which says what happened.
    """
    context = err.__context__
    if context is not None and getattr(err, "sqlstate", None) is None:
        return context if getattr(context, "sqlstate", None) else err
    return err


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def connect_postgres(
    url: str, *, application_name: str = "cbexec", stall_limits: bool = True
) -> PgDb:
    """A ``PgDb`` on ``url``; ConfigError when psycopg is not installed.

    ``stall_limits``: the timeouts that keep a stalled PostgreSQL from holding the
    executor (``_stall_limits``); a migration, which may wait and run long, goes without.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            "the PostgreSQL store needs psycopg 3: pip install 'qb-callback-executor[postgresql]'"
        ) from err
    return PgDb(url, application_name=application_name, stall_limits=stall_limits)
