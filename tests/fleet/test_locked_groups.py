"""A paused replica's locks hold up only their own jobs' events, and not for long (probe 114).

A replica stopped (SIGSTOP, a paused VM) inside a group's transaction holds the callback
rows of that group's jobs ``FOR UPDATE``. A healthy replica's group that meets them
waits one lock timeout, then applies its other calls at once and fails only those that
need the held rows (not 2 s more per locked job); and the server ends the paused
replica's session once it has been idle in its transaction for
``IDLE_IN_TRANSACTION_S``, which lets its locks go.
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
from executor.sql import PgDb, StoreLockTimeout, StoreUnavailable, connect_postgres
from executor.storage import StorageHealth
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.helpers.postgres import another_session
from tests.helpers.trigger_engines import LIMITS, Recorder, job

pytestmark = pytest.mark.service

LOCKED_JOBS = range(9101, 9111)  # 10 jobs: the old code waited 2 s more for each
FREE_JOBS = range(9201, 9205)


@pytest.fixture
def holder(pg_url: str) -> Iterator[PgDb]:
    """Another session (a paused replica's, as the server sees it), rolled back after."""
    with another_session(pg_url, "paused-replica") as db:
        yield db


@pytest.fixture
async def engine(
    pg_url: str, tmp_path: Path, unanswered_reset: None
) -> AsyncIterator[TriggerEngine]:
    health = StorageHealth(tmp_path, pg_url)
    engine = TriggerEngine(TriggerStore(pg_url, health=health), Recorder(), limits=LIMITS)
    for job_id in (*LOCKED_JOBS, *FREE_JOBS):
        engine.register_job(job(job_id, ("running-job-self", f"x{job_id}")))
    engine.start()
    try:
        yield engine
    finally:
        await engine.close()
        engine.store.close()


async def test_a_group_meeting_locked_jobs_applies_the_others_after_one_wait(
    engine: TriggerEngine, holder: PgDb
) -> None:
    holder.execute("BEGIN")
    holder.execute(
        "SELECT * FROM callbacks WHERE job_id = ANY(?) ORDER BY rowid FOR UPDATE",
        (list(LOCKED_JOBS),),
    )
    started = time.monotonic()
    answered: dict[int, float] = {}

    async def publish(job_id: int) -> object:
        try:
            return await engine.publish(
                Event("running", "job", job_id, event_id=f"e{job_id}"), wait=False
            )
        finally:
            answered[job_id] = time.monotonic() - started

    # Published together, they share one group's transaction; locked jobs' calls first.
    outcomes = await asyncio.gather(
        *(publish(job_id) for job_id in (*LOCKED_JOBS, *FREE_JOBS)), return_exceptions=True
    )
    by_job = dict(zip((*LOCKED_JOBS, *FREE_JOBS), outcomes, strict=True))
    for job_id in FREE_JOBS:
        assert not isinstance(by_job[job_id], BaseException), by_job[job_id]
    for job_id in LOCKED_JOBS:
        assert isinstance(by_job[job_id], StoreLockTimeout), by_job[job_id]
        assert not isinstance(by_job[job_id], StoreUnavailable), "a held lock is no outage"
    # One lock timeout, and a moment per locked job: before, 2 s more for each (22 s).
    slowest_free = max(answered[job_id] for job_id in FREE_JOBS)
    assert slowest_free < pg_stalls.LOCK_TIMEOUT_S + 2.0, answered
    assert max(answered.values()) < pg_stalls.LOCK_TIMEOUT_S + 2.0, answered
    holder.execute("ROLLBACK")
    # The refused events, resent once the locks are let go, are applied.
    for job_id in LOCKED_JOBS:
        await engine.publish(Event("running", "job", job_id, event_id=f"e{job_id}"), wait=False)


def test_the_replicas_sessions_end_when_idle_in_a_transaction(pg_url: str, holder: PgDb) -> None:
    replica = connect_postgres(pg_url, application_name="replica")
    try:
        shown = replica.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0]
        assert shown == f"{round(pg_stalls.IDLE_IN_TRANSACTION_S)}s"
    finally:
        replica.close()


def test_the_server_ends_a_session_idle_in_its_transaction_and_its_locks_go(
    pg_url: str, holder: PgDb, monkeypatch: pytest.MonkeyPatch, unanswered_reset: None
) -> None:
    # A shorter timeout than the replicas' own, so that the test does not wait it out.
    monkeypatch.setattr(pg_stalls, "IDLE_IN_TRANSACTION_S", 1.0)
    replica = connect_postgres(pg_url, application_name="replica")
    try:
        replica.execute("BEGIN")
        replica.execute("SELECT 1 FROM callbacks ORDER BY rowid FOR UPDATE")
        time.sleep(2.0)  # the replica "paused" in its transaction
        # Its locks are gone: another session takes them without waiting.
        holder.execute("BEGIN")
        holder.execute("SET LOCAL lock_timeout = '100ms'")
        holder.execute("SELECT 1 FROM callbacks ORDER BY rowid FOR UPDATE")
        holder.execute("ROLLBACK")
        # The replica, awake, finds its transaction gone: UNAVAILABLE, then a new session.
        with pytest.raises(UnavailableError):
            replica.execute("SELECT 1")
        replica.execute("ROLLBACK")
        assert replica.execute("SELECT 1").fetchone()[0] == 1
    finally:
        replica.close()
