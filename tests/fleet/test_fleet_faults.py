"""A fleet under faults: a replica killed with SIGKILL in a burst, PostgreSQL restarted mid-run.

Clients do what the README asks of them: a call refused as UNAVAILABLE (or to a replica
that is gone) is sent again, with the same event id or invocation id, to another
replica. Then every decided firing runs (its job is unblocked), each run's result is
applied once at the supervisor, every answered Execute is delivered once, and a
restarted replica joins and works.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from supervisor_client import ExecutorClient, RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.fleet.harness import LEASE_S, Fleet, fleet
from tests.helpers.health import NOT_SERVING, SERVING, health_status
from tests.helpers.postgres import PostgresServer
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

T = TypeVar("T")
# Each run takes a moment, so a kill finds some of them in flight.
UNBLOCK_SLOWLY = "import time\ntime.sleep(0.3)\nqb.unblock(qb.jobid())"


def submit_blocked(group: Fleet, count: int) -> list[dict[str, Any]]:
    """``count`` blocked jobs in the reference supervisor, each unblocking itself on complete."""
    jobs = group.endpoint.store.submit(
        [
            {
                "name": f"shot{n}",
                "user": "fleet",
                "status": "blocked",
                "pgrp": 0,
                "callbacks": [
                    {"triggers": "complete-job-self", "language": "python", "code": UNBLOCK_SLOWLY}
                ],
            }
            for n in range(count)
        ]
    )
    return [group.endpoint.store.job(int(job["id"]), include_callbacks=True) for job in jobs]


class Clients:
    """One client per replica address; a call goes to the next replica that answers."""

    def __init__(self, group: Fleet) -> None:
        self.group = group
        self._clients: dict[str, ExecutorClient] = {}
        self._turn = itertools.count()

    def _client(self, address: str) -> ExecutorClient:
        if address not in self._clients:
            self._clients[address] = ExecutorClient(address)
        return self._clients[address]

    async def call(
        self, run: Callable[[ExecutorClient], Awaitable[T]], timeout_s: float = 90.0
    ) -> T:
        # By time, not tries: a PostgreSQL restart on a loaded machine was seen to take
        # its helper 20 s and more (pg_ctl dying, a start retried).
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + timeout_s
        while loop.time() < give_up_at:
            alive = [r.address for r in self.group.replicas if r is not None]
            address = alive[next(self._turn) % len(alive)]
            try:
                return await run(self._client(address))
            except RetryableError:
                await asyncio.sleep(0.1)
        raise AssertionError("no replica took the call")

    async def register(self, job: dict[str, Any]) -> None:
        await self.call(lambda c: c.register_job(job))

    async def publish(self, job_id: int, event_id: str) -> None:
        await self.call(
            lambda c: c.publish_event(name="complete", type="job", job_id=job_id, event_id=event_id)
        )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


def results_by_job(group: Fleet) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for result in group.endpoint.store.results():
        found.setdefault(int(result["job_id"]), set()).add(str(result["invocation_id"]))
    return found


def all_unblocked(group: Fleet, jobs: list[dict[str, Any]]) -> bool:
    return all(group.endpoint.store.job(int(j["id"]))["status"] != "blocked" for j in jobs)


async def test_a_replica_killed_in_a_burst_loses_nothing_and_a_restarted_one_joins(
    tmp_path: Path, pg_url: str
) -> None:
    async with fleet(tmp_path, pg_url) as group:
        clients = Clients(group)
        try:
            jobs = submit_blocked(group, 45)
            for job in jobs:
                await clients.register(job)
            answered: list[str] = []

            async def publish(n: int, job: dict[str, Any]) -> None:
                await clients.publish(job["id"], f"burst-{n}")

            async def execute(n: int) -> None:
                response = await clients.call(
                    lambda c: c.execute_callback(
                        language="python",
                        code=f"print('execute {n}')",
                        job={"id": 999_999, "user": "fleet"},
                        invocation_id=f"execute-{n}",
                    )
                )
                assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
                answered.append(response.invocation_id)

            async def kill_midway() -> None:
                await asyncio.sleep(1.0)
                await group.kill(2)

            await asyncio.gather(
                kill_midway(),
                *(publish(n, job) for n, job in enumerate(jobs)),
                *(execute(n) for n in range(30)),
            )

            # The dead replica's firings and results are taken over once its lease runs out.
            assert await eventually(lambda: all_unblocked(group, jobs), timeout_s=30 + LEASE_S)
            counting = group.counting
            by_job = await eventually(
                lambda: (
                    (found := results_by_job(group))
                    and all(len(found.get(int(j["id"]), ())) == 1 for j in jobs)
                    and found
                ),
                timeout_s=30,
            )
            assert by_job, {j["id"]: results_by_job(group).get(int(j["id"])) for j in jobs}
            fired = set().union(*(by_job[int(j["id"])] for j in jobs))
            assert await eventually(
                lambda: set(answered) | fired <= set(counting.applied), timeout_s=30
            )
            # Each run's result applied once. An Execute whose answer the kill cut off may
            # have run at the dead replica and again where its caller resent it: the two
            # runs' results are both applied, the later in place of the earlier.
            twice = {run: n for run, n in counting.applied_runs.items() if n != 1}
            assert not twice, twice

            # A replica started again joins: it takes events and runs callbacks.
            restarted = await group.start(2)
            async with ExecutorClient(restarted.address) as client:
                (late,) = submit_blocked(group, 1)
                await client.register_job(late)
                reply = await client.publish_event(
                    name="complete", type="job", job_id=late["id"], event_id="late", wait=True
                )
                assert [f.result.outcome for f in reply.fired] == [executor_pb2.OUTCOME_SUCCEEDED]
                assert group.endpoint.store.job(int(late["id"]))["status"] != "blocked"
        finally:
            await clients.close()


async def test_postgresql_restarted_mid_run_the_replicas_wait_retry_and_lose_nothing(
    tmp_path: Path, pg_url: str, postgres: PostgresServer
) -> None:
    async with fleet(tmp_path, pg_url, replicas=2) as group:
        clients = Clients(group)
        try:
            jobs = submit_blocked(group, 20)
            for job in jobs:
                await clients.register(job)
            for n, job in enumerate(jobs[:5]):
                await clients.publish(job["id"], f"before-{n}")
            postgres.stop("fast")
            down = asyncio.get_running_loop().time()

            async def restart_later() -> None:
                await asyncio.sleep(3.0)
                await asyncio.to_thread(postgres.start)

            async def publish(n: int, job: dict[str, Any]) -> None:
                await clients.publish(job["id"], f"during-{n}")

            await asyncio.gather(
                restart_later(), *(publish(n, job) for n, job in enumerate(jobs[5:]))
            )
            assert asyncio.get_running_loop().time() - down >= 3.0, "nothing waited"
            assert await eventually(lambda: all_unblocked(group, jobs), timeout_s=30)
            by_job = await eventually(
                lambda: (
                    (found := results_by_job(group))
                    and all(len(found.get(int(j["id"]), ())) == 1 for j in jobs)
                    and found
                ),
                timeout_s=30,
            )
            assert by_job, {j["id"]: results_by_job(group).get(int(j["id"])) for j in jobs}
            assert all(group.counting.applied[i] == 1 for ids in by_job.values() for i in ids)
        finally:
            await clients.close()


async def test_with_postgresql_down_a_replica_says_not_serving_and_runs_nothing(
    tmp_path: Path, pg_url: str, postgres: PostgresServer
) -> None:
    async with fleet(tmp_path, pg_url, replicas=1) as group:
        address = group.address(0)
        channel = group.channel(address)
        (job,) = group.endpoint.store.submit([{"name": "down", "user": "alice"}])
        async with ExecutorClient(address) as client:
            await client.execute_callback(language="python", code="pass", job=job)
            postgres.stop("fast")
            try:
                # The first result that cannot be recorded is refused, and says why.
                with pytest.raises(RetryableError) as lost:
                    await client.execute_callback(language="python", code="pass", job=job)
                assert "PostgreSQL" in lost.value.details
                assert await eventually(lambda: _health_is(channel, NOT_SERVING), timeout_s=10)
                # The metrics still answer, and say what is wrong (the last counts stand).
                assert "PostgreSQL" in (await client.get_metrics()).storage_problem
                requests = len(group.counting.action_requests)
                with pytest.raises(RetryableError) as refused:
                    await client.execute_callback(
                        language="python", code=f"qb.block({job['id']})", job=job
                    )
                assert "runs nothing" in refused.value.details
                assert len(group.counting.action_requests) == requests
            finally:
                await asyncio.to_thread(postgres.start)
            assert await eventually(lambda: _health_is(channel, SERVING), timeout_s=30)
            done = await client.execute_callback(language="python", code="pass", job=job)
            assert done.outcome == executor_pb2.OUTCOME_SUCCEEDED


async def _health_is(channel: grpc.aio.Channel, status: int) -> bool:
    try:
        return await health_status(channel) == status
    except grpc.aio.AioRpcError:
        return False
