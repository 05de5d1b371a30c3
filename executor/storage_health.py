"""StorageHealth: the last storage failure, and the probes that clear it.

``StorageHealth`` remembers the last failure of a write (``storage.writing`` tells it),
so health and metrics show the degraded state, and probes the data directory (and takes
the lock of each database found locked) until a write works again; then everything
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
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from executor import sqlite_shm
from executor.database_kinds import KINDS, application_id, holding
from executor.database_opening import LOOP_CHECKPOINT_BUSY_TIMEOUT_S
from executor.errors import UnavailableError
from executor.runs.sqlite_checkpoints import empty_logs
from executor.sql import connect_postgres
from executor.storage_failures import (
    DatabaseLocked,
    StorageError,
    StoreRefused,
    cannot_write,
    refused_by_store,
    unwritable_file,
)

logger = logging.getLogger(__name__)

# How often a degraded executor tries the data directory again.
PROBE_INTERVAL_S: Final = 1.0
# How often a sound one looks whether its databases' files are still the ones it opened.
WATCH_INTERVAL_S: Final = 5.0
PROBE_BYTES: Final = 64 << 10
# How long the probe (a thread of its own) waits for a locked database's write lock.
LOCK_PROBE_TIMEOUT_S: Final = 0.1


# What the probe of a fleet's store inserts, and rolls back: a result's row, as a commit
# writes one. Answering SELECT 1 says nothing of writes: a read-only server (a standby
# after a failover, ``default_transaction_read_only``) answers it and refuses them all.
_PROBE_RESULT: Final = "INSERT INTO outbox (key, payload, created_at) VALUES (?, ?, ?)"


def runs_nothing(problem: str) -> str:
    """The refusal of a run, or of an event or registration that would fire one, while ``problem`` holds."""
    return f"the executor cannot record results now, so it runs nothing: {problem}"


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
                f"it opened, unreachable: what it records now is lost at the stop{holding(path)}."
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
        paths = [self._data_dir / name for name in KINDS]
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
                return StorageError(path, f"disk I/O error: {cannot_write(shm)}")
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
    """Whether the database at ``path`` takes a write (``write_mark``).

    A path that is no file (a fleet's store) is asked otherwise (``_probe_store``).
    """
    if not Path(path).is_file():
        return True
    try:
        write_mark(path)
    except sqlite3.Error:
        return False
    return True


def write_mark(path: Path | str) -> None:
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
            db.execute(f"PRAGMA application_id = {application_id(db)}")
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


def _why_not_emptied(path: Path, error: str) -> str:
    """Why a database's log could not be emptied: a file this user cannot write, else space.

    A file made immutable or given another mode is named as the cause (SQLite then says
    "attempt to write a readonly database", or "disk I/O error"), never a want of space.
    """
    file = unwritable_file(path)
    if file is not None:
        return f"{error}: {cannot_write(file)}"
    return f"{error}; copying it takes up to that much free space"
