"""What a callback sees when a site's supervisor answers in ways the reference one does not.

A real executor is pointed at a real Supervisor service on loopback (the reference
one, with JobInfo or JobAction answered otherwise): an unknown job as an empty list
rather than NOT_FOUND, a malformed answer, a refusal of the site's own, codes gRPC also
makes itself (DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE) answered by the supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2
from tests.helpers.supervisors import CountingSupervisor, executor_beside

pytestmark = pytest.mark.service

UNKNOWN_JOB = 9_999
# Job ids whose JobInfo the site answers with a code gRPC also makes itself, and one it
# answers only after the executor's deadline (SUPERVISOR_TIMEOUT_S).
ANSWERED_CODES = {
    501: (grpc.StatusCode.DEADLINE_EXCEEDED, "the farm database's own deadline passed"),
    502: (grpc.StatusCode.CANCELLED, "the request was cancelled by the site"),
    503: (grpc.StatusCode.UNAVAILABLE, "down for maintenance"),
}
HANGING_JOB = 504
SUPERVISOR_TIMEOUT_S = 1.0


class SiteSupervisor(CountingSupervisor):
    """Answers JobInfo for UNKNOWN_JOB with no job, for job ids above it with two; locks kills.

    The ids of ANSWERED_CODES and HANGING_JOB are answered so by JobAction too.
    """

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        if request.WhichOneof("selector") == "id" and request.id in ANSWERED_CODES:
            await context.abort(*ANSWERED_CODES[request.id])
        if request.WhichOneof("selector") == "id" and request.id == HANGING_JOB:
            await asyncio.sleep(SUPERVISOR_TIMEOUT_S * 3)
        if request.WhichOneof("selector") == "id" and request.id >= UNKNOWN_JOB:
            if request.id == UNKNOWN_JOB:
                return supervisor_pb2.JobInfoResponse()
            job = supervisor_pb2.JobInfoResponse().jobs.add(id=request.id, name="twin")
            return supervisor_pb2.JobInfoResponse(jobs=[job, job])
        return await super().JobInfo(request, context)

    async def JobAction(
        self, request: supervisor_pb2.JobActionRequest, context: Any
    ) -> supervisor_pb2.JobActionResponse:
        if request.job_id in ANSWERED_CODES:
            await context.abort(*ANSWERED_CODES[request.job_id])
        if request.job_id == HANGING_JOB:
            await asyncio.sleep(SUPERVISOR_TIMEOUT_S * 3)
        if request.verb == supervisor_pb2.JOB_VERB_KILL:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "job is locked by wrangler")
        return await super().JobAction(request, context)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[ExecutorClient]:
    async with executor_beside(
        tmp_path, SiteSupervisor, supervisor_timeout_seconds=SUPERVISOR_TIMEOUT_S
    ) as client:
        yield client


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


async def test_a_code_the_supervisor_answered_is_told_from_one_grpc_made(
    client: ExecutorClient,
) -> None:
    # Found by fault injection: a supervisor that answered DEADLINE_EXCEEDED or CANCELLED
    # (with its own message) was said not to have answered.
    out = await run(client, "".join(caught(f"qb.jobinfo('-id', {job})") for job in range(501, 505)))
    assert out.splitlines() == [
        "SupervisorUnavailable the supervisor answered with an error: DEADLINE_EXCEEDED: "
        "the farm database's own deadline passed",
        "SupervisorUnavailable the call to the supervisor was cancelled: CANCELLED: "
        "the request was cancelled by the site",
        "SupervisorUnavailable the supervisor is unavailable: UNAVAILABLE: down for maintenance",
        "SupervisorUnavailable the supervisor did not answer within 1 s: DEADLINE_EXCEEDED: "
        "Deadline Exceeded",
    ]


async def test_an_action_left_without_its_answer_is_said_to_may_have_been_applied(
    client: ExecutorClient,
) -> None:
    # Found by fault injection: a verb the supervisor applied and then answered too late
    # was reported as plain "did not answer", so a callback author would retry it, and
    # the retry (a new action_seq) was applied again.
    code = "".join(caught(f"qb.block({job})") for job in range(501, 505))
    response = await client.execute_callback(language="python", code=code, job={"id": 1})
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
    said = [
        "the supervisor answered with an error: DEADLINE_EXCEEDED: "
        "the farm database's own deadline passed",
        "the call to the supervisor was cancelled: CANCELLED: the request was cancelled by the site",
        "the supervisor is unavailable: UNAVAILABLE: down for maintenance",
        "the supervisor did not answer within 1 s: DEADLINE_EXCEEDED: Deadline Exceeded",
    ]
    maybe = [f"{message}; it may have been applied" for message in said]
    assert response.stdout.splitlines() == [f"SupervisorUnavailable {m}" for m in maybe]
    assert [(a.verb, a.ok, a.message) for a in response.actions] == [
        ("block", False, f"SupervisorUnavailable: {m}") for m in maybe
    ]
