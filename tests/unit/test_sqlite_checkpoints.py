"""WAL checkpoints in a thread: the writer never checkpoints, the log still restarts and stays bounded."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.runs.sqlite_checkpoints import BackgroundCheckpoints, empty_logs
from executor.storage import LOOP_BUSY_TIMEOUT_S, LOOP_CHECKPOINT_BUSY_TIMEOUT_S

ROW = b"x" * 3000  # about a page per commit


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, Path]]:
    path = tmp_path / "t.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA synchronous = NORMAL")
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    yield writer, path
    writer.close()


def write(writer: sqlite3.Connection, checkpoints: BackgroundCheckpoints, commits: int) -> None:
    for _ in range(commits):
        writer.execute("INSERT INTO t (payload) VALUES (?)", (ROW,))
        checkpoints.committed()


def log_bytes(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


def test_the_writer_never_checkpoints_on_its_own(database: tuple[sqlite3.Connection, Path]) -> None:
    writer, path = database
    # Neither by commits nor by the log's size: a background checkpoint that copied and
    # restarted the log while the commits went on (a loaded machine) cut it back too.
    checkpoints = BackgroundCheckpoints(writer, path, every_commits=10**9, max_log_bytes=1 << 30)
    write(writer, checkpoints, 1500)
    # SQLite's own checkpoint at 1000 pages would have restarted the log below ~4 MiB.
    assert log_bytes(path) > 1400 * 4096
    checkpoints.close()


def test_checkpoints_let_the_log_restart(database: tuple[sqlite3.Connection, Path]) -> None:
    writer, path = database
    checkpoints = BackgroundCheckpoints(writer, path, every_commits=50)
    write(writer, checkpoints, 50)
    checkpoints.wait()
    one_round = log_bytes(path)
    for _ in range(20):
        write(writer, checkpoints, 50)
        checkpoints.wait()
    # Each round's commits reuse the log from its start: it holds one round, not twenty.
    assert log_bytes(path) <= 2 * one_round
    checkpoints.close()
    assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == 21 * 50
    checkpoints.close()  # again: nothing to do


def test_a_log_grown_by_a_burst_is_cut_back_when_it_restarts(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    writer, path = database
    checkpoints = BackgroundCheckpoints(writer, path, every_commits=100, max_log_bytes=1 << 20)
    write(writer, checkpoints, 99)  # ~400 KiB of log
    big = b"y" * (4 << 20)
    writer.execute("INSERT INTO t (payload) VALUES (?)", (big,))  # a burst: the log grows
    checkpoints.committed()  # the 100th: a checkpoint copies everything, then empties the log
    checkpoints.wait()
    assert log_bytes(path) <= 1 << 20
    write(writer, checkpoints, 1)
    assert log_bytes(path) <= 1 << 20
    checkpoints.close()


def big_commit(writer: sqlite3.Connection, megabytes: int) -> None:
    """One transaction of ``megabytes`` MiB: a job of 8 callbacks of 1 MB code, its agenda."""
    writer.execute("BEGIN")
    for _ in range(megabytes):
        writer.execute("INSERT INTO t (payload) VALUES (?)", (b"z" * (1 << 20),))
    writer.execute("COMMIT")


def test_a_log_a_big_commit_grew_is_emptied_once_copied_without_another_write(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    writer, path = database
    checkpoints = BackgroundCheckpoints(writer, path)
    big_commit(writer, 24)
    checkpoints.committed()
    checkpoints.wait()
    # Nothing is written after it: the log was left at 24 MiB until the next write (probe
    # 105: 440 MB after the last removal of 30 big jobs, until a restart).
    assert log_bytes(path) <= 4 << 20
    checkpoints.close()


def test_big_commits_back_to_back_off_the_loop_keep_the_log_near_its_bound(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    writer, path = database
    checkpoints = BackgroundCheckpoints(writer, path)
    largest = 0
    for _ in range(10):
        big_commit(writer, 12)
        checkpoints.committed()
        checkpoints.settle()  # a worker thread's writer: its log is copied and emptied
        largest = max(largest, log_bytes(path))
    # Each commit's 12 MiB, not ten of them: a writer that began its next transaction
    # while the checkpoint still copied kept appending (126 MB for 10 such jobs).
    assert largest <= 4 << 20
    assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == 120
    checkpoints.close()


async def test_a_writer_on_the_event_loop_never_waits_for_a_checkpoint(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    writer, path = database
    checkpoints = BackgroundCheckpoints(writer, path)
    started = threading.Event()
    going = threading.Event()
    original = checkpoints._pass

    def held(mode: str) -> tuple[int, int, int]:
        started.set()
        going.wait(10)
        return original(mode)

    checkpoints._pass = held  # type: ignore[method-assign]  # a checkpoint that takes its time
    big_commit(writer, 8)
    checkpoints.committed()
    assert started.wait(10)
    checkpoints.settle()  # on the loop: returns at once, the checkpoint still running
    assert log_bytes(path) > 4 << 20
    going.set()
    checkpoints.wait()
    assert log_bytes(path) <= 4 << 20
    checkpoints.close()


class CommitsBetweenPasses(BackgroundCheckpoints):
    """The writer commits a row before each checkpoint pass, as a busy executor does.

    A busy executor commits while a checkpoint copies; here at fixed points, not wherever
    the scheduler puts them.
    """

    def __init__(self, writer: sqlite3.Connection, path: Path, **kwargs: Any) -> None:
        super().__init__(writer, path, **kwargs)
        self._writer = writer
        self.passes = 0

    def _pass(self, mode: str) -> tuple[int, int, int]:
        self.passes += 1
        self._writer.execute("INSERT INTO t (payload) VALUES (?)", (ROW,))
        return super()._pass(mode)


def log_restarts(path: Path) -> int:
    """The log header's checkpoint sequence number: SQLite adds one each time the log restarts."""
    with open(f"{path}-wal", "rb") as log:
        header = log.read(16)
    return int.from_bytes(header[12:16], "big")


def test_a_writer_that_keeps_committing_still_gets_its_log_restarted(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    writer, path = database
    checkpoints = CommitsBetweenPasses(writer, path, every_commits=20)
    write(writer, checkpoints, 20)  # the 20th commit starts the first checkpoint
    checkpoints.wait()
    one_round = log_bytes(path)
    first = log_restarts(path)
    for _ in range(29):
        write(writer, checkpoints, 20)
        checkpoints.wait()  # the writer went on committing while it ran (between passes)
    # Every checkpoint restarted the log at least once, so it holds about one round of
    # commits, not the thirty rounds written.
    assert log_restarts(path) - first >= 29
    assert log_bytes(path) <= 2 * one_round
    checkpoints.close()
    assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == 30 * 20 + checkpoints.passes


def test_a_log_that_cannot_restart_is_emptied_past_its_bound(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    writer, path = database
    # A reader's snapshot keeps every later frame in the log, as a writer that never
    # pauses would; the TRUNCATE checkpoint waits for the reader, then empties the log.
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    release = threading.Timer(1.0, reader.execute, ("COMMIT",))
    release.start()
    checkpoints = BackgroundCheckpoints(writer, path, every_commits=50, max_log_pages=10)
    write(writer, checkpoints, 50)
    checkpoints.wait()
    release.join()
    assert log_bytes(path) == 0
    assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == 50
    checkpoints.close()
    reader.close()


def test_a_log_held_by_a_reader_is_reported_and_nothing_is_lost(
    database: tuple[sqlite3.Connection, Path], caplog: pytest.LogCaptureFixture
) -> None:
    writer, path = database
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    checkpoints = BackgroundCheckpoints(
        writer, path, every_commits=50, max_log_pages=10, busy_timeout_s=0.05
    )
    with caplog.at_level(logging.WARNING, logger="executor.runs.sqlite_checkpoints"):
        write(writer, checkpoints, 50)
        checkpoints.wait()
    assert "could not be emptied" in caplog.text
    reader.execute("COMMIT")
    write(writer, checkpoints, 50)  # the next checkpoint goes through
    checkpoints.close()
    reader.close()
    assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == 100


def test_a_log_grown_past_its_bound_is_checkpointed_before_the_commit_count(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    # Big results: 100 commits of them would fill a small data disk with the log alone.
    writer, path = database
    checkpoints = BackgroundCheckpoints(writer, path, every_commits=100, max_log_bytes=1 << 20)
    big = b"y" * (600 << 10)
    for _ in range(2):  # the second takes the log past 1 MiB
        writer.execute("INSERT INTO t (payload) VALUES (?)", (big,))
        checkpoints.committed()
    checkpoints.wait()
    assert path.stat().st_size > 1 << 20, "the log was copied into the database"
    for _ in range(20):
        writer.execute("INSERT INTO t (payload) VALUES (?)", (big,))
        checkpoints.committed()
        checkpoints.wait()
    # Twenty more such commits, 12 MB: the log restarted, cut back, again and again.
    assert log_bytes(path) <= 2 << 20
    checkpoints.close()


def test_empty_logs_gives_back_what_it_can_and_leaves_a_locked_one(tmp_path: Path) -> None:
    paths = [tmp_path / "a.db", tmp_path / "b.db", tmp_path / "none.db"]
    writers = []
    for path in paths[:2]:
        writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("CREATE TABLE t (payload BLOB)")
        writer.execute("INSERT INTO t VALUES (?)", (b"z" * (1 << 20),))
        writers.append(writer)
    holder = sqlite3.connect(paths[1], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's lock, on b.db only

    not_emptied = empty_logs(paths, busy_timeout_s=0.05)

    assert log_bytes(paths[0]) == 0
    assert not_emptied == [], "a lock is no lack of space: its writes say so"
    assert log_bytes(paths[1]) > 1 << 20
    holder.execute("COMMIT")
    assert empty_logs(paths, busy_timeout_s=0.05) == []
    assert log_bytes(paths[1]) == 0
    for writer in writers:
        assert writer.execute("SELECT length(payload) FROM t").fetchone()[0] == 1 << 20
        writer.close()
    holder.close()


def test_emptying_a_log_never_holds_a_loop_writer_past_its_busy_timeout(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    # The outbox commits on the event loop, waiting LOOP_BUSY_TIMEOUT_S for a lock: longer,
    # and the storage counts as refusing. The TRUNCATE that empties a log which cannot
    # restart holds the write lock while it waits for a reader (here one that keeps its
    # snapshot for a second): it must give up long before the writer would (with SQLite's
    # 5 s it held the lock that whole second, and the commit failed "database is locked").
    writer, path = database
    writer.execute(f"PRAGMA busy_timeout = {int(LOOP_BUSY_TIMEOUT_S * 1000)}")
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    release = threading.Timer(1.0, reader.execute, ("COMMIT",))
    release.start()
    checkpoints = BackgroundCheckpoints(
        writer,
        path,
        every_commits=5,
        max_log_pages=10,
        busy_timeout_s=LOOP_CHECKPOINT_BUSY_TIMEOUT_S,
    )
    slowest = 0.0
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        started = time.monotonic()
        writer.execute("INSERT INTO t (payload) VALUES (?)", (ROW,))  # never "locked"
        checkpoints.committed()
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.005)
    release.join()
    checkpoints.close()
    reader.close()
    assert slowest < LOOP_BUSY_TIMEOUT_S, f"a commit waited {slowest:.3f}s"
