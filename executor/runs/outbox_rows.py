"""Reading an outbox row's columns as their types: a damaged column is named, never a crash.

SQLite's type affinity stores whatever a statement gives it: an admin's ``UPDATE`` with
``sqlite3`` (or a disk fault) can leave text in a REAL column, text or a number in the
BLOB payload, a blob in the TEXT key. PostgreSQL's typed columns cannot, but they can
hold ``NaN`` or ``Infinity`` in a time, and either store an empty payload or key. Both
outboxes read their rows through these functions, so a damaged row is told apart the
same way in each and set aside as a dead letter with ``DamagedRow``'s reason, instead
of making delivery (or the start-up) fail on it again and again.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

# A time above this is no time: SQLite sorts text and blobs above every number, and
# PostgreSQL sorts NaN there too, so a query for what is due also takes rows whose time
# is above it (and reads them here), instead of waiting for them for ever.
UNREADABLE_TIME_ABOVE: Final = 1e308

# What a reason shows of a damaged value: enough to recognize it, not a megabyte of it.
_SHOWN_CHARS: Final = 60


class DamagedRow(ValueError):
    """A column of an outbox row that cannot be read as its type; the message names it."""

    def __init__(self, column: str, value: object, expected: str) -> None:
        shown = repr(value)
        if len(shown) > _SHOWN_CHARS:
            shown = shown[:_SHOWN_CHARS] + "..."
        super().__init__(f"damaged row: its {column} {shown} is not {expected}")
        self.column = column


class PendingRow(NamedTuple):
    """What delivery reads of a row still to deliver."""

    seq: int
    key: str
    payload: bytes
    retry_at: float


def read_pending(
    seq: object, key: object, payload: object, retry_at: object, attempts: object, ended_at: object
) -> PendingRow:
    """A pending row's columns as their types.

    Raises:
        DamagedRow: a column cannot be read as its type (an empty payload is what a
            delivered row holds, never a message to send).
    """
    row = PendingRow(
        read_seq(seq), read_key(key), read_payload(payload), read_time("retry_at", retry_at)
    )
    read_count("attempts", attempts)
    read_time("ended_at", ended_at)
    return row


def read_seq(value: object) -> int:
    """The row's number (SQLite's rowid, PostgreSQL's serial: damage cannot reach it)."""
    if not isinstance(value, int):
        raise DamagedRow("seq", value, "a row number")
    return value


def read_key(value: object) -> str:
    """The message's key (the invocation id)."""
    if not isinstance(value, str) or not value:
        raise DamagedRow("key", value, "an invocation id")
    return value


def read_payload(value: object) -> bytes:
    """The message's bytes (SQLite gives bytes, PostgreSQL's driver may give a memoryview)."""
    if not isinstance(value, bytes | bytearray | memoryview) or not len(value):
        raise DamagedRow("payload", value, "a stored request")
    return bytes(value)


def read_time(column: str, value: object) -> float:
    """A Unix time column."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DamagedRow(column, value, "a time (a finite number)")
    return float(value)


def read_count(column: str, value: object) -> int:
    """A count column."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DamagedRow(column, value, "a count")
    return value


def shown_key(value: object) -> str:
    """A key for a log line or a listing, whether or not it can be read as one."""
    try:
        return read_key(value)
    except DamagedRow:
        return repr(value)


def listed_time(value: object) -> float:
    """A time for a listing of dead letters: 0 when damaged (their reason names the damage)."""
    try:
        return read_time("time", value)
    except DamagedRow:
        return 0.0


def listed_count(value: object) -> int:
    """A count for a listing of dead letters: 0 when damaged (their reason names the damage)."""
    try:
        return read_count("count", value)
    except DamagedRow:
        return 0
