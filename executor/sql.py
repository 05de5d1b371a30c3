"""One SQL dialect for the executor's stores: SQLite (one machine) or PostgreSQL (a fleet).

The stores (the trigger store, the outbox, the run history) write their SQL once, in
SQLite's spelling with ``?`` placeholders, and run it on a ``Db``: an SQLite connection
as it is, or ``PgDb`` (``pg_db``), which hands the same statements to PostgreSQL through
psycopg 3. The differences are few and spelled out once (``pg_spelling`` translates a
statement and the schema), not at every call site:

* Placeholders: ``?`` becomes ``%s`` (and a literal ``%`` is doubled).
* Row locks: ``FOR UPDATE`` / ``FOR UPDATE SKIP LOCKED`` are what a fleet's replicas
  claim and serialize with; SQLite has one writer per file and no such clause
  (``row_lock`` gives the clause for a connection).
* ``BEGIN IMMEDIATE`` (SQLite's write lock up front) is a plain ``BEGIN``.
* The schema: ``pg_ddl`` turns the stores' SQLite DDL into PostgreSQL's (serial keys,
  64-bit integers, doubles, ``bytea``, no PRAGMAs, an explicit ``rowid`` where SQLite's
  implicit one is read).

This module ties them together: the ``Db`` the stores take, the helpers they call
whichever database it is (``row_lock``, ``in_lists``, ``one_transaction``, ...), and
the names of PostgreSQL's pieces they use: its connection (``pg_db``), its errors
(``pg_errors``), its time limits (``pg_stalls``).

A store chosen by the ``store`` setting: empty means SQLite files in the data dir, a
``postgresql://`` URL means that database (``is_postgres``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, Final, Protocol, TypeVar

from executor.pg_db import PgDb, connect_postgres
from executor.pg_errors import (
    StoreConflict,
    StoreLockTimeout,
    StorePermissionDenied,
    StoreUnavailable,
)
from executor.pg_spelling import pg_ddl
from executor.pg_stalls import lock_waits

__all__ = [
    "IN_LIST_VALUES",
    "POSTGRES_SCHEMES",
    "Db",
    "NoCheckpoints",
    "PgDb",
    "Row",
    "StoreConflict",
    "StoreLockTimeout",
    "StorePermissionDenied",
    "StoreUnavailable",
    "connect_postgres",
    "execute_counted",
    "first_row",
    "in_lists",
    "is_postgres",
    "lock_waits",
    "one_transaction",
    "pg_ddl",
    "pipelined",
    "row_lock",
]

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


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


def is_postgres(store: str) -> bool:
    """Whether a ``store`` setting names a PostgreSQL database."""
    return store.startswith(POSTGRES_SCHEMES)


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


def marks_for(values: Sized) -> str:
    """``?, ?, ...``: a parameter mark for each of ``values`` (an ``IN`` list, a row)."""
    return ", ".join("?" * len(values))


def in_lists(values: Sequence[_V]) -> Iterator[tuple[list[_V], str]]:
    """``values`` in parts of at most ``IN_LIST_VALUES``, each with its ``?, ?, ...`` marks."""
    for start in range(0, len(values), IN_LIST_VALUES):
        part = list(values[start : start + IN_LIST_VALUES])
        yield part, marks_for(part)


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
