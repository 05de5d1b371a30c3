"""PublishEvents: a batch of events applied in order in one transaction, each id once."""

from __future__ import annotations

import grpc
import pytest

from supervisor_client import ExecutorRpcError, InvalidRequestError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service


async def test_a_batch_applies_in_order_once_per_id_and_runs_what_fires(
    stack_warm: Stack,
) -> None:
    client = stack_warm.client
    await client.register_job(
        {
            "id": 31,
            "name": "batch",
            "callbacks": [
                {
                    "triggers": "complete-work-self-1 && complete-work-self-2",
                    "language": "python",
                    "code": "print('both frames')",
                }
            ],
        }
    )
    event = {"name": "complete", "type": "work", "job_id": 31}
    reply = await client.publish_events(
        [
            {**event, "work_name": "1", "event_id": "b1"},
            {**event, "work_name": "1", "event_id": "b1"},  # a repeat inside the batch
            {**event, "work_name": "2", "event_id": "b2"},
        ]
    )
    assert [r.duplicate for r in reply.results] == [False, True, False]
    assert [len(r.fired) for r in reply.results] == [0, 0, 1]  # the second half fires it
    (fired,) = reply.results[2].fired
    run = await eventually(lambda: _run(stack_warm, fired.invocation_id), timeout_s=20)
    assert run is not None and "both frames" in run.result.stdout

    again = await client.publish_events([{**event, "work_name": "2", "event_id": "b2"}])
    assert [r.duplicate for r in again.results] == [True]


async def _run(stack: Stack, invocation_id: str) -> executor_pb2.Run | None:
    listed = await stack.client.list_runs(job_id=31)
    if not any(r.invocation_id == invocation_id for r in listed.runs):
        return None
    return await stack.client.get_run(invocation_id)


async def test_a_batch_cannot_wait_and_has_a_size_limit(stack_warm: Stack) -> None:
    client = stack_warm.client
    event = {"name": "complete", "type": "job", "job_id": 32}
    with pytest.raises(InvalidRequestError, match=r"events\[1\]\.wait"):
        await client.publish_events([event, {**event, "wait": True}])
    with pytest.raises(InvalidRequestError, match="at most 1000"):
        await client.publish_events([event] * 1001)


async def test_an_id_reused_for_another_event_is_already_exists_naming_the_event(
    stack_warm: Stack,
) -> None:
    # It was answered duplicate with the first event's firings, the second dropped (probe 116).
    client = stack_warm.client
    event = {"name": "complete", "type": "job"}
    first = await client.publish_event(name="complete", type="job", job_id=35, event_id="reused")
    assert not first.duplicate
    with pytest.raises(ExecutorRpcError) as refused:
        await client.publish_event(name="complete", type="job", job_id=36, event_id="reused")
    assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert refused.value.details == (
        "event_id 'reused' was first used for another event (it fired nothing; only a"
        " fingerprint of it is kept), not for complete-job-36; an event_id names one event"
        " (a resend of it is a repeat): publish this one under a new event_id"
    )
    with pytest.raises(ExecutorRpcError) as refused:
        await client.publish_events(
            [
                {**event, "job_id": 37, "event_id": "b"},
                {**event, "job_id": 35, "event_id": "reused"},
                {**event, "job_id": 37, "event_id": "reused"},
            ]
        )
    assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert refused.value.details.startswith("events[2]: event_id 'reused' was first used")
    # All or none: the batch's first event was not applied.
    again = await client.publish_events([{**event, "job_id": 37, "event_id": "b"}])
    assert [r.duplicate for r in again.results] == [False]
