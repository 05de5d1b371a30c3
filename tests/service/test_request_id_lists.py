"""Lists a caller sends (WaitJobs, RetryDeadLetters, RegisterJob's published_events): bounded.

A list of one id repeated 600,000 times (600 KB) once held the executor's event loop for
41 s: health went unanswered. Each list now has a stated bound, refused at once above it,
and what is within it is read a set at a time, so health answers meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from supervisor_client import FarmClient
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, farm_pb2, farm_pb2_grpc
from tests.conftest import Stack
from tests.helpers.health import SERVING, health_status

pytestmark = pytest.mark.service

# What a health check may take while the big call runs: generous for an idle loop (a
# few ms), far below the seconds a per-id pass over such a list held it.
HEALTH_WITHIN_S = 1.0
# The bounds the README states.
MAX_WAIT_JOB_IDS = 10_000
MAX_RETRY_IDS = 1_000
MAX_PUBLISHED_EVENTS = 1_000


async def health_latencies(stack: Stack, call: Awaitable[Any]) -> tuple[Any, list[float]]:
    """``call``'s answer (or its error), and how long each health check took meanwhile."""
    task: asyncio.Task[Any] = asyncio.ensure_future(call)
    latencies: list[float] = []
    while True:
        started = time.monotonic()
        assert await health_status(stack.channel) == SERVING
        latencies.append(time.monotonic() - started)
        if task.done():
            break
        await asyncio.sleep(0.05)
    try:
        return await task, latencies
    except grpc.aio.AioRpcError as err:
        return err, latencies


async def pending_jobs(stack: Stack, count: int) -> list[int]:
    async with FarmClient(stack.channel) as farm:
        submitted = await farm.submit_jobs(
            [{"name": f"j{n}", "user": "alice", "agenda": ["1"]} for n in range(count)]
        )
    return [job.id for job in submitted.jobs]


async def test_wait_jobs_refuses_more_ids_than_its_bound_at_once(stack_warm: Stack) -> None:
    (job_id,) = await pending_jobs(stack_warm, 1)
    farm = farm_pb2_grpc.FarmServiceStub(stack_warm.channel)
    request = farm_pb2.WaitJobsRequest(job_ids=[job_id] * 600_000, timeout_seconds=0.5)

    answer, latencies = await health_latencies(stack_warm, farm.WaitJobs(request, timeout=60))

    assert isinstance(answer, grpc.aio.AioRpcError)
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert answer.details() == (
        f"job_ids: at most {MAX_WAIT_JOB_IDS} entries, got 600000; an empty list waits for"
        " every job"
    )
    assert max(latencies) < HEALTH_WITHIN_S, latencies


async def test_wait_jobs_at_its_bound_keeps_its_timeout_and_lists_each_job_once(
    stack_warm: Stack,
) -> None:
    first, second = await pending_jobs(stack_warm, 2)
    asked = [second, first] * (MAX_WAIT_JOB_IDS // 2)
    farm = farm_pb2_grpc.FarmServiceStub(stack_warm.channel)
    request = farm_pb2.WaitJobsRequest(job_ids=asked, timeout_seconds=0.5)

    started = time.monotonic()
    answer, latencies = await health_latencies(stack_warm, farm.WaitJobs(request, timeout=60))
    took = time.monotonic() - started

    assert isinstance(answer, farm_pb2.WaitJobsResponse), answer
    assert not answer.done
    # Each job once, where it was first named.
    assert [(j.job_id, j.status) for j in answer.jobs] == [
        (second, "pending"),
        (first, "pending"),
    ]
    assert 0.5 <= took < 5, took
    assert max(latencies) < HEALTH_WITHIN_S, latencies


async def test_wait_jobs_with_an_unknown_job_among_many_names_it(stack_warm: Stack) -> None:
    (job_id,) = await pending_jobs(stack_warm, 1)
    farm = farm_pb2_grpc.FarmServiceStub(stack_warm.channel)
    request = farm_pb2.WaitJobsRequest(job_ids=[job_id] * 5000 + [77, 78], timeout_seconds=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await farm.WaitJobs(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == f"no job 77; the farm has jobs {job_id}"


async def test_retry_dead_letters_refuses_more_ids_than_its_bound_at_once(
    stack_warm: Stack,
) -> None:
    runs = executor_pb2_grpc.RunServiceStub(stack_warm.channel)
    count = 1_500_000
    request = executor_pb2.RetryDeadLettersRequest(
        invocation_ids=[f"x{n % 1000}" for n in range(count)]
    )

    answer, latencies = await health_latencies(
        stack_warm, runs.RetryDeadLetters(request, timeout=60)
    )

    assert isinstance(answer, grpc.aio.AioRpcError)
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert answer.details() == (
        f"invocation_ids: at most {MAX_RETRY_IDS} per call, got {count}; set all to retry"
        " every dead letter"
    )
    assert max(latencies) < HEALTH_WITHIN_S, latencies


async def test_retry_dead_letters_at_its_bound_is_answered(stack_warm: Stack) -> None:
    runs = executor_pb2_grpc.RunServiceStub(stack_warm.channel)
    request = executor_pb2.RetryDeadLettersRequest(
        invocation_ids=[f"x{n % 10}" for n in range(MAX_RETRY_IDS)]
    )
    answer, latencies = await health_latencies(
        stack_warm, runs.RetryDeadLetters(request, timeout=60)
    )
    assert isinstance(answer, executor_pb2.RetryDeadLettersResponse), answer
    assert answer.queued == 0  # none of them is a dead letter
    assert max(latencies) < HEALTH_WITHIN_S, latencies


async def test_register_job_refuses_a_longer_published_events_list_than_its_bound(
    stack_warm: Stack,
) -> None:
    """Eleven names in five forms each: a list of thousands says nothing more, and costs the loop."""
    triggers = executor_pb2_grpc.TriggerServiceStub(stack_warm.channel)
    request = executor_pb2.RegisterJobRequest(published_events=["killed"] * 2_000_000)
    request.job.id = 5
    request.job.name = "many"

    answer, latencies = await health_latencies(
        stack_warm, triggers.RegisterJob(request, timeout=60)
    )

    assert isinstance(answer, grpc.aio.AioRpcError)
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert answer.details() == (
        f"published_events: at most {MAX_PUBLISHED_EVENTS} items, got 2000000; each NAME or"
        " NAME-TYPE once is enough"
    )
    assert max(latencies) < HEALTH_WITHIN_S, latencies
    request.ClearField("published_events")
    request.published_events.extend(["complete", "killed-job", " "] * (MAX_PUBLISHED_EVENTS // 3))
    assert (await triggers.RegisterJob(request, timeout=60)).callbacks == []
