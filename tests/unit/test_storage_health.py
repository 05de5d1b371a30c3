"""StorageHealth: failures met on any thread, a database another process holds locked, a start-up probe."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor import storage, storage_health
from executor.storage import DatabaseLocked, StorageError, StorageHealth, writing
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.unit


async def test_a_failure_met_on_a_worker_thread_is_noted_on_the_loop(tmp_path: Path) -> None:
    health = StorageHealth(tmp_path)
    heard: list[tuple[str, bool]] = []
    health.listeners.append(
        lambda problem: heard.append((problem, threading.current_thread() is main))
    )
    main = threading.current_thread()
    prober = asyncio.get_running_loop().create_task(health.probe_forever())
    await asyncio.sleep(0)  # the prober knows its loop
    try:
        await asyncio.to_thread(health.failed, StorageError(tmp_path / "x.db", "disk full"))
        await asyncio.sleep(0)

        assert "disk full" in health.problem
        assert heard and heard[0][1], "the listener ran on the loop's thread"
    finally:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, Path]]:
    """A WAL database and the executor's connection to it, which waits 50 ms for a lock."""
    path = tmp_path / "outbox.db"
    db = sqlite3.connect(path, timeout=0.05, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE t (x)")
    yield db, path
    db.close()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock for the block (an admin's sqlite3)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("COMMIT")
        other.close()


async def test_a_write_meeting_another_connections_lock_degrades_until_the_lock_is_free(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    db, path = database
    health = StorageHealth(path.parent)
    with locked(path):
        with pytest.raises(DatabaseLocked) as refused, writing(path, health):
            db.execute("INSERT INTO t VALUES (1)")
        # The storage refused the write, as a full disk does: not a bug of ours.
        assert isinstance(refused.value, StorageError)
        assert f"cannot write {path}: database is locked" in str(refused.value)
        assert "database is locked" in health.problem
        assert not health.probe(), "the data dir takes writes, but the database does not"
    assert health.probe()


def test_a_write_refusal_says_what_a_write_meets_while_reads_go_on(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    """What the embedded supervisor's look asks: its reads are answered under the lock (probe 141)."""
    db, path = database
    db.execute("INSERT INTO t VALUES (1)")
    assert storage.write_refusal(path) is None
    with locked(path):
        assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)
        refusal = storage.write_refusal(path)
        assert isinstance(refusal, DatabaseLocked)
        assert str(refusal).startswith(f"cannot write {path}: database is locked"), refusal
    assert storage.write_refusal(path) is None
    assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)  # it changed nothing


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``paths`` made immutable (``chattr +i``) for the block; skipped where that cannot be done."""
    names = [str(path) for path in paths]
    made = subprocess.run(["chattr", "+i", *names], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        subprocess.run(["chattr", "-i", *names], capture_output=True, check=False)
        pytest.skip(f"cannot make a file immutable here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *names], check=True)


async def test_a_database_that_refuses_writes_stays_degraded_until_it_takes_them(
    tmp_path: Path, database: tuple[sqlite3.Connection, Path]
) -> None:
    # Probe 74: with outbox.db made immutable, the probe wrote only a scratch file beside
    # it, found the storage "writable again" every second, and the Executes let in then
    # ran, their results refused and their callers told that a resend runs them again.
    db, path = database
    db.execute("INSERT INTO t VALUES (1)")
    health = StorageHealth(tmp_path)
    with immutable(path, Path(f"{path}-wal")):
        with pytest.raises(StorageError) as refused, writing(path, health):
            db.execute("INSERT INTO t VALUES (2)")

        assert str(refused.value) == (
            f"cannot write {path}: disk I/O error: this user cannot write outbox.db (its "
            "mode, or chattr +i); the executor's data dir needs attention"
        ), "named as start-up names it"
        assert health.problem == str(refused.value)
        assert not await asyncio.to_thread(health.probe), "the database still refuses writes"

    assert await asyncio.to_thread(health.probe)
    db.execute("INSERT INTO t VALUES (2)")


async def test_the_storage_is_sound_again_once_the_probe_finds_the_lock_gone(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    db, path = database
    health = StorageHealth(path.parent)
    prober = asyncio.get_running_loop().create_task(health.probe_forever())
    try:
        with locked(path):
            with contextlib.suppress(DatabaseLocked), writing(path, health):
                db.execute("INSERT INTO t VALUES (1)")
            await asyncio.sleep(1.5)  # a probe or more, while it holds
            assert health.problem
        async with asyncio.timeout(5):
            await health.sound()
        assert health.problem == ""
    finally:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)


def test_a_history_that_meets_a_lock_degrades_nothing(
    database: tuple[sqlite3.Connection, Path],
) -> None:
    db, path = database
    health = StorageHealth(path.parent)
    with locked(path), pytest.raises(DatabaseLocked), writing(path, health, lock_degrades=False):
        db.execute("INSERT INTO t VALUES (1)")
    assert health.problem == ""


def test_a_start_on_a_data_dir_that_takes_no_write_is_degraded_from_the_start(
    tmp_path: Path,
) -> None:
    health = StorageHealth(tmp_path / "gone")  # its probe file cannot be made
    health.check()
    assert "No such file or directory" in health.problem


@pytest.mark.parametrize("how", ["deleted", "replaced by another file"])
async def test_a_database_deleted_under_the_executor_degrades_it_until_a_restart(
    database: tuple[sqlite3.Connection, Path], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Health stayed SERVING and the stop promised the results it held "after the next
    # start", which then had an empty database (probe 61).
    db, path = database
    monkeypatch.setattr(storage_health, "WATCH_INTERVAL_S", 0.05)
    monkeypatch.setattr(storage_health, "PROBE_INTERVAL_S", 0.05)
    health = StorageHealth(path.parent)
    health.watch([path, path.parent / "runs.db"])  # runs.db not made: nothing to watch
    degraded = asyncio.Event()
    health.listeners.append(lambda problem: degraded.set())
    prober = asyncio.get_running_loop().create_task(health.probe_forever())
    try:
        await asyncio.sleep(0.2)
        assert health.problem == "", "sound while the file is the one opened"
        if how == "deleted":
            path.unlink()
        else:
            other = path.with_name("other.db")
            other.write_bytes(b"")
            other.replace(path)
        async with asyncio.timeout(5):
            await degraded.wait()
        assert health.problem.startswith(
            f"cannot write {path}: the database was {how} while the executor ran"
        )
        assert "(it holds results not yet delivered to the supervisor)" in health.problem
        assert "Restart the executor" in health.problem
        db.execute("INSERT INTO t VALUES (1)")  # its writes still work, unreachable
        await asyncio.sleep(0.3)  # probes that find the data dir writable
        assert health.problem.startswith(f"cannot write {path}: the database was {how}")
        assert not health.probe()
    finally:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)


async def test_a_database_deleted_while_degraded_is_said_instead(
    database: tuple[sqlite3.Connection, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = database
    monkeypatch.setattr(storage_health, "PROBE_INTERVAL_S", 0.05)
    health = StorageHealth(path.parent)
    health.watch([path])
    said = asyncio.Event()
    health.listeners.append(lambda problem: said.set() if "was deleted" in problem else None)
    prober = asyncio.get_running_loop().create_task(health.probe_forever())
    try:
        await asyncio.sleep(0)
        health.failed(StorageError(path, "disk full"))
        path.unlink()
        async with asyncio.timeout(5):
            await said.wait()
    finally:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)


async def test_a_shm_made_immutable_degrades_it_within_a_watch_until_it_is_writable(
    database: tuple[sqlite3.Connection, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probe 141: SQLite writes the -shm through a memory map, which ext4 refuses an
    # immutable file with SIGBUS; every statement is refused then (sqlite_shm), and
    # health says so even while nothing is written.
    db, path = database
    db.execute("INSERT INTO t VALUES (1)")
    shm = Path(f"{path}-shm")
    monkeypatch.setattr(storage_health, "WATCH_INTERVAL_S", 0.05)
    monkeypatch.setattr(storage_health, "PROBE_INTERVAL_S", 0.05)
    health = StorageHealth(path.parent)
    health.watch([path])
    prober = asyncio.get_running_loop().create_task(health.probe_forever())
    try:
        with immutable(shm):
            assert await eventually(lambda: health.problem, 5)
            assert health.problem == (
                f"cannot write {path}: disk I/O error: this user cannot write outbox.db-shm "
                "(its mode, or chattr +i); the executor's data dir needs attention"
            )
            await asyncio.sleep(0.3)  # probes that find the data dir writable
            assert health.problem, "the database's -shm still cannot be written"
        async with asyncio.timeout(5):
            await health.sound()
    finally:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)


def test_a_log_not_emptied_for_an_immutable_file_says_so_not_free_space(
    database: tuple[sqlite3.Connection, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # Probe 141: the warning for an immutable -wal told the admin to free disk space.
    db, path = database
    db.execute("INSERT INTO t VALUES (1)")
    health = StorageHealth(path.parent)
    with immutable(Path(f"{path}-wal")):
        health.check()
    said = [r.getMessage() for r in caplog.records if "cannot be copied into it" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert said[0].endswith(": this user cannot write outbox.db-wal (its mode, or chattr +i)")
    assert "free space" not in said[0]
