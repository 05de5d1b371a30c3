"""What a failure of the storage is: told from SQLite's codes, named in a StorageError.

A write that fails for a reason outside the executor (the disk is full, an I/O error,
the file became read-only, another process holds the database locked past the busy
timeout) is a ``StorageError``: an ``UnavailableError`` naming the file and the cause
(``DatabaseLocked`` for the lock; ``StoreRefused`` for a fleet's PostgreSQL refusing a
write for a reason of its own). SQLite's codes say which errors are such failures
(``is_storage_failure``), a lock (``is_busy``, ``is_locked``) or damage (``is_damage``);
a file this user cannot write is named as the cause (``cannot_write``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from pathlib import Path
from typing import Final

from executor.errors import UnavailableError
from executor.sql import StorePermissionDenied
from executor.sqlite_codes import SQLITE_BUSY, SQLITE_LOCKED, primary_code
from executor.sqlite_shm import EFFECTIVE_IDS

# SQLite's primary result codes that mean "the storage failed us", not "our SQL is wrong".
_STORAGE_CODES: Final = frozenset(
    {
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        11,  # SQLITE_CORRUPT
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        26,  # SQLITE_NOTADB
    }
)

# SQLITE_BUSY and SQLITE_LOCKED: another connection held the lock past the busy timeout.
_BUSY_CODES: Final = frozenset({SQLITE_BUSY, SQLITE_LOCKED})


# SQLite's primary result codes for a file it found damaged: SQLITE_CORRUPT, SQLITE_NOTADB.
DAMAGE_CODES: Final = frozenset({11, 26})
# The storage under a file failed it, which says nothing of the file itself:
# SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN (a -shm it cannot make).
FAILING_STORAGE_CODES: Final = frozenset({8, 10, 13, 14})


class StorageError(UnavailableError):
    """A database write failed because of the storage (disk full, I/O error, read-only)."""

    def __init__(self, path: Path | str, cause: str) -> None:
        super().__init__(f"cannot write {path}: {cause}; the executor's data dir needs attention")
        self.path = str(path)
        self.cause = cause


class StoreRefused(UnavailableError):
    """A fleet's PostgreSQL refused a write for a reason of its own, not an outage.

    A privilege taken from the executor's role, a trigger or a constraint an admin added:
    the write may work once that is undone, and the probe tells when, by trying one
    (``StorageHealth``). Its message names no URL (a password may be in it).
    """

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(
            f"the PostgreSQL store refused a write: {cause}; the store needs attention"
        )
        self.path = url


class DatabaseLocked(StorageError):
    """A database write met another connection's lock, held past the busy timeout.

    Another process (a backup, an admin's ``sqlite3``) holds the database's write lock:
    the write may work once it lets go, and the probe tells when (``StorageHealth``).
    """

    def __init__(self, path: Path | str, cause: str) -> None:
        super().__init__(path, f"{cause} (another process holds its write lock)")


def is_busy(err: sqlite3.Error) -> bool:
    """Whether an SQLite error is "database is locked": the same write may work later."""
    return primary_code(err) in _BUSY_CODES


def is_locked(err: sqlite3.Error) -> bool:
    """Whether an SQLite error is SQLITE_BUSY: another connection held the lock past the timeout.

    Not SQLITE_LOCKED, a conflict inside one connection: that is a bug of ours.
    """
    return primary_code(err) == SQLITE_BUSY


def is_storage_failure(err: sqlite3.Error) -> bool:
    """Whether an SQLite error is the storage's fault (see ``_STORAGE_CODES``)."""
    return primary_code(err) in _STORAGE_CODES


def is_damage(err: sqlite3.Error) -> bool:
    """Whether SQLite found the file damaged (not merely the storage under it failing)."""
    return primary_code(err) in DAMAGE_CODES


def cannot_write(file: Path) -> str:
    """Why this user cannot write ``file``, as far as can be seen without trying."""
    try:
        read_only = bool(os.statvfs(file).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = "its filesystem is mounted read-only" if read_only else "its mode, or chattr +i"
    return f"this user cannot write {file.name} ({why})"


def why_refused(path: Path, err: sqlite3.Error) -> str:
    """SQLite's words for a write the storage refused, and the file this user cannot write, if one.

    SQLite says "disk I/O error" for a database or log made immutable under it: named as
    start-up names it (``_unwritable``).
    """
    file = unwritable_file(path)
    return str(err) if file is None else f"{err}: {cannot_write(file)}"


def unwritable_file(path: Path) -> Path | None:
    """The first of the database at ``path``, its -wal and -shm that this user cannot write."""
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):
            if file.is_file() and not os.access(file, os.W_OK, effective_ids=EFFECTIVE_IDS):
                return file
    return None


def refused_by_store(err: BaseException) -> bool:
    """Whether ``err`` is a fleet's PostgreSQL refusing a statement for a reason of its own.

    A privilege (``StorePermissionDenied``), or any other error of the server's that the
    connection did not take for an outage (a trigger's, a constraint's): psycopg's own.
    """
    if isinstance(err, StorePermissionDenied):
        return True
    psycopg = sys.modules.get("psycopg")  # imported by then, where a store is PostgreSQL
    return psycopg is not None and isinstance(err, psycopg.DatabaseError)
