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
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import lru_cache
from typing import Any, Final, Protocol

from executor.errors import ConfigError, UnavailableError

logger = logging.getLogger(__name__)

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
# How long a connection attempt to PostgreSQL may take before the call is answered UNAVAILABLE.
CONNECT_TIMEOUT_S: Final = 3


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


class StoreConflict(UnavailableError):
    """A transaction lost a deadlock or a serialization race: run it again."""


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
    """The row-lock clause for a SELECT on ``db``: "" on SQLite (one writer per file)."""
    if not isinstance(db, PgDb):
        return ""
    return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


class NoCheckpoints:
    """PostgreSQL checkpoints itself: the stores' checkpoint hooks do nothing for it."""

    def committed(self) -> None:
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
# loop. A lost peer is found by TCP within ~10 s, a lock waited for gives up after 5 s,
# and no statement of ours runs 30 s; each is then StoreUnavailable, as a dropped
# connection is (``cbexec store migrate`` makes its own connection, without them).
_STALL_LIMITS: Final[dict[str, Any]] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "options": "-c lock_timeout=5000 -c statement_timeout=30000",
}


class PgDb:
    """A PostgreSQL connection that takes the stores' SQLite-spelled statements.

    Autocommit, as the stores' SQLite connections are: a transaction is an explicit
    ``BEGIN`` ... ``COMMIT``. A connection lost (PostgreSQL restarted, the network) is
    ``StoreUnavailable`` for the statement that met it; the next statement outside a
    transaction connects again, so the executor carries on once the server is back.
    A deadlock, a serialization failure or a unique key two replicas raced for is
    ``StoreConflict``: the caller runs the transaction again.
    """

    def __init__(
        self, url: str, *, application_name: str = "cbexec", stall_limits: bool = True
    ) -> None:
        self._url = url
        self._application_name = application_name
        self._limits: dict[str, Any] = _STALL_LIMITS if stall_limits else {}
        self._lock = threading.RLock()
        self._conn: Any = None
        self._in_transaction = False
        self._connect()

    def _connect(self) -> None:
        import psycopg

        try:
            self._conn = psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=_pg_rows,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=self._application_name,
                **self._limits,
            )
        except psycopg.OperationalError as err:
            self._conn = None
            raise StoreUnavailable(f"PostgreSQL store unreachable: {_first_line(err)}") from err

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def close(self) -> None:
        with self._lock:
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

    def _lost(self) -> bool:
        return self._conn is None or self._conn.broken or self._conn.closed

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
        self._connect()
        return True

    def _run(self, sql: str, call: Any, *, translate: bool = True) -> Any:
        verb = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
        with self._lock:
            if not self._reconnect_if_lost(verb):
                return None
            try:
                with self._errors_translated():
                    cursor = call(self._conn, pg_sql(sql) if translate else sql)
            except BaseException:
                if verb in {"COMMIT", "ROLLBACK"}:
                    # Over either way; a COMMIT that lost its answer may have committed,
                    # which is why every transaction of the stores can be run again.
                    self._in_transaction = False
                raise
            if verb == "BEGIN":
                self._in_transaction = True
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
            self._reconnect_if_lost("")
            with self._errors_translated(), self._conn.pipeline():
                yield

    @contextmanager
    def _errors_translated(self) -> Iterator[None]:
        """The driver's errors as the stores' own: a conflict to retry, a store unreachable."""
        import psycopg
        from psycopg import errors

        try:
            yield
        except (
            errors.DeadlockDetected,
            errors.SerializationFailure,
            # Two replicas inserting the same key at once (registering one job): the
            # loser runs again and then sees the winner's row.
            errors.UniqueViolation,
        ) as err:
            raise StoreConflict(f"PostgreSQL store: {_first_line(err)}") from err
        except (errors.QueryCanceled, errors.LockNotAvailable) as err:  # _STALL_LIMITS
            raise StoreUnavailable(f"PostgreSQL store too slow: {_first_line(err)}") from err
        except psycopg.OperationalError as err:
            if self._conn is None or self._conn.broken or self._conn.closed:
                raise StoreUnavailable(f"PostgreSQL store unreachable: {_first_line(err)}") from err
            raise

    def transaction_failed(self) -> bool:
        """Whether the open transaction can only be rolled back (an error inside it)."""
        from psycopg.pq import TransactionStatus

        return self._conn is not None and self._conn.info.transaction_status in (
            TransactionStatus.INERROR,
        )


def pipelined(db: Db) -> AbstractContextManager[None]:
    """``PgDb.pipeline`` on PostgreSQL; nothing on SQLite (its statements make no round trips)."""
    return db.pipeline() if isinstance(db, PgDb) else nullcontext()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def connect_postgres(
    url: str, *, application_name: str = "cbexec", stall_limits: bool = True
) -> PgDb:
    """A ``PgDb`` on ``url``; ConfigError when psycopg is not installed.

    ``stall_limits``: the timeouts that keep a stalled PostgreSQL from holding the
    executor (``_STALL_LIMITS``); a migration, which may wait and run long, goes without.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            "the PostgreSQL store needs psycopg 3: pip install 'qb-callback-executor[postgresql]'"
        ) from err
    return PgDb(url, application_name=application_name, stall_limits=stall_limits)
