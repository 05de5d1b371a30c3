"""A lock someone else holds on the store fails only what needs the locked rows (probe 110).

An admin's session idle in transaction with one job's callback rows ``FOR UPDATE``, or a
``LOCK TABLE`` on the outbox: the statements that need them give up after the store's
lock timeout, well before the watchdog that cuts a frozen server's connection; the
storage is not marked degraded, no connection is cut, and the events of other jobs
published meanwhile are applied. A read-only server, though, keeps the storage degraded
until writes work again: the probe tries one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from executor import pg_stalls
from executor.errors import UnavailableError
from executor.model import Event
from executor.runs.invocation_ids import FleetIds
from executor.runs.outbox import Outbox
from executor.sql import PgDb, StoreLockTimeout, StoreUnavailable, connect_postgres
from executor.storage import StorageHealth
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.fleet.test_fleet_ids import CountingConnection
from tests.fleet.test_store import RecordingReceiver
from tests.helpers.postgres import PostgresServer, another_session
from tests.helpers.trigger_engines import LIMITS, Recorder, job

pytestmark = pytest.mark.service

LOCKED_JOB = 9001
FREE_JOB = 9002


@pytest.fixture
def admin(pg_url: str) -> Iterator[PgDb]:
    """Another application's session: no stall limits of ours, rolled back after."""
    with another_session(pg_url, "admin") as db:
        yield db


@pytest.fixture
async def engine_and_health(
    pg_url: str, tmp_path: Path, unanswered_reset: None
) -> AsyncIterator[tuple[TriggerEngine, StorageHealth]]:
    health = StorageHealth(tmp_path, pg_url)
    engine = TriggerEngine(TriggerStore(pg_url, health=health), Recorder(), limits=LIMITS)
    for job_id in (LOCKED_JOB, FREE_JOB):
        engine.register_job(job(job_id, ("running-job-self", f"x{job_id}")))
    engine.start()
    try:
        yield engine, health
    finally:
        await engine.close()
        engine.store.close()


def test_a_lock_wait_ends_as_a_lock_timeout_well_before_the_watchdog() -> None:
    # Equal, the watchdog sometimes won the race and cut the connection as a frozen
    # server's: every statement of the replica then failed for UNANSWERED_QUIET_S.
    assert pg_stalls.LOCK_TIMEOUT_S <= pg_stalls.ANSWER_DEADLINE_S / 2


async def test_a_row_lock_held_by_another_session_fails_only_the_events_that_need_it(
    engine_and_health: tuple[TriggerEngine, StorageHealth], admin: PgDb
) -> None:
    engine, health = engine_and_health
    admin.execute("BEGIN")
    admin.execute("SELECT * FROM callbacks WHERE job_id = ? FOR UPDATE", (LOCKED_JOB,))
    started = time.monotonic()
    # Published together, they share one group's transaction (group_commit.py).
    locked, free = await asyncio.gather(
        engine.publish(Event("running", "job", LOCKED_JOB, event_id="locked-1"), wait=False),
        engine.publish(Event("running", "job", FREE_JOB, event_id="free-1"), wait=False),
        return_exceptions=True,
    )
    took = time.monotonic() - started
    assert isinstance(locked, UnavailableError), locked
    assert not isinstance(locked, StoreUnavailable), "a held lock is no outage"
    assert "lock" in str(locked)
    assert not isinstance(free, BaseException), free
    assert took < 3 * pg_stalls.LOCK_TIMEOUT_S + 1.0
    assert health.problem == "", "one held row lock marked the whole storage degraded"
    assert pg_stalls._watchdog.unanswered_at == float("-inf"), (
        "a lock wait was cut as a frozen server"
    )
    # A later event of the free job waits for no lock either.
    started = time.monotonic()
    await engine.publish(Event("running", "job", FREE_JOB, event_id="free-2"), wait=False)
    assert time.monotonic() - started < 1.0
    admin.execute("ROLLBACK")
    # The refused event, resent once the lock is let go, is applied.
    await engine.publish(Event("running", "job", LOCKED_JOB, event_id="locked-1"), wait=False)


async def test_the_outbox_locked_whole_fails_a_commit_after_the_lock_timeout_once(
    pg_url: str, tmp_path: Path, admin: PgDb, unanswered_reset: None
) -> None:
    health = StorageHealth(tmp_path, pg_url)
    outbox = Outbox(pg_url, RecordingReceiver(), health=health)
    try:
        admin.execute("BEGIN")
        admin.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="lock") as refused:
            await outbox.commit("locked-table-1", b"report")
        # Once: not tried again as a dropped connection is, nor cut as a frozen server.
        assert time.monotonic() - started < pg_stalls.LOCK_TIMEOUT_S + 1.0
        assert not isinstance(refused.value, StoreUnavailable)
        assert pg_stalls._watchdog.unanswered_at == float("-inf")
        # No result can be recorded while it is held: NOT_SERVING (Executes are refused
        # before they run) until the probe's write goes through.
        assert "lock" in health.problem
        assert not await asyncio.to_thread(health.probe)
        admin.execute("ROLLBACK")
        assert await asyncio.to_thread(health.probe)
        await outbox.commit("locked-table-1", b"report")
    finally:
        await outbox.close()


def test_a_read_only_server_keeps_the_storage_degraded_until_it_takes_writes(
    pg_url: str, postgres: PostgresServer, tmp_path: Path, unanswered_reset: None
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    health = StorageHealth(tmp_path, pg_url)
    superuser = connect_postgres(postgres.url(), stall_limits=False)
    try:
        assert health.probe()
        superuser.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        # It answers SELECT 1, and took the health back to SERVING within a second.
        assert not health.probe(), "a read-only store was probed as writable"
        superuser.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        assert health.probe()
    finally:
        superuser.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        superuser.close()


def test_an_execute_claim_under_a_table_lock_waits_the_lock_timeout_once(
    pg_url: str, admin: PgDb, unanswered_reset: None
) -> None:
    # The claim was given back after it failed: a second statement on the locked table,
    # and a second wait of the event loop, for a claim the first one never took.
    connection = CountingConnection(pg_url)
    ids = FleetIds(connection, lambda _: None, owner="replica-a", lease_s=60)
    try:
        admin.execute("BEGIN")
        admin.execute("LOCK TABLE execute_claims IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StoreLockTimeout):
            ids.claim("locked-claim")
        assert time.monotonic() - started < pg_stalls.LOCK_TIMEOUT_S + 1.0
        assert connection.statements == [connection.statements[0]]  # the claim, alone
        admin.execute("ROLLBACK")
        assert ids.claim("locked-claim").claimed
    finally:
        connection.db.close()
