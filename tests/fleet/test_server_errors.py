"""PostgreSQL's own refusals for now: UNAVAILABLE to retry, never INTERNAL.

A server short of disk, memory or connection slots (SQLSTATE class 53), one whose file
system failed it (class 58), and a read-only one (25006: the address reaches a standby
after a failover) did nothing of the statement; a publisher resends only UNAVAILABLE,
so INTERNAL would lose the event. The errors are the server's own, raised by it.
"""

from __future__ import annotations

import socket

import pytest

from executor.migrations import migrate
from executor.sql import PgDb, StoreUnavailable, connect_postgres
from tests.helpers.postgres import PostgresServer
from tests.helpers.registered_job import registered_job

pytestmark = pytest.mark.service


def backend_pid(db: PgDb) -> int:
    return int(db.execute("SELECT pg_backend_pid()").fetchone()[0])


@pytest.mark.parametrize("condition", ["disk_full", "out_of_memory", "io_error"])
def test_a_server_short_of_a_resource_is_unavailable_on_the_same_connection(
    pg_url: str, condition: str
) -> None:
    db = connect_postgres(pg_url)
    try:
        pid = backend_pid(db)
        with pytest.raises(StoreUnavailable, match="cannot take it now: no room for it"):
            db.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'no room for it' "
                f"USING ERRCODE = '{condition}'; END $$"
            )
        assert backend_pid(db) == pid  # the session itself is well
    finally:
        db.close()


def test_a_read_only_server_is_unavailable_and_its_connection_made_again(pg_url: str) -> None:
    db = connect_postgres(pg_url)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS read_only_probe (n INTEGER)")
        pid = backend_pid(db)
        db.execute("SET default_transaction_read_only = on")  # as a standby's sessions are
        with pytest.raises(StoreUnavailable, match=r"read-only \(a standby\?\)"):
            db.execute("INSERT INTO read_only_probe VALUES (1)")
        # A new session, which may reach the new primary: here, the same server, writable.
        assert backend_pid(db) != pid
        db.execute("INSERT INTO read_only_probe VALUES (2)")
        assert db.execute("SELECT n FROM read_only_probe").fetchall()[0][0] == 2
    finally:
        db.close()


def test_a_store_url_may_list_hosts_for_libpq_to_find_the_writable_one(
    postgres: PostgresServer,
) -> None:
    with socket.socket() as unused:  # a port nothing listens on: a host that is down
        unused.bind(("127.0.0.1", 0))
        down = unused.getsockname()[1]
    url = (
        f"postgresql://postgres@127.0.0.1:{down},127.0.0.1:{postgres.port}/postgres"
        "?target_session_attrs=read-write"
    )
    db = connect_postgres(url)
    try:
        assert db.execute("SELECT current_setting('transaction_read_only')").fetchone()[0] == "off"
    finally:
        db.close()


async def test_publish_event_on_a_read_only_database_is_unavailable_and_applied_when_resent(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("read_only_events")
    migrate(url)
    admin = connect_postgres(postgres.url())
    try:
        async with registered_job(url, 71) as registered:
            # A failover leaves the address on a read-only server: new sessions cannot write.
            admin.execute("ALTER DATABASE read_only_events SET default_transaction_read_only = on")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'read_only_events'"
            )
            request = registered.running_event("ro-71")
            assert "read-only" in await registered.refused(request)
            # Writable again (the new primary): the resent event is applied, once.
            admin.execute("ALTER DATABASE read_only_events RESET default_transaction_read_only")
            await registered.applied_once_when_resent(request)
    finally:
        admin.close()
