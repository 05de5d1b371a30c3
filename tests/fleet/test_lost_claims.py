"""A replica whose lease ran out while firings waited in its queue runs none of them.

It stalled (SIGSTOP, a paused VM) or lost PostgreSQL for longer than a lease: another
replica claimed those firings (epoch + 1), ran them and marked them done. When the first
one goes on, each queued firing's claim is checked before its run starts: the ones taken
over leave its queue unrun, so no callback runs again after its firing was done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from executor.migrations import migrate
from executor.model import Event
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.helpers.postgres import PostgresServer
from tests.helpers.trigger_engines import LIMITS, Recorder, engines_made, job
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

LEASE_S = 1.0
# Qube time is Unix time less this (README, Time triggers).
QUBE_EPOCH = 946702800


@pytest.fixture
async def replicas(postgres: PostgresServer, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Trigger engines on one database of this test's own, with short leases; closed after."""
    url = postgres.create_database(request.node.name.removeprefix("test_")[:40])
    migrate(url)

    def open_engine(recorder: Recorder) -> TriggerEngine:
        return TriggerEngine(TriggerStore(url, lease_s=LEASE_S), recorder, limits=LIMITS)

    async with engines_made(open_engine) as make:
        yield make


async def test_firings_taken_over_while_queued_at_a_lapsed_replica_are_not_run_there_again(
    replicas: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Not started: its firings wait in its queue and it renews no lease, as when stalled.
    away_ran = Recorder()
    away = replicas(away_ran, start=False)
    past = int(time.time()) - QUBE_EPOCH - 60
    away.register_job(job(1, ("complete-job-self", "event one")))
    away.register_job(job(2, ("complete-job-self", "event two")))
    away.register_job(job(3, (f"dummy-time-self-{past}", "due timer")))
    await away.publish(Event("complete", "job", 1), wait=False)
    # A publisher waits at it for event two's result.
    waiting = asyncio.create_task(away.publish(Event("complete", "job", 2), wait=True))
    assert len(away.fire_due_timers()) == 1
    assert await eventually(lambda: away.store.count_firings() == 3)

    # Once the leases have run out, the other replica claims the three, runs them and
    # marks them done.
    other_ran = Recorder()
    replicas(other_ran)
    await other_ran.ran(3)
    assert await eventually(lambda: away.store.count_firings() == 0, timeout_s=10)
    assert sorted(other_ran.codes) == ["due timer", "event one", "event two"]

    # The first replica goes on: what it had queued was done elsewhere.
    with caplog.at_level(logging.INFO, logger="executor.triggers.firings"):
        away.start()
        await away.wait_idle()
    assert away_ran.codes == []
    # Answered, not left waiting (this engine has no history to take the other's result from).
    async with asyncio.timeout(10):
        (fired,), repeat = await waiting
    assert (fired.callback.code, fired.result, repeat) == ("event two", None, False)
    assert sorted(other_ran.codes) == ["due timer", "event one", "event two"]
    not_run = [r.getMessage() for r in caplog.records if "not run here" in r.getMessage()]
    assert len(not_run) == 3, not_run
