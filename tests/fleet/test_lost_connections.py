"""A session PostgreSQL ends mid-transaction: UNAVAILABLE, nothing half-done, a new connection.

An admin's ``pg_terminate_backend`` (or a restart) can end a backend while a pipeline of
the executor's is in flight. Found by probe 51: when the server's FATAL answered the
pipeline's Sync before libpq saw the connection close, psycopg stayed in pipeline mode,
the ROLLBACK that followed failed with "cannot exit pipeline mode while busy", and
PublishEvent answered INTERNAL for an event it had not applied (a publisher resends
only UNAVAILABLE). The relay (``HoldingRelay``) makes that order of things certain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from executor import sql
from executor.sql import Db, PgDb, StoreUnavailable, connect_postgres
from executor.triggers import applying
from tests.helpers.pg_relay import HoldingRelay
from tests.helpers.postgres import PostgresServer
from tests.helpers.registered_job import registered_job

pytestmark = pytest.mark.service


@pytest.fixture
def relay(postgres: PostgresServer) -> Iterator[HoldingRelay]:
    made = HoldingRelay(postgres.port)
    try:
        yield made
    finally:
        made.close()


def backend_pid(db: Db) -> int:
    return int(db.execute("SELECT pg_backend_pid()").fetchone()[0])


def terminate_answering_late(db: Db, pg_url: str, relay: HoldingRelay, pid: int) -> None:
    """End backend ``pid`` of ``db``, inside a pipeline; its last words held (``hold``).

    The server answers the pipeline's statements so far first (a read in a pipeline
    asks it to), and it is waiting for its client: its FATAL then answers whatever the
    client sends next, the pipeline's Sync.
    """
    assert db.execute("SELECT 1").fetchone()[0] == 1
    admin = connect_postgres(pg_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            row = admin.execute(
                "SELECT wait_event, client_port FROM pg_stat_activity WHERE pid = ?", (pid,)
            ).fetchone()
            if row[0] == "ClientRead":
                break
            assert time.monotonic() < deadline, f"backend {pid} still busy: {row[0]}"
            time.sleep(0.01)
        link = relay.hold(int(row[1]))
        admin.execute("SELECT pg_terminate_backend(?)", (pid,))
        assert link.server_closed.wait(10)
    finally:
        admin.close()


def pipelined_then_cut(db: PgDb, pg_url: str, relay: HoldingRelay, pid: int) -> None:
    with db.pipeline():
        db.execute("INSERT INTO cut_pipeline VALUES (1)")
        terminate_answering_late(db, pg_url, relay, pid)


def test_a_backend_ended_as_a_pipeline_syncs_is_unavailable_then_connected_again(
    pg_url: str, relay: HoldingRelay
) -> None:
    db = connect_postgres(relay.url(pg_url))
    try:
        db.execute("CREATE TABLE IF NOT EXISTS cut_pipeline (n INTEGER)")
        pid = backend_pid(db)
        db.execute("BEGIN")
        with pytest.raises(StoreUnavailable, match="administrator command"):
            pipelined_then_cut(db, pg_url, relay, pid)
        with pytest.raises(StoreUnavailable, match="lost mid-transaction"):
            db.execute("INSERT INTO cut_pipeline VALUES (2)")  # never outside its transaction
        db.execute("ROLLBACK")  # the transaction went with its connection: nothing to do
        # A new connection, not the one left in pipeline mode; nothing of the lost one stayed.
        assert backend_pid(db) != pid
        assert db.execute("SELECT count(*) FROM cut_pipeline").fetchone()[0] == 0
    finally:
        db.close()


def cut_before_the_group_commits(
    pg_url: str, relay: HoldingRelay, pid: int
) -> Callable[[Db], AbstractContextManager[None]]:
    """``applying.pipelined`` ending backend ``pid`` at the end of the first group's pipeline."""
    real = sql.pipelined
    armed = [True]

    @contextmanager
    def pipelined(db: Db) -> Iterator[None]:
        with real(db):
            yield
            if armed and isinstance(db, PgDb):
                armed.clear()
                terminate_answering_late(db, pg_url, relay, pid)

    return pipelined


async def test_publish_event_is_unavailable_when_its_backend_ends_and_applied_when_resent(
    pg_url: str, relay: HoldingRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with registered_job(relay.url(pg_url), 61) as registered:
        with registered.store.transaction() as db:
            pid = backend_pid(db)  # the connection the groups' transactions run on
        monkeypatch.setattr(applying, "pipelined", cut_before_the_group_commits(pg_url, relay, pid))
        request = registered.running_event("cut-61")
        await registered.refused(request)
        await registered.applied_once_when_resent(request)
