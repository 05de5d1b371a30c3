"""A real PostgreSQL server for the fleet tests: initdb into a temp dir, pg_ctl on loopback.

Debian's PostgreSQL binaries (``.ci/run`` installs them where missing) run as the
unprivileged ``postgres`` user when the tests run as root; the data directory is the
test's own and the server is stopped (``pg_ctl stop -m immediate`` if need be) on every
exit path.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from executor.sql import PgDb, connect_postgres

# Where Debian puts each major version's server programs.
_BIN_GLOB: Final = "/usr/lib/postgresql/*/bin"


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL bin dir with initdb and pg_ctl; None when not installed."""
    found = sorted(
        (Path(d) for d in glob.glob(_BIN_GLOB) if (Path(d) / "initdb").exists()),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in ``root``; ``url(db)`` addresses a database in it."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = _free_port()
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            # initdb refuses to run as root: the cluster belongs to the postgres user.
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _run(self, *argv: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(self.bin_dir / argv[0]), *argv[1:]],
            check=True,
            capture_output=True,
            timeout=timeout,
            cwd=self.root,
            **self._as_user,
        )

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
            " -c max_connections=200"
        )
        for _ in range(3):
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                    "start",
                )  # fmt: skip
            except subprocess.CalledProcessError as err:
                # pg_ctl itself was seen to die of SIGSEGV now and then under load (the
                # server it started lived on): ask whether the server runs before retrying.
                if err.returncode >= 0:
                    raise
            else:
                return
            if self._wait_running():
                return
        raise RuntimeError(f"PostgreSQL did not start; see {self.log}")

    def _wait_running(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return True
            time.sleep(0.1)
        return False

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_server(prefix: str) -> Iterator[PostgresServer]:
    """A server initialised in a temp dir of its own and started; stopped and removed at the end.

    Skips the test where Debian's server binaries are not installed.
    """
    import pytest  # a test helper: only a test asks for a server

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    server = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def another_session(pg_url: str, application_name: str) -> Iterator[PgDb]:
    """Another application's session (an admin's, a paused replica's as the server sees it).

    No stall limits of ours; its transaction is rolled back after.
    """
    db = connect_postgres(pg_url, application_name=application_name, stall_limits=False)
    try:
        yield db
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
