"""Opening the executor's SQLite files: checked sound and of their kind, never changed when not.

A file that is not a database (damaged, or something else at that path), or is another
of the executor's databases (its kind is in its header), found at start-up is a
``ConfigError`` naming the file and what to do; the executor never deletes or rewrites
it (``open_database``). ``check_database`` finds the same for ``cbexec serve
--check-config`` without changing anything. An SQLite error met on the way says which
it is (``unusable``): only damage SQLite reports is called damage, never a read-only
filesystem, an I/O error or a lock, whose file is sound. The busy timeouts say how long
a connection waits for another's write lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from executor import sqlite_shm
from executor.database_kinds import KINDS, application_id, check_kind, holding
from executor.errors import ConfigError
from executor.sqlite_codes import primary_code
from executor.storage_failures import (
    DAMAGE_CODES,
    FAILING_STORAGE_CODES,
    cannot_write,
    is_busy,
)

# How long a connection waits for another's write lock before its write fails. On a
# worker thread (the history's bookkeeping, the checkpoints), SQLite's usual 5 s: nothing
# waits for it but that thread.
BUSY_TIMEOUT_S: Final = 5.0
# On the event loop (the outbox's commit before an answer, the trigger store's
# transactions) the wait stalls every request in flight; the embedded supervisor's
# transactions, on its store thread, hold up every farm call as much. Those
# databases have one writing connection each; the only other writer of ours is the
# checkpoint thread's TRUNCATE (a log that could not restart), which holds the lock for
# a copy of the last few frames and an fsync, and for at most two waits of
# ``LOOP_CHECKPOINT_BUSY_TIMEOUT_S`` for readers: well under this. A lock held longer is
# someone else's: the storage refuses the write, as a full disk does.
LOOP_BUSY_TIMEOUT_S: Final = 0.25
LOOP_CHECKPOINT_BUSY_TIMEOUT_S: Final = 0.05


def wait_briefly_for_locks(db: sqlite3.Connection) -> None:
    """From now on, ``db``'s writes wait ``LOOP_BUSY_TIMEOUT_S`` for another's lock.

    Called once a connection the event loop writes through is open: start-up's opening
    (its checks, its schema) waits SQLite's usual 5 s, as the loop serves nothing yet.
    """
    db.execute(f"PRAGMA busy_timeout = {int(LOOP_BUSY_TIMEOUT_S * 1000)}")


# Python's sqlite3 keeps up to this many prepared statements per connection (its default).
# A kept statement keeps the values it was last given (SQLite's copy of each, until the
# next use binds others): a run's 2 x 16 MiB of output stayed so with the history's and
# the outbox's INSERTs, ~75 MiB after floods of invalid UTF-8 (probe 105). A connection
# that binds run outputs keeps none (0): preparing again costs ~3 us a statement.
CACHED_STATEMENTS: Final = 128


def open_database(
    path: Path | str, *, cached_statements: int = CACHED_STATEMENTS
) -> sqlite3.Connection:
    """An autocommit connection to ``path`` (created when missing), checked to be a database.

    Raises ConfigError naming the file when it exists but is not a sound SQLite database
    (``_file_problem``, then SQLite's ``quick_check``) or is another of the executor's
    databases (``check_kind``); the file is left exactly as it was. A database of the
    right kind is marked as such when it is not yet (new, or from an earlier version).
    """
    in_memory = str(path) == ":memory:"  # tests' stores: no file is made for it
    if not in_memory:
        _file_problem(Path(path))
        _unwritable(Path(path))
    try:
        if not in_memory:
            _make_private(path)
        db = sqlite_shm.connect(
            str(path),
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=cached_statements,
        )
    except OSError as err:  # _unwritable saw none of it: a full inode table, say
        raise ConfigError(f"{path}: cannot make the database: {err.strerror or err}") from err
    except sqlite3.Error as err:
        raise ConfigError(f"{path}: cannot open the database: {err}") from err
    try:
        with opening(path):
            _verify(db, Path(path))
            kind = KINDS.get(Path(path).name)
            if kind is not None and application_id(db) != kind[0]:
                db.execute(f"PRAGMA application_id = {kind[0]}")
    except BaseException:
        db.close()
        raise
    return db


def _make_private(path: Path | str) -> None:
    """Make a missing database empty and 0600 (an empty file is an empty SQLite database).

    SQLite would make it with the process umask (0644 under root's usual 022), and its
    ``-wal``, ``-shm`` and ``-journal`` copy the database's mode: in a data dir an admin
    made 0755 every run's output was readable by every local user.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def check_database(path: Path) -> str:
    """What ``open_database`` would find at ``path``, found without changing anything.

    Returns how it looks ("made at start-up", "sound"); raises the ConfigError start-up
    would. Read-only: without a ``-wal`` the file is opened immutable (SQLite makes no
    ``-wal``/``-shm`` for it); with one, read-only through it, as start-up reads it. A
    ``-wal`` without its ``-shm`` (SQLite would make one) is read from a private copy.
    """
    if not os.path.lexists(path):
        return "made at start-up"
    _file_problem(path)
    _unwritable(path)
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if wal.exists() and not shm.exists():
        with tempfile.TemporaryDirectory(prefix="cbexec-check-") as tmp:
            copy = Path(tmp) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, f"{copy}-wal")
            _check_read_only(copy, wal=True, named=path)
    else:
        _check_read_only(path, wal=wal.exists(), named=path)
    return "sound"


def _check_read_only(path: Path, *, wal: bool, named: Path) -> None:
    uri = path.absolute().as_uri() + ("?mode=ro" if wal else "?mode=ro&immutable=1")
    try:
        db = sqlite_shm.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as err:
        raise ConfigError(f"{named}: cannot open the database: {err}") from err
    try:
        with opening(named):
            _verify(db, named)
    finally:
        db.close()


def _file_problem(path: Path) -> None:
    """Raise ConfigError for what SQLite would misread rather than refuse.

    Something other than a file at the path; or an empty file beside a ``-wal`` that
    holds data: SQLite takes an empty file for a new database and deletes its log, and
    the executor never makes that pair (WAL mode writes the file's first page first),
    so the file was truncated, and the log is all that is left of it.
    """
    if os.path.lexists(path) and not path.is_file():
        raise ConfigError(
            f"{path}: not a file: start-up opens a database here; move whatever it is aside"
        )
    wal = Path(f"{path}-wal")
    if path.is_file() and path.stat().st_size == 0 and wal.is_file() and wal.stat().st_size:
        raise ConfigError(
            damaged(path, f"the file is empty but {wal.name} holds {wal.stat().st_size} bytes")
        )


# Read whole at start-up: what they hold is the executor's promise (results to deliver,
# triggers and decided firings), and they stay small. The history (runs.db) may grow to
# gigabytes, and a damaged page there loses no result: its header and schema are read.
_CHECKED_WHOLE: Final = frozenset({"outbox.db", "triggers.db", "supervisor.db"})


def _verify(db: sqlite3.Connection, path: Path) -> None:
    """Raise ConfigError unless ``db`` reads as a sound SQLite database (inside ``opening``).

    SQLite's ``quick_check`` reads every page of the databases in ``_CHECKED_WHOLE`` (a
    few ms for a typical one): a damaged page found now is a refusal naming the file,
    not a traceback at start-up or a storage that fails at some later write.
    """
    whole = path.name in _CHECKED_WHOLE
    check_kind(db, path)
    if not whole:  # what start-up reads of it: the schema, and the runs' count
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "runs" in tables:
            db.execute("SELECT count(*) FROM runs").fetchall()
        return
    found = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)").fetchall()]
    if found != ["ok"]:
        lines = [line.strip("* ") for row in found for line in row.splitlines()]
        raise ConfigError(damaged(path, "; ".join(line for line in lines if line)))


def damaged(path: Path, why: str) -> str:
    """The refusal of a damaged database at ``path``: what it holds, and what to do."""
    return (
        f"{path}: {why}: the file is damaged or is not one of the executor's databases. "
        "It was left untouched: restore it from a backup, or move it aside to start "
        f"with an empty one{holding(path)}"
    )


def unusable(path: Path, err: sqlite3.Error) -> str:
    """The refusal of the database at ``path``, which start-up met ``err`` in, saying what it means.

    Only damage SQLite reports is called damage, with the advice to move the file aside.
    A filesystem the kernel made read-only after an error (ext4's errors=remount-ro still
    shows it mounted read-write), an I/O error or another process's lock leave a sound
    file, and moving aside an ``outbox.db`` loses the results it holds.
    """
    code = primary_code(err)
    if code in DAMAGE_CODES:
        return damaged(path, str(err))
    kept = holding(path)
    if code in FAILING_STORAGE_CODES:
        return refused_by_storage(path, str(err))
    if is_busy(err):
        return (
            f"{path}: {err}: another process holds the database locked (an sqlite3 shell or "
            "a backup, say). It was left untouched: end that, then start again"
        )
    return f"{path}: cannot use the database: {err}. It was left untouched{kept}"


def refused_by_storage(path: Path, cause: str) -> str:
    """The refusal of a sound database at ``path`` whose storage refused start-up: ``cause``."""
    return (
        f"{path}: {cause}: the storage refused it (an I/O error, a read-only filesystem or "
        "file, a full disk); the file is not known to be damaged. It was left untouched: "
        "mend the storage (a filesystem the kernel made read-only after an error says why "
        f"in the kernel log), then start again; do not move the file aside{holding(path)}"
    )


def _unwritable(path: Path) -> None:
    """Raise the storage's refusal when this user cannot write the database or its -wal, -shm.

    SQLite opens such a file read-only without a word, and start-up's reads and
    unchanged schema write nothing: the executor would start, and the first result,
    event or registration would fail (UNAVAILABLE). ``os.access`` asks without opening
    (closing a descriptor would drop this process's SQLite locks on the file), and says
    no for an immutable file (``chattr +i``) even to root.
    """
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if file.is_file() and not os.access(file, os.W_OK, effective_ids=sqlite_shm.EFFECTIVE_IDS):
            raise ConfigError(refused_by_storage(path, cannot_write(file)))


@contextlib.contextmanager
def opening(path: Path | str) -> Iterator[None]:
    """Turn an SQLite error met while start-up opens ``path`` into its ConfigError (``unusable``)."""
    try:
        yield
    except sqlite3.Error as err:
        raise ConfigError(unusable(Path(path), err)) from err
