"""A run stopped from outside: a client's deadline ends its child, and the run is still recorded and reported."""

from __future__ import annotations

import grpc
import pytest

from executor.dispatcher import CALLER_CANCELLED
from supervisor_client import ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack
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
    assert run.result.failure.message == CALLER_CANCELLED
    assert await eventually(lambda: stack.supervisor.result(invocation_id) is not None)
    assert await eventually(lambda: stack.running.dispatcher.active == 0)
