"""A supervisor's JobInfo answer with a number a job dict cannot hold: its malformed answer.

Found by probe 89: a ``google.protobuf.Struct`` may carry NaN or ±Infinity on the wire
(a double is a double), but a job dict is JSON. Such a value in a job's ``extra`` or a
work item's ``resultpackage`` made every qb call on the job (even ``qb.jobstatus``,
which never looks at either) fail as "internal error in the executor", with a traceback
in the log per call, and the calls were missing from the run's actions. A real executor
meets a real SupervisorService on loopback that answers such jobs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2, types_pb2
from tests.helpers.supervisors import CountingSupervisor, executor_beside

pytestmark = pytest.mark.service

NAN_JOB = 600  # extra {"x": NaN}
INFINITE_WORK_JOB = 601  # work item "1"'s resultpackage {"frames": [1, Infinity]}
PGRP = 70  # two jobs, the second with extra {"a": {"b": -Infinity}}
MUST_BE_FINITE = "is not a JSON number; a Struct's numbers must be finite"
MALFORMED = "SupervisorUnavailable: the supervisor's answer was malformed: JobInfo for"


def job(job_id: int) -> types_pb2.Job:
    return types_pb2.Job(
        id=job_id,
        name="odd",
        status="pending",
        pgrp=PGRP,
        agenda=[types_pb2.WorkItem(name="1", status="blocked", subid=-1)],
    )


class NonFiniteSupervisor(CountingSupervisor):
    """Answers JobInfo for NAN_JOB, INFINITE_WORK_JOB and PGRP with non-finite numbers."""

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        selector = request.WhichOneof("selector")
        answer = supervisor_pb2.JobInfoResponse()
        if selector == "id" and request.id == NAN_JOB:
            answer.jobs.append(job(NAN_JOB))
            answer.jobs[0].extra.update({"x": math.nan})
        elif selector == "id" and request.id == INFINITE_WORK_JOB:
            answer.jobs.append(job(INFINITE_WORK_JOB))
            answer.jobs[0].agenda[0].resultpackage.update({"frames": [1, math.inf]})
        elif selector == "pgrp" and request.pgrp == PGRP:
            answer.jobs.extend([job(700), job(701)])
            answer.jobs[1].extra.update({"a": {"b": -math.inf}})
        else:
            return await super().JobInfo(request, context)
        return answer


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[ExecutorClient]:
    async with executor_beside(
        tmp_path, NonFiniteSupervisor, supervisor_timeout_seconds=5
    ) as client:
        yield client


async def test_a_non_finite_number_in_a_jobinfo_answer_is_a_malformed_answer_listed_in_actions(
    client: ExecutorClient, caplog: pytest.LogCaptureFixture
) -> None:
    calls = [
        ("jobstatus", f"{NAN_JOB}"),
        ("jobinfo", f"'-id', {NAN_JOB}"),
        ("workunblock", f"'{NAN_JOB}:1'"),
        ("workstatus", f"'{INFINITE_WORK_JOB}:1'"),
        ("jobinfo", f"'-pgrp', {PGRP}"),
    ]
    code = "".join(
        f"try:\n    qb.{fn}({args})\nexcept qb.QbError as err:\n"
        "    print(f'{type(err).__name__}: {err}')\n"
        for fn, args in calls
    )
    with caplog.at_level(logging.INFO):
        response = await client.execute_callback(language="python", code=code, job={"id": 1})
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
    nan = f"{MALFORMED} job {NAN_JOB}: jobs[0].extra.x: NaN {MUST_BE_FINITE}"
    expected = [
        nan,
        nan,
        nan,
        f"{MALFORMED} job {INFINITE_WORK_JOB}:"
        f" jobs[0].agenda[0].resultpackage.frames[1]: Infinity {MUST_BE_FINITE}",
        f"{MALFORMED} pgrp {PGRP}: jobs[1].extra.a.b: -Infinity {MUST_BE_FINITE}",
    ]
    assert response.stdout.splitlines() == expected
    # Every call is in the run's actions, not ok, with what the callback saw.
    assert [(a.verb, a.ok, a.message) for a in response.actions] == [
        (fn, False, message) for (fn, _), message in zip(calls, expected, strict=True)
    ]
    # The supervisor's fault, said once in the callback's words: no executor traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
