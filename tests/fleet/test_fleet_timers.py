"""A time trigger registered at one replica fires at another when the first is gone.

Probe 92: a timer registered at replica A, then A killed (or stopped) before its due time,
fired at replica B only when something unrelated woke B's timer loop (63 s late there;
up to an hour), since B slept until the next due time it had last read and only its own
registrations woke it. Every replica looks at the fleet's next due time at least every
``FLEET_POLL_S``; the due timer is claimed by one of them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Final

import pytest

from executor.triggers.timers import FLEET_POLL_S
from supervisor_client import ExecutorClient
from tests.fleet.harness import fleet
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

QUBE_EPOCH: Final = 946702800
# Room for the run itself to start on a loaded machine (spawn, the zygote) past the bound.
START_SLACK_S: Final = 3.0


def _timer_job(job_id: int, due_unix: int) -> dict[str, object]:
    return {
        "id": job_id,
        "name": "timer",
        "user": "fleet",
        "callbacks": [
            {
                "triggers": f"dummy-time-self-{due_unix - QUBE_EPOCH}",
                "language": "python",
                "code": "print('due')",
            }
        ],
    }


async def _started_at(client: ExecutorClient, job_id: int) -> list[float]:
    return [run.started_at for run in (await client.list_runs(job_id=job_id)).runs]


@pytest.mark.parametrize("end", ["sigkill", "sigterm"])
async def test_a_timer_whose_replica_is_gone_fires_at_another_within_the_poll(
    tmp_path: Path, pg_url: str, end: str
) -> None:
    job_id = 92_001 if end == "sigkill" else 92_002
    async with fleet(tmp_path, pg_url, replicas=2) as group:
        async with ExecutorClient(group.address(0)) as first:
            due = int(time.time()) + 6
            await first.register_job(_timer_job(job_id, due))
        await asyncio.sleep(max(0.0, due - 3 - time.time()))
        if end == "sigkill":
            await group.kill(0)
        else:
            await group.stop(0)
        assert time.time() < due, "the machine was too slow to end the replica before the due time"

        async with ExecutorClient(group.address(1)) as second:

            async def ran() -> bool:
                return bool(await _started_at(second, job_id))

            assert await eventually(ran, timeout_s=due - time.time() + 20, interval_s=0.2), (
                "the other replica never fired the timer"
            )
            (started,) = await _started_at(second, job_id)
            assert due <= started <= due + FLEET_POLL_S + START_SLACK_S, started - due
            # Once: nothing more of it is due, nor fires later.
            await asyncio.sleep(2 * FLEET_POLL_S)
            assert len(await _started_at(second, job_id)) == 1


async def test_a_timer_due_while_every_replica_was_down_fires_once_at_the_first_back(
    tmp_path: Path, pg_url: str
) -> None:
    job_id = 92_003
    async with fleet(tmp_path, pg_url, replicas=2) as group:
        async with ExecutorClient(group.address(0)) as first:
            due = int(time.time()) + 3
            await first.register_job(_timer_job(job_id, due))
        await group.kill(0)
        await group.kill(1)
        await asyncio.sleep(max(0.0, due + 1 - time.time()))

        await group.start(1)
        await group.start(0)
        async with ExecutorClient(group.address(1)) as second:

            async def ran() -> bool:
                return bool(await _started_at(second, job_id))

            assert await eventually(ran, timeout_s=20, interval_s=0.2)
            await asyncio.sleep(2 * FLEET_POLL_S)
            assert len(await _started_at(second, job_id)) == 1


async def test_timers_due_at_three_live_replicas_each_fire_once(
    tmp_path: Path, pg_url: str
) -> None:
    # Every replica polls the same due timers: the claim (FOR UPDATE SKIP LOCKED) keeps
    # each to one firing.
    job_ids = range(92_010, 92_030)
    async with fleet(tmp_path, pg_url, replicas=3) as group:
        due = int(time.time()) + 3
        async with ExecutorClient(group.address(0)) as first:
            for job_id in job_ids:
                await first.register_job(_timer_job(job_id, due))
        async with ExecutorClient(group.address(2)) as third:

            async def all_ran() -> bool:
                runs = (await third.list_runs(limit=1000)).runs
                return {run.job_id for run in runs} >= set(job_ids)

            assert await eventually(all_ran, timeout_s=30, interval_s=0.2)
            await asyncio.sleep(2 * FLEET_POLL_S)
            runs = (await third.list_runs(limit=1000)).runs
            assert sorted(run.job_id for run in runs if run.job_id in job_ids) == list(job_ids)
