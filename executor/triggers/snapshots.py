"""Read-only connections to the trigger store, for the long reads made on worker threads.

An explanation of a big job (``cbexec triggers why``: thousands of callbacks, each with
its journal and checks) reads for a while. On the store's own connections it would hold
their lock all that time: on SQLite the one every transaction takes (the published
events wait), in a fleet the one the event loop's statements take (the loop waits). So
such reads go to a connection of their own, inside one read-only transaction: SQLite's
WAL lets it read the last committed state while a transaction writes, and PostgreSQL's
``REPEATABLE READ`` gives the same. The reads of one block see one committed state.

A connection serves one reader at a time and is kept for the next one; another is opened
when all are busy, up to ``MOST_READERS`` (then a reader waits, on its own thread).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from executor import sqlite_shm
from executor.errors import UnavailableError
from executor.sql import Db

logger = logging.getLogger(__name__)

# SQLite: a deferred transaction takes its snapshot at its first read and never locks.
SQLITE_BEGIN: Final = "BEGIN"
POSTGRES_BEGIN: Final = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# Connections open at most: readers beyond wait for one (a fleet's replica holds this many
# more PostgreSQL connections while explanations are read; the README counts them).
MOST_READERS: Final = 2


def sqlite_reader(path: str) -> Callable[[], Db]:
    """How to open a read-only connection to the SQLite store at ``path`` (checked open)."""

    def connect() -> Db:
        db = sqlite_shm.connect(path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA query_only = ON")  # a reader that writes is a bug: refused
        return db

    return connect


class SnapshotReaders:
    """At most ``most`` read-only connections, each handed to one reader at a time (``snapshot``)."""

    def __init__(self, connect: Callable[[], Db], *, begin: str, most: int = MOST_READERS) -> None:
        self._connect = connect
        self._begin = begin
        self._most = most
        self._idle: list[Db] = []
        self._open = 0  # connections made and not closed: idle or in a reader's hands
        self._changed = threading.Condition()
        self._closed = False

    @contextmanager
    def snapshot(self) -> Iterator[Db]:
        """A connection inside a read-only transaction, for this block only (any thread).

        Waits for a connection while ``most`` are in use.

        Raises:
            UnavailableError: the store is closed (or, in a fleet, PostgreSQL is away).
        """
        db = self._take()
        try:
            db.execute(self._begin)
            yield db
        finally:
            self._put_back(db, reusable=self._end(db))

    def _take(self) -> Db:
        with self._changed:
            while not self._closed and not self._idle and self._open >= self._most:
                self._changed.wait()
            if self._closed:
                raise UnavailableError("the trigger store is closed")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return self._connect()
        except BaseException:
            self._forget()
            raise

    @staticmethod
    def _end(db: Db) -> bool:
        """End the block's transaction (it wrote nothing); False when the connection is lost."""
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except (sqlite3.Error, UnavailableError) as err:
            logger.debug("a snapshot connection could not end its transaction: %s", err)
            return False
        return True

    def _put_back(self, db: Db, *, reusable: bool) -> None:
        with self._changed:
            if reusable and not self._closed:
                self._idle.append(db)
                self._changed.notify()
                return
        self._forget()
        db.close()

    def _forget(self) -> None:
        """One connection fewer: a waiting reader may open one."""
        with self._changed:
            self._open -= 1
            self._changed.notify()

    def close(self) -> None:
        """Close the idle connections; those in use close when their reader is done."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._changed.notify_all()
        for db in idle:
            db.close()
