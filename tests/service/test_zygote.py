"""The warm zygote: a death mid-callback is reported, never lost, and the next callback works."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from executor.sandbox.spawners import ZygoteSpawner
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = pytest.mark.service


async def test_zygote_death_reports_callbacks_in_flight_and_restarts(stack: Stack) -> None:
    spawner = stack.running.spawner
    if not isinstance(spawner, ZygoteSpawner):
        pytest.skip("the cold path has no zygote")
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    running = asyncio.create_task(
        stack.client.execute_callback(
            language="python", code="import time\ntime.sleep(30)", job=job, limits={"wall_seconds": 60}
        )
    )
    while spawner.zygote_pid is None or not stack.running.dispatcher.active:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # let the child start
    os.kill(spawner.zygote_pid, signal.SIGKILL)

    lost = await asyncio.wait_for(running, timeout=10)
    after = await stack.client.execute_callback(language="python", code="print('alive')", job=job)

    assert lost.outcome == executor_pb2.Outcome.OUTCOME_KILLED
    assert "zygote died" in lost.failure.message
    assert after.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
    assert after.stdout == "alive\n"
