"""Hot statements on libpq's own calls: prepared on the server once per connection, sent by name.

psycopg's ``execute`` spends ~100 us of Python per call (a cursor, adapting each value,
its own prepare bookkeeping); ``PgDb.execute_prepared``, ``fetchone_prepared`` and
``send_prepared`` send a statement through ``PreparedStatements`` instead and read its
result here: parameters as text (``bytes`` binary), result values by their column's type.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

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


def first_result(pgconn: Any) -> Any:
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


def first_row_of(result: Any) -> dict[str, Any] | None:
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


def result_checked(pgconn: Any, result: Any) -> Any:
    """``result``, or the error psycopg's ``execute`` would have raised for it."""
    import psycopg
    from psycopg import errors
    from psycopg.pq import ConnStatus, DiagnosticField, ExecStatus

    if result.status in (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK):
        return result
    if pgconn.status == ConnStatus.BAD and not result.error_field(DiagnosticField.SQLSTATE):
        raise psycopg.OperationalError(result.get_error_message("utf-8") or "connection lost")
    raise errors.error_from_result(result, encoding="utf-8")


class PreparedStatements:
    """The statements prepared on a ``PgDb``'s connection: each prepared there once, then sent by name."""

    def __init__(self) -> None:
        # The connection the statements are prepared on, and their names.
        self._prepared_on: Any = None
        self._prepared: set[bytes] = set()

    def send(self, conn: Any, sql: str, parameters: Sequence[Any]) -> None:
        """Send ``sql`` as a statement prepared on ``conn`` (preparing it the first time)."""
        name, text = _prepared_statement(sql)
        values = [_pg_param(value) for value in parameters]
        formats = [1 if isinstance(value, bytes) else 0 for value in parameters]
        pgconn = conn.pgconn
        if self._prepared_on is not conn:
            self._prepared_on, self._prepared = conn, set()
        if name not in self._prepared:
            result_checked(pgconn, pgconn.prepare(name, text, None))
            self._prepared.add(name)
        pgconn.send_query_prepared(name, values, formats)
        while pgconn.flush():
            _wait_for(pgconn.socket, select.POLLOUT)
