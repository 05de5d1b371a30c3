"""Making the PostgreSQL store's connections: their options, their rows, a lost one made again.

``PgConnector`` makes a ``PgDb``'s connection (autocommit, rows read as sqlite3.Row is,
``PgRow``), and the one after a connection is lost, in a thread of its own so that a
server that does not answer never holds the event loop for its connect timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Final

from executor.pg_errors import StoreUnavailable, first_line

# How long a connection attempt to PostgreSQL may take before the call is answered UNAVAILABLE.
CONNECT_TIMEOUT_S: Final = 3

# How long a statement waits for a lost connection to be made again (``PgConnector.connect_again``).
RECONNECT_WAIT_S: Final = 0.5


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


class PgConnector:
    """Makes one ``PgDb``'s connections: the first, and each one after a connection lost."""

    def __init__(self, url: str, *, application_name: str, limits: dict[str, Any]) -> None:
        self._url = url
        self._application_name = application_name
        self._limits = limits
        # A new connection being made in a thread, for a lost one (``connect_again``).
        self._connecting: Future[Any] | None = None

    def new_connection(self) -> Any:
        """A new connection; StoreUnavailable when the server cannot be reached."""
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
            raise StoreUnavailable(f"PostgreSQL store unreachable: {first_line(err)}") from err

    def connect_again(self, wait_s: float = RECONNECT_WAIT_S) -> Any:
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
        return conn

    def _connect_into(self, connecting: Future[Any]) -> None:
        try:
            connecting.set_result(self.new_connection())
        except StoreUnavailable as err:
            connecting.set_exception(err)

    def close(self) -> None:
        """A connection still being made is closed once it is."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None:  # a connection made after all is closed too
            connecting.add_done_callback(
                lambda made: made.exception() is None and made.result().close()
            )
