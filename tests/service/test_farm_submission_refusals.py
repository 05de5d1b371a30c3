"""SubmitJobs refuses what the trigger engine would refuse, before anything is stored.

A job the farm stores but cannot register with the trigger engine never has its
callbacks run: the forwarder can only log the refusal (a NUL the engine refuses), or,
for a RegisterJob over the executor's receive limit, it once retried for ever and held
every later event of every job behind it. Each case below is refused whole, naming the
job and the field, and the farm goes on as if it had never been asked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor_client import ExecutorRpcError, FarmClient
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from supervisor_client.reference import ReferenceSupervisor
from tests.conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.service

RUNS_ON_COMPLETE = {"triggers": "complete-job-self", "language": "python", "code": "print(1)"}
# Under the 16 MiB a request may be (about 16.7 MB as a SubmitJobs Struct), but each item
# grows as RegisterJob's WorkItem (its status, subid -1), past the executor's receive limit.
BIG_AGENDA = [f"{n:06d}" + "x" * 994 for n in range(16_600)]


async def refusal(farm: FarmClient, jobs: list[dict[str, Any]]) -> str:
    with pytest.raises(ExecutorRpcError) as err:
        await farm.submit_jobs(jobs)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
    return err.value.details


async def callbacks_still_run(stack: Stack, farm: FarmClient) -> int:
    """Submit a job with a callback, complete it, and see the callback run; its id."""
    (job,) = (
        await farm.submit_jobs(
            [{"name": "after", "user": "alice", "agenda": ["1"], "callbacks": [RUNS_ON_COMPLETE]}]
        )
    ).jobs
    await farm.change_work(job_id=job.id, work=["1"], change="complete")
    waited = await farm.wait_jobs([job.id], wait_seconds=60)
    assert waited.done, waited
    runs = (await stack.client.list_runs(job_id=job.id)).runs
    assert [run.outcome for run in runs] == [Outcome.OUTCOME_SUCCEEDED]
    return job.id


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"name": "shot\x00010"}, "name holds a NUL character (U+0000)"),
        ({"name": "n", "label": "l\x00"}, "label holds a NUL character"),
        ({"name": "n", "prototype": "cmd\x00range"}, "prototype holds a NUL character"),
        ({"name": "n", "agenda": ["1", "2\x00"]}, "agenda[1].name holds a NUL character"),
        (
            {"name": "n", "callbacks": [{**RUNS_ON_COMPLETE, "code": "print(1)\x00"}]},
            "callbacks[0].code holds a NUL character",
        ),
    ],
)
async def test_a_nul_the_trigger_engine_would_refuse_refuses_the_submission(
    stack_warm: Stack, job: dict[str, Any], field: str
) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        details = await refusal(farm, [{"name": "fine", "user": "alice"}, {**job, "user": "alice"}])
        assert details.startswith(f"job 2 of the submission: {field}"), details
        assert list((await farm.list_jobs()).jobs) == []
        # Nothing was stored, no id used, and the farm's callbacks run as before.
        assert await callbacks_still_run(stack_warm, farm) == 1


async def test_an_unknown_pgrp_is_refused_naming_the_job(stack_warm: Stack) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        details = await refusal(farm, [{"name": "a"}, {"name": "b", "pgrp": 99999}])
    assert details == "job 2 of the submission: pgrp 99999 does not exist"


async def test_a_job_whose_registration_would_not_fit_is_refused_and_the_farm_goes_on(
    stack_warm: Stack,
) -> None:
    # Its own channel (64 MiB answers): an answer with the job would not fit the default 4.
    async with FarmClient(stack_warm.address) as farm:
        details = await refusal(farm, [{"name": "huge", "user": "alice", "agenda": BIG_AGENDA}])
        assert details.startswith("job 1 of the submission: registering it with the trigger"), (
            details
        )
        assert "16777216 bytes (16 MiB)" in details
        assert list((await farm.list_jobs()).jobs) == []
        assert await callbacks_still_run(stack_warm, farm) == 1


async def test_an_undeliverable_registration_left_in_a_data_dir_no_longer_stalls_the_farm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What an older executor's SubmitJobs stored: a job RegisterJob cannot carry, whose
    # submit event waits first in supervisor.db.
    data = tmp_path / "data"
    data.mkdir()
    with ReferenceSupervisor(data / "supervisor.db", event_outbox=True) as sup:
        (stuck,) = sup.submit([{"name": "huge", "user": "alice", "agenda": BIG_AGENDA}])
    caplog.set_level(logging.WARNING, logger="supervisor_client.reference.forwarder")
    async with running_stack(stack_settings(data)) as stack, FarmClient(stack.channel) as farm:
        assert await callbacks_still_run(stack, farm) == stuck["id"] + 1
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        f"job {stuck['id']}" in r.getMessage() and "16777216" in r.getMessage() for r in logged
    ), [r.getMessage() for r in logged]
