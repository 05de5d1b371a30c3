"""PgDb: a PostgreSQL connection that takes the stores' SQLite-spelled statements.

What a statement meets on the way is the stores' own error (``pg_errors``); a lost
connection is made again (``pg_connect``); the watchdog and the server's own time limits
keep a stall from holding the executor (``pg_stalls``); hot statements go through libpq
prepared (``pg_prepared``).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from executor import pg_stalls
from executor.errors import ConfigError, UnavailableError
from executor.pg_connect import PgConnector
from executor.pg_errors import (
    StoreConflict,
    StoreLockTimeout,
    StorePermissionDenied,
    StoreUnavailable,
    first_line,
    server_said,
    server_short,
    session_ended,
)
from executor.pg_prepared import (
    PreparedStatements,
    first_result,
    first_row_of,
    result_checked,
)
from executor.pg_spelling import pg_sql

logger = logging.getLogger(__name__)

# libpq's PQpipelineStatus of a connection not in pipeline mode (psycopg.pq.PipelineStatus.OFF).
PIPELINE_OFF: Final = 0


# How often an idle connection's waiting input is read before a statement: a notice or
# two, or the server's last words and the end of its connection.
_IDLE_READS: Final = 4


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
        self._connector = PgConnector(
            url,
            application_name=application_name,
            limits=pg_stalls._stall_limits() if stall_limits else {},
        )
        self._lock = threading.RLock()
        self._conn: Any = None
        self._in_transaction = False
        # When the statement in progress must have its answer (monotonic); 0 when idle.
        self.answer_due = 0.0
        self._cut_off = False
        # Where ``execute_prepared``'s statements are prepared, and their names.
        self._statements = PreparedStatements()
        # A query ``send_prepared`` sent whose row ``take_sent_row`` has not taken yet.
        self._sent = False
        # Set on the connections snapshots read on: ``row_lock`` then locks nothing.
        self.read_only = False
        self._conn = self._connector.new_connection()
        if stall_limits:  # migrate's steps may wait and work as long as they need
            pg_stalls._watchdog.watch(self)

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def close(self) -> None:
        with self._lock:
            self._connector.close()
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
        return first_row_of(self._prepared_result(sql, parameters))

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
                    self._conn = self._connector.connect_again(wait_s=0.0)
                with self._errors_translated():
                    self._statements.send(self._conn, sql, parameters)
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
                return first_row_of(result_checked(pgconn, first_result(pgconn)))

    def _prepared_result(self, sql: str, parameters: Sequence[Any]) -> Any:
        def run(conn: Any, _: str) -> Any:
            self._statements.send(conn, sql, parameters)
            return result_checked(conn.pgconn, first_result(conn.pgconn))

        return self._run(sql, run, translate=False)

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
            logger.info("a PostgreSQL connection was closed while idle: %s", first_line(err))

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
        self._conn = self._connector.connect_again()
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
        pg_stalls._watchdog.unanswered_at = time.monotonic()
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
        self.answer_due = time.monotonic() + pg_stalls.ANSWER_DEADLINE_S
        try:
            yield
        finally:
            self.answer_due = 0.0

    @staticmethod
    def _not_while_unanswered() -> None:
        """StoreUnavailable at once within UNANSWERED_QUIET_S of a statement cut off."""
        quiet_s = (
            pg_stalls._watchdog.unanswered_at + pg_stalls.UNANSWERED_QUIET_S - time.monotonic()
        )
        if quiet_s > 0:
            raise StoreUnavailable(
                f"PostgreSQL store did not answer a moment ago (a statement left unanswered"
                f" for {pg_stalls.ANSWER_DEADLINE_S:.0f} s); none is sent to it for {quiet_s:.0f} s more"
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
                wait_s = pg_stalls._lock_wait_s.get()
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
                        self.answer_due = time.monotonic() + pg_stalls.ANSWER_DEADLINE_S
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
        cut (``pg_stalls._Watchdog``).
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
            raise StoreConflict(f"PostgreSQL store: {first_line(err)}") from err
        except errors.InsufficientPrivilege as err:
            role = self._conn.info.user if self._conn is not None else "?"
            raise StorePermissionDenied(
                f"the PostgreSQL store's role '{role}': {first_line(err)}"
            ) from err
        except errors.LockNotAvailable as err:  # lock_timeout (_stall_limits)
            # The connection stays: only this statement (and its transaction) failed.
            waited_s = pg_stalls._lock_wait_s.get() or pg_stalls.LOCK_TIMEOUT_S
            raise StoreLockTimeout(
                f"PostgreSQL store: a lock another session holds was not let go within"
                f" {waited_s:g} s ({first_line(err)}); what needs it fails until it is"
            ) from err
        except errors.IdleInTransactionSessionTimeout as err:
            # This process stalled mid-transaction (_stall_limits): the server ended the
            # session, and the transaction with it.
            self._discard()
            raise StoreUnavailable(
                f"PostgreSQL store ended this session, idle in its transaction for over"
                f" {pg_stalls.IDLE_IN_TRANSACTION_S:g} s: {first_line(err)}"
            ) from err
        except errors.QueryCanceled as err:  # statement_timeout (_stall_limits)
            raise StoreUnavailable(f"PostgreSQL store too slow: {first_line(err)}") from err
        except errors.ReadOnlySqlTransaction as err:
            # A standby (the address reaches the old primary after a failover): a new
            # connection may reach the new primary (target_session_attrs=read-write).
            self._discard()
            raise StoreUnavailable(
                f"PostgreSQL store is read-only (a standby?): {first_line(err)}"
            ) from err
        except psycopg.OperationalError as err:
            if self._cut_off:
                self._discard()
                raise StoreUnavailable(
                    f"PostgreSQL store did not answer within {pg_stalls.ANSWER_DEADLINE_S:g} s"
                ) from err
            if self._lost() or session_ended(err):
                self._discard()
                said = server_said(err)
                raise StoreUnavailable(f"PostgreSQL store unreachable: {first_line(said)}") from err
            if server_short(err):
                raise StoreUnavailable(
                    f"PostgreSQL store cannot take it now: {first_line(err)}"
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
