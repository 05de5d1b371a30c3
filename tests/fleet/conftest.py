"""The fleet tests' PostgreSQL: one real server per session, one database per test module."""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.migrations import migrate
from tests.helpers.postgres import PostgresServer, find_bin_dir

pytest.importorskip("psycopg", reason="the fleet tests need psycopg 3 (the [test] extra)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    server = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="cbexec-pg-")))
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A migrated database of this test module's own."""
    name = re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])
    url = postgres.create_database(name)
    migrate(url)
    return url


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A trigger store's path: an SQLite file, or a migrated PostgreSQL database of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "triggers.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database(f"either_{next(_databases)}")
    migrate(url)
    return url
