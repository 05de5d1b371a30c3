"""WAL checkpoints of the executor's SQLite databases, run by a thread instead of the event loop.

In WAL mode SQLite checkpoints on whichever connection's commit takes the log past
1000 pages: it copies the log into the database, fsyncing the log before and the
database after. With ``synchronous = NORMAL`` those fsyncs are nearly the whole cost
(measured here: ~11 ms for 350 pages, of which 0.8 ms is the copy). On the event loop
that stalls every request in flight: every ~200 runs, the outbox's commit before an
answer and the history's commit after one each took 17-19 ms, and those stalls were
the p99 of a trivial callback.

So a connection handed to ``BackgroundCheckpoints`` never checkpoints itself. After
every ``every_commits`` commits, or a commit that took the log past ``max_log_bytes``
(big results: at 40 KB of output a run, 100 runs wrote a 15 MB log, and filled a small
data disk with a log never checkpointed), a thread of ours checkpoints the log on a
connection of its own. The checkpoint is PASSIVE: it neither waits for the writer nor blocks it.
The log restarts (SQLite's own way to reuse it) only when a commit begins while
everything in it is copied, and a busy writer commits while the bulk is being copied.
So the checkpoint repeats until a pass finds nothing new: a pass reports the log as it
stood when the pass began, so only two passes seeing the same log prove that nothing
was written in between. A writer that never pauses could still keep the log from
restarting; once the log passes ``max_log_pages``, one TRUNCATE checkpoint empties it,
holding the writer back for that one copy, and for at most ``busy_timeout_s`` of
waiting for readers (the outbox's writes on the event loop wait for it: keep it short).

A restarted log is reused from its start but keeps its size: one burst of big results
(16 MiB outputs) left a 130 MB log beside an 11 MB history for good. So the writer's
log is cut back to ``max_log_bytes`` whenever it restarts (SQLite's
``journal_size_limit``); a log file larger than that has grown since it last restarted,
which is what starts a checkpoint by size. A log only restarts at a write, though: the
last of 30 big jobs' removals left a 440 MB log until the executor restarted (probe
105). So a checkpoint that has copied everything into a log larger than
``max_log_bytes`` empties it then (TRUNCATE: nothing left to copy, it only waits, at most
``busy_timeout_s``, for a transaction or a reader to let go of the log; one that does
not leaves it for the writer's next commit).

And a writer that begins its next transaction while the checkpoint still copies the
last one appends to the log: 10 registrations of 12 MiB jobs, back to back, made a
126 MB log. A writer on a worker thread (a registration, the events' group commit)
calls ``settle`` after a commit, outside its own locks: when the log is past
``max_log_bytes`` it waits for the checkpoint to copy and empty it, as long as copying
its own commit takes. A writer on the event loop never waits (its transactions are small).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final, NamedTuple

from executor import sqlite_shm
from executor.sqlite_codes import SQLITE_BUSY, primary_code

logger = logging.getLogger(__name__)

# PASSIVE passes per checkpoint: the first copies the bulk, the next ones the few frames
# committed meanwhile (about a millisecond), the last finds nothing new (microseconds).
CATCH_UP_ROUNDS: Final = 4


class BackgroundCheckpoints:
    """Takes the checkpoints of ``writer`` (a WAL-mode connection to ``path``) off its thread.

    Call ``committed()`` after each write transaction of ``writer``; ``close()`` before
    closing it (its close then does the last checkpoint and removes the log, as usual).
    """

    def __init__(
        self,
        writer: sqlite3.Connection,
        path: Path | str,
        *,
        every_commits: int = 100,
        max_log_pages: int = 10_000,
        max_log_bytes: int = 4 << 20,
        busy_timeout_s: float = 5.0,
    ) -> None:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute(f"PRAGMA journal_size_limit = {int(max_log_bytes)}")
        self._path = str(path)
        self._log_path = f"{path}-wal"
        self._max_log_bytes = max_log_bytes
        self._every = every_commits
        self._max_log_pages = max_log_pages
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._since = 0
        self._running: Future[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._connection: sqlite3.Connection | None = None  # used by that thread only
        self._closed = False

    def committed(self) -> None:
        """Count one commit; maybe start a checkpoint.

        One starts when none is running and ``every_commits`` commits have gone by, or the
        log has grown past ``max_log_bytes``.
        """
        with self._lock:
            self._since += 1
            if self._running is not None and not self._running.done():
                return
            if self._since < self._every and self._log_bytes() <= self._max_log_bytes:
                return
            self._since = 0
            try:
                self._running = self._thread.submit(self._checkpoint)
            except RuntimeError as err:
                # Its thread could not be started (the executor's process limit): the
                # checkpoint is queued for the thread a later commit starts.
                logger.debug("checkpoint of %s put off: %s", self._path, err)

    def _log_bytes(self) -> int:
        """The log file's size (a stat: about a microsecond)."""
        try:
            return os.stat(self._log_path).st_size
        except OSError:
            return 0

    def settle(self) -> None:
        """Until a log past ``max_log_bytes`` is copied and emptied; at once on an event loop.

        Called by a writer on a worker thread after its commit, holding none of its locks:
        its next transaction then writes into a log cut back to size, not after the big
        one (see the module docstring). A log another connection holds past the
        checkpoint's busy timeout stays as it is (the next commit starts another).
        """
        if _on_event_loop():
            return
        for _ in range(2):  # a checkpoint that began before the commit may miss its frames
            if self._log_bytes() <= self._max_log_bytes:
                return
            with self._lock:
                running = self._running
                if running is None or running.done():
                    self._since = 0
                    try:
                        running = self._running = self._thread.submit(self._checkpoint)
                    except RuntimeError as err:  # as in ``committed``
                        logger.debug("checkpoint of %s put off: %s", self._path, err)
                        return
            running.result()

    def wait(self) -> None:
        """Until the checkpoint started last (if any) has finished."""
        running = self._running
        if running is not None:
            running.result()

    def close(self) -> None:
        """Finish the running checkpoint and close our connection (the writer stays open); idempotent."""
        self.wait()
        if not self._closed:
            self._closed = True
            self._thread.submit(self._close_connection).result()
            self._thread.shutdown()

    def _checkpoint(self) -> None:
        try:
            log = copied = seen = -1
            for _ in range(CATCH_UP_ROUNDS):
                _, log, copied = self._pass("PASSIVE")
                if copied >= log and log == seen:
                    # All copied, nothing new: the writer's next commit restarts the log,
                    # or, when it grew past its bound, it is emptied now.
                    if self._log_bytes() > self._max_log_bytes:
                        self._pass("TRUNCATE")
                    return
                seen = log
            if log > self._max_log_pages:
                busy, log, copied = self._pass("TRUNCATE")
                if busy:
                    logger.warning(
                        "%s: the write-ahead log has %d pages and could not be "
                        "emptied (another connection held it); it will be tried again",
                        self._path,
                        log,
                    )
        except sqlite3.Error as err:
            # Nothing is lost: the log keeps every commit until a checkpoint succeeds.
            logger.warning("%s: checkpoint failed: %s", self._path, err)

    def _pass(self, mode: str) -> tuple[int, int, int]:
        """One checkpoint pass on our connection: (busy, pages in the log, pages copied)."""
        if self._connection is None:
            self._connection = sqlite_shm.connect(
                self._path, timeout=self._busy_timeout_s, isolation_level=None
            )
        busy, log, copied = self._connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(busy), int(log), int(copied)

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _on_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (which must never wait here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LogNotEmptied(NamedTuple):
    """A database whose log a TRUNCATE checkpoint could not empty, and why."""

    path: Path
    log_bytes: int
    error: str


def empty_logs(paths: Iterable[Path], *, busy_timeout_s: float) -> list[LogNotEmptied]:
    """Copy each database's log into it and empty the log (TRUNCATE), the smallest log first.

    What a full disk can get back from the executor's own files: a log whose frames are
    all copied already (its file keeps its size until the log restarts) is emptied
    without taking any space, and a log copied frees about as much as its copy took,
    often more (frames of the same page, a restart's leftovers), leaving room for the
    next, larger one. A log that cannot be copied (the database cannot grow into a full
    disk, an I/O error) is left as it was, and returned; one another connection holds
    (a lock, a reader) is left for the next call, unsaid (its writes say so). Any thread:
    each database gets a connection of its own for the call; ``busy_timeout_s`` bounds
    how long it holds the write lock waiting for readers.
    """
    logs = []
    for path in paths:
        try:
            size = os.stat(f"{path}-wal").st_size
        except OSError:
            continue  # no log (or no database): nothing to give back
        if size:
            logs.append((size, path))
    not_emptied = []
    for size, path in sorted(logs):
        try:
            db = sqlite_shm.connect(
                path.absolute().as_uri() + "?mode=rw", uri=True, timeout=busy_timeout_s
            )
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                db.close()
        except sqlite3.Error as err:
            if primary_code(err) != SQLITE_BUSY:  # a lock: another connection empties it
                not_emptied.append(LogNotEmptied(path, size, str(err)))
    return not_emptied
