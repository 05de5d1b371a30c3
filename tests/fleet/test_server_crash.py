"""After PostgreSQL crashes, an idle connection's first statement runs on a new one.

Probe 59: a crash (``pg_ctl stop -m immediate``, the usual reason for a failover) closes
the server's sockets with no word libpq has read, and each replica's first call after
it answered UNAVAILABLE "server closed the connection unexpectedly", seconds after the
server was back. Only a clean shutdown's AdminShutdown was run again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from executor.migrations import migrate
from executor.sql import connect_postgres
from tests.helpers.postgres import PostgresServer, running_server
from tests.helpers.registered_job import registered_job

pytestmark = pytest.mark.service


@pytest.fixture
def crashable() -> Iterator[PostgresServer]:
    """A server of this test's own: crashing the session's would disturb the others."""
    with running_server("cbexec-pg-crash-") as server:
        yield server


def crash_and_restart(server: PostgresServer) -> None:
    server.stop("immediate")
    server.start()


def test_a_statement_on_an_idle_connection_after_a_crash_runs_on_a_new_one(
    crashable: PostgresServer,
) -> None:
    db = connect_postgres(crashable.url())
    try:
        before = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        crash_and_restart(crashable)
        assert db.execute("SELECT pg_backend_pid()").fetchone()[0] != before
        db.execute("BEGIN")
        db.execute("SELECT 1")
        db.execute("COMMIT")
    finally:
        db.close()


async def test_the_first_publish_event_after_a_crash_is_applied(
    crashable: PostgresServer,
) -> None:
    url = crashable.create_database("crash")
    migrate(url)
    async with registered_job(url, 71) as registered:
        crash_and_restart(crashable)
        await registered.applied_once_when_resent(registered.running_event("crash-71"))
