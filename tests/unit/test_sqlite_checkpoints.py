"""WAL checkpoints in a thread: the writer never checkpoints, the log still restarts and stays bounded."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.runs.sqlite_checkpoints import BackgroundCheckpoints

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
    checkpoints = BackgroundCheckpoints(writer, path, every_commits=10**9)
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


def test_a_writer_that_keeps_committing_still_gets_its_log_restarted(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    writer, path = database
    checkpoints = BackgroundCheckpoints(writer, path, every_commits=20)
    for _ in range(600):  # commits land while checkpoints copy, as on a busy executor
        write(writer, checkpoints, 1)
        time.sleep(0.002)
    checkpoints.wait()
    # ~1800 pages were written; a log that restarts holds the last few dozen commits.
    assert log_bytes(path) < 400 * 4096
    checkpoints.close()


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
