"""SQLite's result codes: the primary code of an error, and the lock codes told apart.

Apart from ``storage_failures`` (which judges what a code means for the service) so that
the checkpoint code ``storage_health`` uses can read them too.
"""

from __future__ import annotations

import sqlite3
from typing import Final

SQLITE_BUSY: Final = 5  # another connection held the lock past the busy timeout
SQLITE_LOCKED: Final = 6  # a conflict inside one connection


def primary_code(err: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``err`` (its extended code's low byte); None if none."""
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF
