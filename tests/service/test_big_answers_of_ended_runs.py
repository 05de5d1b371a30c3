"""A big JobInfo answer is converted for as long as its run wants it, and not after.

Found by fault injection (probe 150): a supervisor answering 300,000 small jobs (29 MB)
to runs killed after 1 s left their conversions running on worker threads: the executor
held 3-4 GB and burned half a minute of CPU after the runs had ended, and an answer of
300,000 jobs for one id was converted whole (11-22 s) before it was refused. A real
executor meets a supervisor on loopback answering many jobs; each conversion of a job
is counted, and slowed so that a run's wall limit ends it midway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from executor.api import supervisor as grpc_supervisor
from supervisor_client import ExecutorClient
from supervisor_client.jobdict import job_to_dict
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2, types_pb2
from tests.helpers.supervisors import CountingSupervisor, executor_beside

pytestmark = pytest.mark.service

JOBS = 2_000  # ``BIG_ANSWER_JOBS`` or more: converted off the loop
SECONDS_PER_JOB = 0.005  # 10 s for the whole answer, far past the run's limit
WALL_S = 1.0
MANY_JOBS_PGRP = 7
WRONG_ID = 12


class ManyJobsSupervisor(CountingSupervisor):
    """Answers JobInfo with ``JOBS`` small jobs: of pgrp ``MANY_JOBS_PGRP``, and for ``WRONG_ID``."""

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        return supervisor_pb2.JobInfoResponse(
            jobs=[types_pb2.Job(id=1000 + n, name=f"j{n}") for n in range(JOBS)]
        )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[ExecutorClient]:
    async with executor_beside(tmp_path, ManyJobsSupervisor) as client:
        yield client


@pytest.fixture
def converted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The jobs converted so far (one entry each), each taking ``SECONDS_PER_JOB``."""
    count: list[int] = []

    def slow_job_to_dict(job: types_pb2.Job, *, include_callbacks: bool = False) -> Any:
        count.append(job.id)
        time.sleep(SECONDS_PER_JOB)
        return job_to_dict(job, include_callbacks=include_callbacks)

    monkeypatch.setattr(grpc_supervisor, "job_to_dict", slow_job_to_dict)
    return count


async def test_a_killed_runs_conversion_stops_soon_after(
    client: ExecutorClient, converted: list[int]
) -> None:
    runs = await asyncio.gather(
        *(
            client.execute_callback(
                language="python",
                code=f"qb.jobinfo('-pgrp', {MANY_JOBS_PGRP})\n",
                job={"id": 1},
                limits={"wall_seconds": WALL_S},
            )
            for _ in range(3)
        )
    )
    assert [run.outcome for run in runs] == [executor_pb2.OUTCOME_WALL_TIMEOUT] * 3, runs
    # Each run's conversion stops at its next job; the ones waiting their turn never start.
    await asyncio.sleep(20 * SECONDS_PER_JOB)
    at_end = len(converted)
    await asyncio.sleep(40 * SECONDS_PER_JOB)
    assert len(converted) == at_end
    # Three runs would have converted 3 * JOBS; one at a time, each within its second.
    assert at_end < JOBS


async def test_an_answer_of_many_jobs_for_one_id_is_refused_before_it_is_converted(
    client: ExecutorClient, converted: list[int]
) -> None:
    response = await client.execute_callback(
        language="python",
        code=(
            f"try:\n    qb.jobinfo('-id', {WRONG_ID})\n"
            "except qb.QbError as err:\n    print(type(err).__name__, err)\n"
        ),
        job={"id": 1},
    )
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
    assert response.stdout.splitlines() == [
        f"SupervisorUnavailable the supervisor's answer was malformed: JobInfo for job {WRONG_ID}"
        f" gave {JOBS} job(s) (ids 1000, 1001, 1002, 1003, 1004)"
    ]
    assert converted == []
