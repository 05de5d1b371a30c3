"""SQLite connections that touch nothing while their database's ``-shm`` cannot be written.

In WAL mode SQLite keeps its log's index in ``<database>-shm``, mapped into memory
(``mmap``, shared) by the first connection of the process and shared by every later one,
and writes it with plain stores: a commit (``walIndexAppend``), often a read (its read
mark), a checkpoint, and the close of the process's last connection (a checkpoint). A
store to a page the kernel has written back since is a page fault, and ext4 answers it
for a file made immutable (``chattr +i``) with SIGBUS, which ended the whole executor
without a word (probe 141). SQLite never asks first; a ``-wal`` or database made
immutable fails its ``write`` with an error instead, which SQLite reports.

So a ``GuardedConnection`` asks first whether this user may write the ``-shm``
(``os.access``, by path: closing a descriptor of the file would drop this process's
SQLite locks on it), before it opens, before it closes and before each statement; when
not, the statement fails as SQLite fails a write it cannot make, a "disk I/O error"
(the storage's handling names the file and degrades health: ``storage.writing``), and
the close leaves it open for the life of the process (its ``-wal`` keeps every commit
for the next start). A look costs ~2 us, and a trivial Execute runs ~14 statements;
one trusted for even 10 ms let a delivery's mark, written a few ms after its read had
looked, meet a file made immutable in between. So only a file made immutable during a
statement, after its look, still ends the process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

# SQLite's extended code for a failed mapping of the -shm (SQLITE_IOERR_SHMMAP): an I/O
# error to everything that judges codes (``storage_failures.is_storage_failure``).
SQLITE_IOERR_SHMMAP: Final = 10 | (21 << 8)

# Linux's access(2) can ask as the effective user (the one SQLite opens files as).
EFFECTIVE_IDS: Final = os.access in os.supports_effective_ids

# The -shm files whose connections were left open, said once each.
_LEFT_OPEN: set[str] = set()


def connect(database: str | os.PathLike[str], **kwargs: Any) -> sqlite3.Connection:
    """``sqlite3.connect``, guarded; refused as a statement is while the ``-shm`` cannot be written.

    Every connection of the executor's process opens so: one left unguarded would share
    the mapping the others made, and write it.
    """
    refuse_unwritable_shm(_shm_path(database, uri=bool(kwargs.get("uri"))))
    return sqlite3.connect(database, factory=GuardedConnection, **kwargs)


class GuardedConnection(sqlite3.Connection):
    """An ``sqlite3.Connection`` that touches nothing while its ``-shm`` cannot be written.

    Each way to run a statement is guarded: the connection's own ``execute``,
    ``executemany`` and ``executescript`` (which make their cursor without calling
    ``cursor``), those of a cursor it makes, and its close.
    """

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        self.shm_path = _shm_path(database, uri=bool(kwargs.get("uri")))
        self._closed = False
        super().__init__(database, *args, **kwargs)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        refuse_unwritable_shm(self.shm_path)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        refuse_unwritable_shm(self.shm_path)
        return super().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        refuse_unwritable_shm(self.shm_path)
        return super().executescript(sql_script)

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _GuardedCursor)

    def close(self) -> None:
        """Close, unless the ``-shm`` cannot be written: then left open (see the module doc)."""
        if self._closed:
            return
        if not shm_writable(self.shm_path):
            _leave_open(self)
            return
        self._closed = True
        super().close()

    def __del__(self) -> None:
        # Freed unclosed, SQLite closes it, as ``close`` would.
        if not getattr(self, "_closed", True) and not shm_writable(self.shm_path):
            _leave_open(self)


class _GuardedCursor(sqlite3.Cursor):
    """A ``GuardedConnection``'s cursor: its statements are guarded as the connection's are."""

    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        self._refuse_unwritable()
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Self:
        self._refuse_unwritable()
        return super().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        self._refuse_unwritable()
        return super().executescript(sql_script)

    def _refuse_unwritable(self) -> None:
        if isinstance(self.connection, GuardedConnection):
            refuse_unwritable_shm(self.connection.shm_path)


def shm_writable(shm: str) -> bool:
    """Whether SQLite may write ``shm`` (or there is none): this user may write it."""
    return (
        not shm or os.access(shm, os.W_OK, effective_ids=EFFECTIVE_IDS) or not os.path.lexists(shm)
    )


def refuse_unwritable_shm(shm: str) -> None:
    """Raise SQLite's "disk I/O error" when ``shm`` exists and this user may not write it."""
    if shm_writable(shm):
        return
    err = sqlite3.OperationalError("disk I/O error")
    err.sqlite_errorcode = SQLITE_IOERR_SHMMAP
    err.sqlite_errorname = "SQLITE_IOERR_SHMMAP"
    raise err


def _leave_open(db: GuardedConnection) -> None:
    """Keep ``db`` open for the life of the process: one reference more, never given back."""
    db._closed = True
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(db))
    if db.shm_path not in _LEFT_OPEN:
        _LEFT_OPEN.add(db.shm_path)
        logger.warning(
            "%s: this user cannot write it (its mode, or chattr +i): its database's "
            "connection is left open, as SQLite's close would write it (the log keeps "
            "every commit for the next start)",
            db.shm_path,
        )


def _shm_path(database: Any, *, uri: bool) -> str:
    """The ``-shm`` of the database file ``database`` names; "" for one in memory."""
    name = os.fspath(database)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if uri and name.startswith("file:"):
        parts = urlsplit(name)
        if "mode=memory" in parts.query:
            return ""
        name = unquote(parts.path)
    if not name or name == ":memory:":
        return ""
    return str(Path(name).absolute()) + "-shm"
