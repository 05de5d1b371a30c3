"""GuardedConnection: nothing touches a ``-shm`` made immutable, where SQLite's store is a SIGBUS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from executor import sqlite_shm

pytestmark = pytest.mark.unit

# Run in a process of its own: a store SQLite makes to the immutable -shm ends it (SIGBUS).
_SCRIPT = """
import os, subprocess, sys
from executor import sqlite_shm

path = sys.argv[1]
db = sqlite_shm.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("CREATE TABLE t (x)")
db.execute("INSERT INTO t VALUES (1)")
reader = sqlite_shm.connect(path, isolation_level=None)
reader.execute("SELECT count(*) FROM t").fetchone()
os.sync()  # its pages written back: SQLite's next store to each faults
subprocess.run(["chattr", "+i", path + "-shm"], check=True)
for name, attempt in [
    ("write", lambda: db.execute("INSERT INTO t VALUES (2)")),
    ("read", lambda: reader.execute("SELECT count(*) FROM t").fetchone()),
    ("cursor", lambda: db.cursor().execute("SELECT 1")),
    ("script", lambda: db.executescript("SELECT 1")),
    ("connect", lambda: sqlite_shm.connect(path)),
]:
    try:
        attempt()
    except Exception as err:
        print(name, type(err).__name__, err, err.sqlite_errorname, flush=True)
reader.close()
db.close()  # the last: SQLite's close would checkpoint through the map
print("closed", flush=True)
"""


def test_statements_and_closes_never_touch_an_immutable_shm(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    probe = tmp_path / "probe"
    probe.touch()
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True, check=False).returncode:
        pytest.skip(f"cannot make a file immutable on {tmp_path}'s filesystem (chattr +i)")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    try:
        ran = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    finally:
        subprocess.run(["chattr", "-i", f"{path}-shm"], capture_output=True, check=False)
    assert ran.returncode != -signal.SIGBUS, "SQLite wrote the immutable -shm"
    assert ran.returncode == 0, ran.stderr
    refused = "OperationalError disk I/O error SQLITE_IOERR_SHMMAP"
    said = ran.stdout.splitlines()
    assert said[:5] == [
        f"{name} {refused}" for name in ("write", "read", "cursor", "script", "connect")
    ]
    assert said[5] == "closed"
    assert f"{path}-shm: this user cannot write it" in ran.stderr, "its connections left open"


def test_a_database_in_memory_has_no_shm_to_guard() -> None:
    db = sqlite_shm.connect(":memory:")
    assert db.execute("SELECT 1").fetchone() == (1,)
    db.close()


def test_the_shm_of_a_uri_is_its_file_s(tmp_path: Path) -> None:
    path = tmp_path / "a b.db"
    db = sqlite_shm.connect(path.absolute().as_uri() + "?mode=rwc", uri=True)
    try:
        assert isinstance(db, sqlite_shm.GuardedConnection)
        assert db.shm_path == f"{path}-shm"
    finally:
        db.close()
