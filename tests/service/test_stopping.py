"""A run stopped from outside: a client's deadline or cancel ends its child, the run still recorded and reported."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from executor import server
from executor.dispatcher import CALLER_CANCELLED, CALLER_DEADLINE
from executor.host_api import CUT_SHORT
from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2
from tests.conftest import Stack, stack_settings
from tests.helpers.supervisors import CountingSupervisor, SupervisorEndpoint
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

SLEEP = {"python": "import time\ntime.sleep(60)", "perl": "sleep 60;"}


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_client_deadline_stops_the_run_which_is_still_recorded(
    stack: Stack, language: str
) -> None:
    (job,) = stack.supervisor.submit([{"name": "slow", "user": "alice"}])
    invocation_id = f"deadline-{language}"

    with pytest.raises(ExecutorRpcError) as gone:
        await stack.client.execute_callback(
            language=language,
            code=SLEEP[language],
            job=job,
            limits={"wall_seconds": 60},
            invocation_id=invocation_id,
            timeout=1.0,
        )

    assert gone.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    async def recorded() -> executor_pb2.Run | None:
        try:
            return await stack.client.get_run(invocation_id)
        except ExecutorRpcError:
            return None

    run = await eventually(recorded)
    assert run is not None, "the stopped run was not recorded"
    assert run.result.outcome == executor_pb2.Outcome.OUTCOME_KILLED
    assert run.result.failure.message == CALLER_DEADLINE
    assert await eventually(lambda: stack.supervisor.result(invocation_id) is not None)
    assert await eventually(lambda: stack.running.dispatcher.active == 0)


async def test_a_cancel_before_the_deadline_says_it_was_a_cancel(stack: Stack) -> None:
    (job,) = stack.supervisor.submit([{"name": "slow", "user": "alice"}])
    call = asyncio.create_task(
        stack.client.execute_callback(
            language="python",
            code=SLEEP["python"],
            job=job,
            limits={"wall_seconds": 60},
            invocation_id="cancelled",
            timeout=30.0,
        )
    )
    # Started: one cancelled before its callback starts is no run (probe 129).
    assert await eventually(lambda: stack.running.dispatcher.running == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def recorded() -> executor_pb2.Run | None:
        try:
            return await stack.client.get_run("cancelled")
        except ExecutorRpcError:
            return None

    run = await eventually(recorded)
    assert run is not None and run.result.failure.message == CALLER_CANCELLED


class SlowActions(CountingSupervisor):
    """A supervisor that applies a job verb, then takes its time to answer."""

    async def JobAction(
        self, request: supervisor_pb2.JobActionRequest, context: Any
    ) -> supervisor_pb2.JobActionResponse:
        response = await super().JobAction(request, context)
        await asyncio.sleep(5)
        return response


async def test_a_qb_call_cut_short_by_the_wall_limit_is_still_listed(tmp_path: Path) -> None:
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", SlowActions)
    await endpoint.start()
    (job,) = endpoint.store.submit([{"name": "slow", "user": "alice"}])
    running = await server.start(stack_settings(tmp_path / "data", supervisor=endpoint.address))
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            response = await client.execute_callback(
                language="python",
                code=f"qb.block({job['id']})",
                job=job,
                limits={"wall_seconds": 0.5},
            )
        status = endpoint.store.job(int(job["id"]))["status"]
    finally:
        await running.stop()
        await endpoint.stop()
        endpoint.store.close()

    assert response.outcome == executor_pb2.OUTCOME_WALL_TIMEOUT
    # Made, and applied here: the answer says so rather than listing nothing.
    assert [(a.verb, a.ok, a.message) for a in response.actions] == [("block", False, CUT_SHORT)]
    assert status == "blocked"
