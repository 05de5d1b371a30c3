"""SubmitJobs' size: a stated bound on jobs and on work items a call, and the loop kept free.

A 16 MiB request of empty jobs holds millions of them: stored on the event loop, one at a
time, they held health and every other call for minutes (10,000 took ~0.9 s in the store
alone). A few jobs of a million frames each did the same. Above its bounds a submission
is refused at once, nothing stored; within them the work is done off the loop.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from supervisor_client import FarmClient
from supervisor_client.qbcallback.v1 import farm_pb2, farm_pb2_grpc
from tests.conftest import Stack
from tests.service.test_request_id_lists import HEALTH_WITHIN_S, health_latencies

pytestmark = pytest.mark.service

# The bounds the README states.
MAX_SUBMIT_JOBS = 1_000
MAX_SUBMIT_WORK_ITEMS = 100_000


def _job(agenda: list[str] | None = None) -> struct_pb2.Struct:
    job = struct_pb2.Struct()
    job.update({"user": "alice"})
    if agenda is not None:
        job.get_or_create_list("agenda").extend(agenda)
    return job


async def _no_jobs(stack: Stack) -> None:
    async with FarmClient(stack.channel) as farm:
        assert list((await farm.list_jobs()).jobs) == []


async def test_more_jobs_than_the_bound_are_refused_at_once(stack_warm: Stack) -> None:
    farm = farm_pb2_grpc.FarmServiceStub(stack_warm.channel)
    request = farm_pb2.SubmitJobsRequest(jobs=[struct_pb2.Struct()] * 200_000)

    answer, latencies = await health_latencies(stack_warm, farm.SubmitJobs(request, timeout=120))

    assert isinstance(answer, grpc.aio.AioRpcError)
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert answer.details() == (
        f"jobs: at most {MAX_SUBMIT_JOBS} jobs a submission, got 200000; submit more in"
        " several calls (each its own pgrp unless a job names one)"
    )
    assert max(latencies) < HEALTH_WITHIN_S, latencies
    await _no_jobs(stack_warm)


async def test_more_work_items_than_the_bound_are_refused_at_once(stack_warm: Stack) -> None:
    farm = farm_pb2_grpc.FarmServiceStub(stack_warm.channel)
    frames = [str(n) for n in range(250_000)]
    request = farm_pb2.SubmitJobsRequest(jobs=[_job(frames) for _ in range(4)])

    answer, latencies = await health_latencies(stack_warm, farm.SubmitJobs(request, timeout=120))

    assert isinstance(answer, grpc.aio.AioRpcError)
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert answer.details() == (
        f"jobs: at most {MAX_SUBMIT_WORK_ITEMS} work items a submission (all its jobs'"
        " agendas), got 1000000; submit more in several calls"
    )
    assert max(latencies) < HEALTH_WITHIN_S, latencies
    await _no_jobs(stack_warm)


async def test_as_many_jobs_as_the_bound_are_stored_while_health_answers(
    stack_warm: Stack,
) -> None:
    farm = farm_pb2_grpc.FarmServiceStub(stack_warm.channel)
    request = farm_pb2.SubmitJobsRequest(jobs=[_job(["1"]) for _ in range(MAX_SUBMIT_JOBS)])

    answer, latencies = await health_latencies(stack_warm, farm.SubmitJobs(request, timeout=120))

    assert isinstance(answer, farm_pb2.SubmitJobsResponse), answer
    ids = [job.id for job in answer.jobs]
    assert ids == list(range(1, MAX_SUBMIT_JOBS + 1))
    assert {job.pgrp for job in answer.jobs} == {1}
    assert max(latencies) < HEALTH_WITHIN_S, latencies


async def test_as_many_work_items_as_the_bound_are_stored_while_health_answers(
    stack_warm: Stack,
) -> None:
    farm = farm_pb2_grpc.FarmServiceStub(stack_warm.channel)
    half = MAX_SUBMIT_WORK_ITEMS // 2
    request = farm_pb2.SubmitJobsRequest(
        jobs=[_job([str(n) for n in range(half)]), _job([f"b{n}" for n in range(half)])]
    )

    answer, latencies = await health_latencies(stack_warm, farm.SubmitJobs(request, timeout=120))

    assert isinstance(answer, farm_pb2.SubmitJobsResponse), answer
    assert [len(job.agenda) for job in answer.jobs] == [half, half]
    assert answer.jobs[1].agenda[-1].name == f"b{half - 1}"
    assert max(latencies) < HEALTH_WITHIN_S, latencies


async def test_a_submission_refused_in_its_last_job_stores_none_of_it(stack_warm: Stack) -> None:
    farm = farm_pb2_grpc.FarmServiceStub(stack_warm.channel)
    last = _job(["1"])
    last.update({"cpus": "many"})
    request = farm_pb2.SubmitJobsRequest(jobs=[*(_job(["1"]) for _ in range(999)), last])

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await farm.SubmitJobs(request, timeout=120)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job 1000 of the submission: cpus must be an integer" in str(refused.value.details())
    await _no_jobs(stack_warm)
