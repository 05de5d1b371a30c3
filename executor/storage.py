"""The executor's SQLite files: opening them safely, and what a failed write means.

Two kinds of trouble, two answers:

- A file that is not a database (damaged, or something else at that path), or is
  another of the executor's databases (its kind is in its header), found at start-up
  is a ``ConfigError`` naming the file and what to do; the executor never
  deletes or rewrites it (``open_database``). ``check_database`` finds the same for
  ``cbexec serve --check-config`` without changing anything. An SQLite error met on
  the way says which it is (``unusable``): only damage SQLite reports is called damage,
  never a read-only filesystem, an I/O error or a lock, whose file is sound.
- A write that fails for a reason outside the executor (the disk is full, an I/O error,
  the file became read-only, another process holds the database locked past the busy
  timeout) is a ``StorageError``: an ``UnavailableError`` naming the file and the cause,
  which the caller gets instead of a success without a durable record (``writing``),
  never an internal error. ``StorageHealth`` remembers the last such failure, so health
  and metrics show the degraded state, and probes the data directory (and takes the
  lock of each database found locked) until a write works again; then everything
  resumes by itself. On a full disk its probe first gives back what the databases' own
  logs hold needlessly (``sqlite_checkpoints.empty_logs``). A database deleted (or
  replaced) under the running executor is such a failure too, found by a look every few
  seconds (``StorageHealth.watch``), which only a restart ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final

from executor import sqlite_shm
from executor.errors import ConfigError, DataLossError, UnavailableError
from executor.runs.sqlite_checkpoints import empty_logs
from executor.sql import (
    StoreLockTimeout,
    StorePermissionDenied,
    StoreUnavailable,
    connect_postgres,
)
from executor.sqlite_codes import SQLITE_BUSY, SQLITE_LOCKED, primary_code

logger = logging.getLogger(__name__)

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
# How often a degraded executor tries the data directory again.
PROBE_INTERVAL_S: Final = 1.0
# How often a sound one looks whether its databases' files are still the ones it opened.
WATCH_INTERVAL_S: Final = 5.0
PROBE_BYTES: Final = 64 << 10
# How long the probe (a thread of its own) waits for a locked database's write lock.
LOCK_PROBE_TIMEOUT_S: Final = 0.1


class StorageError(UnavailableError):
    """A database write failed because of the storage (disk full, I/O error, read-only)."""

    def __init__(self, path: Path | str, cause: str) -> None:
        super().__init__(f"cannot write {path}: {cause}; the executor's data dir needs attention")
        self.path = str(path)
        self.cause = cause


# What the probe of a fleet's store inserts, and rolls back: a result's row, as a commit
# writes one. Answering SELECT 1 says nothing of writes: a read-only server (a standby
# after a failover, ``default_transaction_read_only``) answers it and refuses them all.
_PROBE_RESULT: Final = "INSERT INTO outbox (key, payload, created_at) VALUES (?, ?, ?)"


def runs_nothing(problem: str) -> str:
    """The refusal of a run, or of an event or registration that would fire one, while ``problem`` holds."""
    return f"the executor cannot record results now, so it runs nothing: {problem}"


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


# SQLITE_BUSY and SQLITE_LOCKED: another connection held the lock past the busy timeout.
_BUSY_CODES: Final = frozenset({SQLITE_BUSY, SQLITE_LOCKED})

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


# What each database holds, for the refusal of a damaged one: moved aside, that is lost.
_HOLDS: Final = {
    "outbox.db": "results not yet delivered to the supervisor",
    "triggers.db": "the registered triggers and firings decided but not yet run",
    "runs.db": "the run history",
    "supervisor.db": "the embedded supervisor's jobs and the events it has not yet forwarded",
}


def _holding(path: Path) -> str:
    """`` (it holds ...)`` for one of the executor's databases, else empty."""
    holds = _HOLDS.get(path.name)
    return f" (it holds {holds})" if holds else ""


# Each database's kind, in its header's application id (``PRAGMA application_id``, "cb"
# and two letters), and the tables only that kind has: a database of another kind at its
# path (triggers.db copied over outbox.db) is refused, not given the tables it lacks and
# written into. Earlier versions wrote no id: their kind is read off their tables.
_KINDS: Final = {
    "outbox.db": (0x63626F62, frozenset({"outbox"})),
    "triggers.db": (0x63627467, frozenset({"atoms", "firings"})),
    "runs.db": (0x63627275, frozenset({"runs"})),
    "supervisor.db": (0x63627370, frozenset({"work", "subjobs"})),
}


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
    databases (``_check_kind``); the file is left exactly as it was. A database of the
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
            kind = _KINDS.get(Path(path).name)
            if kind is not None and _application_id(db) != kind[0]:
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
    _check_kind(db, path)
    if not whole:  # what start-up reads of it: the schema, and the runs' count
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "runs" in tables:
            db.execute("SELECT count(*) FROM runs").fetchall()
        return
    found = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)").fetchall()]
    if found != ["ok"]:
        lines = [line.strip("* ") for row in found for line in row.splitlines()]
        raise ConfigError(damaged(path, "; ".join(line for line in lines if line)))


def _application_id(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA application_id").fetchone()[0])


def _check_kind(db: sqlite3.Connection, path: Path) -> None:
    """Raise ConfigError when the database at ``path`` is another of the executor's.

    Its header's application id says which it is; without one (an earlier version's, or
    a new file), its tables do. One page read, or the schema's: cheap at start-up.
    """
    expected = _KINDS.get(path.name)
    if expected is None:
        return
    found = _application_id(db)
    if found == expected[0]:
        return
    if found:
        other = next((name for name, (mark, _) in _KINDS.items() if mark == found), None)
    else:
        tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master")}
        if tables & expected[1]:
            return  # ours, from before the mark
        other = next((name for name, (_, own) in _KINDS.items() if tables & own), None)
        if other is None:
            return  # new, or none of the executor's: taken as before
    if other is None:  # a mark none of ours has
        what = f"a database of another application (application id {found:#x})"
    else:
        what = f"the executor's {other} (it holds {_HOLDS[other]})"
    raise ConfigError(
        f"{path}: this is {what}, not its {path.name}. It was left untouched: put the "
        "right file back (from a backup), or move this one aside to start with an empty one"
    )


def damaged(path: Path, why: str) -> str:
    """The refusal of a damaged database at ``path``: what it holds, and what to do."""
    return (
        f"{path}: {why}: the file is damaged or is not one of the executor's databases. "
        "It was left untouched: restore it from a backup, or move it aside to start "
        f"with an empty one{_holding(path)}"
    )


# SQLite's primary result codes for a file it found damaged: SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGE_CODES: Final = frozenset({11, 26})
# The storage under a file failed it, which says nothing of the file itself:
# SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN (a -shm it cannot make).
_FAILING_STORAGE_CODES: Final = frozenset({8, 10, 13, 14})


def is_damage(err: sqlite3.Error) -> bool:
    """Whether SQLite found the file damaged (not merely the storage under it failing)."""
    return primary_code(err) in _DAMAGE_CODES


def unusable(path: Path, err: sqlite3.Error) -> str:
    """The refusal of the database at ``path``, which start-up met ``err`` in, saying what it means.

    Only damage SQLite reports is called damage, with the advice to move the file aside.
    A filesystem the kernel made read-only after an error (ext4's errors=remount-ro still
    shows it mounted read-write), an I/O error or another process's lock leave a sound
    file, and moving aside an ``outbox.db`` loses the results it holds.
    """
    code = primary_code(err)
    if code in _DAMAGE_CODES:
        return damaged(path, str(err))
    kept = _holding(path)
    if code in _FAILING_STORAGE_CODES:
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
        f"in the kernel log), then start again; do not move the file aside{_holding(path)}"
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
        if file.is_file() and not os.access(file, os.W_OK, effective_ids=_EFFECTIVE_IDS):
            raise ConfigError(refused_by_storage(path, _cannot_write(file)))


# Linux's access(2) can ask as the effective user (the one SQLite opens files as).
_EFFECTIVE_IDS: Final = os.access in os.supports_effective_ids


def _cannot_write(file: Path) -> str:
    """Why this user cannot write ``file``, as far as can be seen without trying."""
    try:
        read_only = bool(os.statvfs(file).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = "its filesystem is mounted read-only" if read_only else "its mode, or chattr +i"
    return f"this user cannot write {file.name} ({why})"


def _why_refused(path: Path, err: sqlite3.Error) -> str:
    """SQLite's words for a write the storage refused, and the file this user cannot write, if one.

    SQLite says "disk I/O error" for a database or log made immutable under it: named as
    start-up names it (``_unwritable``).
    """
    file = _unwritable_file(path)
    return str(err) if file is None else f"{err}: {_cannot_write(file)}"


def _unwritable_file(path: Path) -> Path | None:
    """The first of the database at ``path``, its -wal and -shm that this user cannot write."""
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):
            if file.is_file() and not os.access(file, os.W_OK, effective_ids=_EFFECTIVE_IDS):
                return file
    return None


def _why_not_emptied(path: Path, error: str) -> str:
    """Why a database's log could not be emptied: a file this user cannot write, else space.

    A file made immutable or given another mode is named as the cause (SQLite then says
    "attempt to write a readonly database", or "disk I/O error"), never a want of space.
    """
    file = _unwritable_file(path)
    if file is not None:
        return f"{error}: {_cannot_write(file)}"
    return f"{error}; copying it takes up to that much free space"


def damaged_in_service(path: Path, why: str) -> str:
    """What a read that met damage in the database at ``path`` answers: what it holds, what to do."""
    return (
        f"{path}: {why}: the file is damaged{_holding(path)}. Stop the executor, then restore it from "
        "a backup, or move it aside (with its -wal and -shm) to start with an empty one"
    )


# Files whose damage a read met, logged once each (every ListRuns of a dashboard meets it).
_DAMAGE_LOGGED: set[str] = set()


@contextlib.contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Turn an SQLite error a read meets into an error naming ``path`` and saying what it means.

    A damaged page (start-up reads only part of the history) is a DataLossError, logged
    at ERROR once per file: no retry mends it. A failing storage (an I/O error) or a lock
    held past the busy timeout is an UnavailableError: the same read may work later.
    Anything else is a bug of ours, raised as it is.
    """
    try:
        yield
    except sqlite3.Error as err:
        if is_damage(err):
            said = damaged_in_service(Path(path), str(err))
            if str(path) not in _DAMAGE_LOGGED:
                _DAMAGE_LOGGED.add(str(path))
                logger.error("%s", said)
            raise DataLossError(said) from err
        if is_busy(err):
            raise UnavailableError(
                f"cannot read {path}: {err} (another process holds it locked); try again"
            ) from err
        if primary_code(err) in _FAILING_STORAGE_CODES:
            raise UnavailableError(
                f"cannot read {path}: {_why_refused(Path(path), err)}; the storage under it "
                "failed (the file is not known to be damaged): the executor's data dir needs "
                "attention"
            ) from err
        raise


@contextlib.contextmanager
def opening(path: Path | str) -> Iterator[None]:
    """Turn an SQLite error met while start-up opens ``path`` into its ConfigError (``unusable``)."""
    try:
        yield
    except sqlite3.Error as err:
        raise ConfigError(unusable(Path(path), err)) from err


class StorageHealth:
    """The last storage failure, if any, and the probe that clears it.

    ``failed`` is called by whoever met a ``StorageError``; ``listeners`` hear every change
    (the gRPC health service). While degraded, ``probe_forever`` writes a small file in
    the data directory every second, and takes and lets go the write lock of each database
    found locked; once that works the state clears. While sound, it looks every
    WATCH_INTERVAL_S whether each database ``watch``ed is still at its path.
    """

    def __init__(self, data_dir: Path, store_url: str = "") -> None:
        self._data_dir = data_dir
        # A fleet's PostgreSQL: its outage degrades the storage too, and the probe asks
        # it as well as the data dir (``probe``).
        self._store_url = store_url
        self._problem = ""
        self._degraded = asyncio.Event()
        self._sound = asyncio.Event()
        self._sound.set()
        # The databases a write found locked (DatabaseLocked) in this degraded spell.
        self._locked: set[str] = set()
        # The databases a write of theirs failed in (StorageError), this spell: the probe
        # writes each, since the data dir's scratch file says nothing of one file made
        # immutable, given another mode, or failing its I/O.
        self._refused: set[str] = set()
        # The databases whose log the probe could not empty, told once a spell.
        self._logs_reported: set[Path] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # probe_forever's
        # The databases start-up opened, and the file (device, inode) each path named then.
        self._opened: dict[Path, tuple[int, int]] = {}
        # The first of them found deleted or replaced: what it records is lost (``lost``).
        self._lost = ""
        self.listeners: list[Callable[[str], None]] = []

    @property
    def problem(self) -> str:
        """What is wrong with the storage, "" when nothing is."""
        return self._problem

    @property
    def lost(self) -> str:
        """A database deleted or replaced under the executor, until a restart; "" if none.

        What is written meanwhile goes into a file nothing reads again: an event applied,
        a registration or a fired run's result would be answered as kept and be gone at
        the stop, so they are refused as an ``Execute`` is (``runs_nothing``).
        """
        return self._lost

    def failed(self, error: UnavailableError) -> None:
        """Note a storage failure (logged once per degraded spell)."""
        if not self._problem:
            logger.error("storage degraded: %s", error)
        locked = error.path if isinstance(error, DatabaseLocked) else ""
        refused = ""
        if isinstance(error, StorageError | StoreRefused) and not locked:
            refused = error.path
        loop = self._loop
        if loop is not None and not loop.is_closed() and _running_loop() is not loop:
            # Met on a worker thread (the trigger engine's transactions, the outbox's
            # delivery): the event and the listeners belong to the loop.
            loop.call_soon_threadsafe(self._set, str(error), locked, refused)
            return
        self._set(str(error), locked, refused)

    async def sound(self) -> None:
        """Until no storage failure is known (at once when none is)."""
        while self._problem:
            await self._sound.wait()

    def _set(self, problem: str, locked: str = "", refused: str = "") -> None:
        if locked:
            self._locked.add(locked)
        if refused:
            self._refused.add(refused)
        if problem == self._problem:
            return
        self._problem = problem
        if problem:
            self._degraded.set()
            self._sound.clear()
        else:
            self._locked.clear()
            self._refused.clear()
            self._degraded.clear()
            self._sound.set()
        for listener in self.listeners:
            listener(problem)

    def probe(self) -> bool:
        """Whether the storage works again (any thread).

        The databases' logs are emptied first where they can be (``empty_logs``: on a
        full disk, what the executor's own files can give back). Then: a small file can be
        written, synced and removed in the data dir, a fleet's PostgreSQL takes a write, the
        databases found locked can be locked by us, and those a write failed in take one.
        """
        locked = tuple(self._locked)
        refused = tuple(self._refused)
        self._empty_logs()
        return (
            not self._data_dir_problem()
            and not self.replaced()
            and self._probe_store()
            and all(map(_lockable, locked))
            and all(map(_takes_a_write, refused))
        )

    def watch(self, databases: Iterable[Path]) -> None:
        """Note the files ``databases`` name now: open, they must stay at their paths.

        Deleted (or another file moved over one) while the executor runs, a database is
        still written through its open file, which nothing reads again: its results would
        be reported as kept and be gone at the next start, without a word (probe 61).
        """
        for path in databases:
            with contextlib.suppress(OSError):  # not made (yet): nothing to lose
                found = path.stat()
                self._opened[path] = (found.st_dev, found.st_ino)

    def replaced(self, among: Iterable[str] | None = None) -> StorageError | None:
        """The first watched database (of those ``among``) whose path names another file now."""
        for path, opened in self._opened.items():
            if among is not None and str(path) not in among:
                continue
            try:
                found = path.stat()
            except FileNotFoundError:
                why = "deleted"
            except OSError:
                continue  # the storage failing: the data dir's probe says so
            else:
                if (found.st_dev, found.st_ino) == opened:
                    continue
                why = "replaced by another file"
            gone = StorageError(
                path,
                f"the database was {why} while the executor ran, which still writes the file "
                f"it opened, unreachable: what it records now is lost at the stop{_holding(path)}."
                " Restart the executor (first put back a copy from a backup, if there is one)",
            )
            self._lost = self._lost or str(gone)
            return gone
        return None

    def check(self) -> None:
        """Start-up's probe (blocks): a data dir that takes no write degrades the state now.

        So an executor started on a full disk says NOT_SERVING and runs nothing from the
        start, not from the first result it cannot record.
        """
        self._empty_logs()
        problem = self._data_dir_problem()
        if problem:
            self.failed(StorageError(self._data_dir, problem))

    def _empty_logs(self) -> None:
        """Give back the space of the databases' logs, saying once a spell which log cannot be."""
        paths = [self._data_dir / name for name in _KINDS]
        for log in empty_logs(paths, busy_timeout_s=LOOP_CHECKPOINT_BUSY_TIMEOUT_S):
            if log.path not in self._logs_reported:
                self._logs_reported.add(log.path)
                logger.warning(
                    "%s: its log (%s-wal, %.1f MB) cannot be copied into it and emptied: %s",
                    log.path,
                    log.path.name,
                    log.log_bytes / 1e6,
                    _why_not_emptied(log.path, log.error),
                )

    def _probe_store(self) -> bool:
        """Whether a fleet's PostgreSQL takes a write: a result's row, in a transaction rolled back.

        One round trip more than a ``SELECT 1``, once a second while degraded only, and
        nothing stays: a read-only server, a privilege taken away (``StoreRefused``) or an
        outbox locked past the lock timeout each refuse it.
        """
        if not self._store_url:
            return True
        try:
            db = connect_postgres(self._store_url, application_name="cbexec-probe")
        except UnavailableError:
            return False
        try:
            db.execute("BEGIN")
            try:
                db.execute(_PROBE_RESULT, ("cbexec-storage-probe", b"probe", 0.0))
            finally:
                db.execute("ROLLBACK")
        except UnavailableError:
            return False
        except Exception as err:
            if not refused_by_store(err):
                raise
            return False
        finally:
            db.close()
        return True

    def _data_dir_problem(self) -> str:
        """Why a small file cannot be written, synced and removed in the data dir; "" if it can."""
        path = self._data_dir / ".storage-probe"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"\0" * PROBE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            return err.strerror or str(err)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        return ""

    async def probe_forever(self) -> None:
        """While degraded, probe every PROBE_INTERVAL_S and clear the state once a write works.

        While sound, a database deleted under the executor is looked for (``_watch``). It
        is a failure no probe clears: only a restart opens a database at its path again.
        """
        self._loop = asyncio.get_running_loop()
        while True:
            await self._watch()
            await asyncio.sleep(PROBE_INTERVAL_S)
            gone = await asyncio.to_thread(self.replaced)
            if gone is not None:
                if str(gone) != self._problem:  # it outlasts whatever else was wrong: say it
                    logger.error("storage degraded: %s", gone)
                    self._set(str(gone))
                continue
            writable = await asyncio.to_thread(self.probe)
            if writable and self._problem:
                logger.info("storage writable again: %s", self._data_dir)
                self._logs_reported.clear()
                self._set("")

    async def _watch(self) -> None:
        """Until the storage is degraded; meanwhile, every WATCH_INTERVAL_S, a deleted database degrades it."""
        while not self._problem:
            if not self._opened:
                await self._degraded.wait()
                return
            # Not wait_for: Python 3.11's loses a cancel that meets the event being set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_INTERVAL_S):
                    await self._degraded.wait()
            if not self._problem and (found := await asyncio.to_thread(self._watched_problem)):
                self.failed(found)

    def _watched_problem(self) -> StorageError | None:
        """A watched database deleted or replaced, or whose ``-shm`` this user cannot write.

        The ``-shm`` is looked at too, though no write of it fails: a read or a write
        would be refused (``sqlite_shm``), so health says so within WATCH_INTERVAL_S
        even while nothing is written, and the probe then tries the database.
        """
        gone = self.replaced()
        if gone is not None:
            return gone
        for path in self._opened:
            shm = Path(f"{path}-shm")
            if not sqlite_shm.shm_writable(str(shm)):
                return StorageError(path, f"disk I/O error: {_cannot_write(shm)}")
        return None


def _probe_connection(path: str) -> sqlite3.Connection | None:
    """A connection to the existing database at ``path`` for a probe; None when it opens none."""
    try:
        return sqlite_shm.connect(
            Path(path).absolute().as_uri() + "?mode=rw",
            uri=True,
            timeout=LOCK_PROBE_TIMEOUT_S,
            isolation_level=None,
        )
    except sqlite3.Error:
        return None


def _lockable(path: str) -> bool:
    """Whether the write lock of the database at ``path`` is free: taken and let go at once."""
    db = _probe_connection(path)
    if db is None:
        return False
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except sqlite3.Error:
        return False
    finally:
        db.close()
    return True


def _takes_a_write(path: str) -> bool:
    """Whether the database at ``path`` takes a write (``_write_mark``).

    A path that is no file (a fleet's store) is asked otherwise (``_probe_store``).
    """
    if not Path(path).is_file():
        return True
    try:
        _write_mark(path)
    except sqlite3.Error:
        return False
    return True


def write_refusal(path: Path) -> StorageError | None:
    """Why the database at ``path`` takes no write now, in a write's own words; None if it takes one.

    What a look at a database whose reads go on while its writes fail needs: a lock
    another process holds (``DatabaseLocked``), a full disk or failing I/O.
    """
    try:
        with writing(path):
            _write_mark(path)
    except StorageError as err:
        return err
    except sqlite3.Error as err:  # not the storage's (the file cannot be opened, say)
        return StorageError(path, str(err))
    return None


def _write_mark(path: Path | str) -> None:
    """Commit the header's mark of the database at ``path`` unchanged; raise SQLite's refusal.

    A write as the executor's own are, through the database's log and synced: an
    immutable file (SQLite opens it read-only), another mode, or failing I/O refuses it,
    and another connection's write lock held past ``LOCK_PROBE_TIMEOUT_S``.
    """
    db = sqlite_shm.connect(  # guarded as every connection of the process (sqlite_shm)
        Path(path).absolute().as_uri() + "?mode=rw",
        uri=True,
        timeout=LOCK_PROBE_TIMEOUT_S,
        isolation_level=None,
    )
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(f"PRAGMA application_id = {_application_id(db)}")
            db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
    finally:
        db.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@contextlib.contextmanager
def writing(
    path: Path | str,
    health: StorageHealth | None = None,
    *,
    lock_degrades: bool = True,
    store_refusals: bool = False,
) -> Iterator[None]:
    """Turn a storage failure inside the block into a StorageError naming ``path``.

    A lock held past the busy timeout is one too (``DatabaseLocked``). ``lock_degrades``
    False: ``health`` does not hear of it (the history's, whose runs wait in memory while
    their results are recorded in the outbox: nothing is lost, so nothing need stop).
    ``store_refusals``: a fleet's PostgreSQL refusing the write for a reason of its own
    (``refused_by_store``) is one too (``StoreRefused``): a result's commit, which must
    wait for the store rather than be lost, as the run's effects have happened. So is,
    there only, a lock waited for past the lock timeout (``StoreLockTimeout``): a new
    result's row waits only for a lock on the whole outbox (an admin's ``LOCK TABLE``),
    and while it is held no run's result can be recorded. Elsewhere a held lock fails
    only what needs it and ``health`` does not hear of it.
    """
    try:
        yield
    except sqlite3.Error as err:
        error: StorageError
        if is_locked(err):
            error = DatabaseLocked(path, str(err))
            if not lock_degrades:
                raise error from err
        elif is_storage_failure(err):
            error = StorageError(path, _why_refused(Path(path), err))
        else:
            raise
        if health is not None:
            health.failed(error)
        raise error from err
    except StoreUnavailable as err:  # a fleet's PostgreSQL (its message names no URL)
        if health is not None:
            health.failed(err)
        raise
    except StoreLockTimeout as err:
        if store_refusals and health is not None:
            health.failed(err)
        raise
    except Exception as err:
        if not (store_refusals and refused_by_store(err)):
            raise
        refused = StoreRefused(str(path), (str(err).splitlines() or [""])[0])
        if health is not None:
            health.failed(refused)
        raise refused from err


def refused_by_store(err: BaseException) -> bool:
    """Whether ``err`` is a fleet's PostgreSQL refusing a statement for a reason of its own.

    A privilege (``StorePermissionDenied``), or any other error of the server's that the
    connection did not take for an outage (a trigger's, a constraint's): psycopg's own.
    """
    if isinstance(err, StorePermissionDenied):
        return True
    psycopg = sys.modules.get("psycopg")  # imported by then, where a store is PostgreSQL
    return psycopg is not None and isinstance(err, psycopg.DatabaseError)
