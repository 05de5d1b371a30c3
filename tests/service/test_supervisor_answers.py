"""What a callback sees when a site's supervisor answers in ways the reference one does not.

A real executor is pointed at a real Supervisor service on loopback (the reference
one, with JobInfo or JobAction answered otherwise): an unknown job as an empty list
rather than NOT_FOUND, a malformed answer, a refusal of the site's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from executor import server
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2
from tests.conftest import stack_settings
from tests.helpers.supervisors import CountingSupervisor, SupervisorEndpoint

pytestmark = pytest.mark.service

UNKNOWN_JOB = 9_999


class SiteSupervisor(CountingSupervisor):
    """Answers JobInfo for UNKNOWN_JOB with no job, for job ids above it with two; locks kills."""

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        if request.WhichOneof("selector") == "id" and request.id >= UNKNOWN_JOB:
            if request.id == UNKNOWN_JOB:
                return supervisor_pb2.JobInfoResponse()
            job = supervisor_pb2.JobInfoResponse().jobs.add(id=request.id, name="twin")
            return supervisor_pb2.JobInfoResponse(jobs=[job, job])
        return await super().JobInfo(request, context)

    async def JobAction(
        self, request: supervisor_pb2.JobActionRequest, context: Any
    ) -> supervisor_pb2.JobActionResponse:
        if request.verb == supervisor_pb2.JOB_VERB_KILL:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "job is locked by wrangler")
        return await super().JobAction(request, context)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[ExecutorClient]:
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", SiteSupervisor)
    await endpoint.start()
    running = await server.start(stack_settings(tmp_path / "data", supervisor=endpoint.address))
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            yield client
    finally:
        await running.stop()
        await endpoint.stop()
        endpoint.store.close()


async def run(client: ExecutorClient, code: str) -> str:
    response = await client.execute_callback(language="python", code=code, job={"id": 1})
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
    return response.stdout


def caught(call: str) -> str:
    """A callback printing the qb error ``call`` raises: its class and message."""
    return f"try:\n    {call}\nexcept qb.QbError as err:\n    print(type(err).__name__, err)\n"


async def test_a_job_the_supervisor_answers_with_no_job_is_no_such_job(
    client: ExecutorClient,
) -> None:
    out = await run(
        client,
        f"print(qb.jobinfo('-id', {UNKNOWN_JOB}))\n"
        + caught(f"qb.jobstatus({UNKNOWN_JOB})")
        + caught(f"qb.workstatus('{UNKNOWN_JOB}:1')")
        + caught(f"qb.workunblock('{UNKNOWN_JOB}:1')"),
    )
    no_such = f"NoSuchJob the supervisor has no job {UNKNOWN_JOB}"
    assert out.splitlines() == ["[]", no_such, no_such, no_such]


async def test_a_malformed_jobinfo_answer_is_the_supervisors_error_not_the_executors(
    client: ExecutorClient,
) -> None:
    twin = UNKNOWN_JOB + 1
    out = await run(client, caught(f"qb.jobinfo('-id', {twin})") + caught(f"qb.jobstatus({twin})"))
    said = (
        f"SupervisorUnavailable the supervisor's answer was malformed: JobInfo for job {twin}"
        f" gave 2 job(s) (ids {twin}, {twin})"
    )
    assert out.splitlines() == [said, said]


async def test_a_failed_precondition_is_a_plain_qb_error_with_the_supervisors_message(
    client: ExecutorClient,
) -> None:
    out = await run(client, caught("qb.kill(1)"))
    assert out.splitlines() == ["QbError job is locked by wrangler"]
