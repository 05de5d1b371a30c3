"""A label another scheduler registered directly in a pgrp the farm uses: no job is lost to it.

Labels are unique per pgrp in the trigger engine, and a pgrp is a job id, so a job
registered through RegisterJob (not through the farm) may hold a label in a pgrp the
farm later leads or joins. The farm's registration of its own job under that label was
refused when the forwarder made it, after SubmitJobs had answered OK: the job was
stored, and its callbacks never ran. Now SubmitJobs refuses a label it was given that
way, naming the label, the pgrp and the job holding it, and stores nothing; a label the
farm gives (``qube<N>``) passes over one held so.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from supervisor_client import ExecutorRpcError, FarmClient
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from tests.conftest import Stack

pytestmark = pytest.mark.service

RUNS_ON_COMPLETE = {"triggers": "complete-job-self", "language": "python", "code": "print(1)"}
# Far above any id the farm gives in these tests.
DIRECT_ID = 500


async def register_directly(stack: Stack, pgrp: int, label: str) -> None:
    """Another scheduler's job, registered with the trigger engine itself (not the farm)."""
    await stack.client.register_job(
        {"id": DIRECT_ID, "name": "theirs", "pgrp": pgrp, "label": label, "user": "bob"}
    )


async def callbacks_run(stack: Stack, farm: FarmClient, job_id: int) -> None:
    """Complete the job's one frame: its callback on complete-job-self has run, once."""
    await farm.change_work(job_id=job_id, work=["1"], change="complete")
    waited = await farm.wait_jobs([job_id], wait_seconds=60)
    assert waited.done, waited
    runs = (await stack.client.list_runs(job_id=job_id)).runs
    assert [run.outcome for run in runs] == [Outcome.OUTCOME_SUCCEEDED]


def job(**fields: Any) -> dict[str, Any]:
    return {"user": "alice", "agenda": ["1"], "callbacks": [RUNS_ON_COMPLETE], **fields}


async def test_a_label_held_by_a_direct_registration_refuses_the_submission(
    stack_warm: Stack,
) -> None:
    # The farm's first job leads pgrp 1.
    await register_directly(stack_warm, pgrp=1, label="render")
    async with FarmClient(stack_warm.channel) as farm:
        with pytest.raises(ExecutorRpcError) as err:
            await farm.submit_jobs([job(name="shot", label="render")])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert err.value.details.startswith(
            f"job 1 of the submission: label 'render' in pgrp 1 is held by job {DIRECT_ID},"
            " registered with the trigger engine through RegisterJob, not by the farm;"
        ), err.value.details
        assert list((await farm.list_jobs()).jobs) == []
        # Nothing stored, nothing lost: the same job under another label runs its callbacks.
        (stored,) = (await farm.submit_jobs([job(name="shot", label="render2")])).jobs
        assert (stored.id, stored.pgrp) == (1, 1)
        await callbacks_run(stack_warm, farm, stored.id)


async def test_joining_a_pgrp_with_a_label_held_there_directly_is_refused(
    stack_warm: Stack,
) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        (first,) = (await farm.submit_jobs([job(name="plate")])).jobs
        await register_directly(stack_warm, pgrp=first.pgrp, label="comp")
        with pytest.raises(ExecutorRpcError) as err:
            await farm.submit_jobs([job(name="comp", label="comp", pgrp=first.pgrp)])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert f"label 'comp' in pgrp {first.pgrp} is held by job {DIRECT_ID}" in (
            err.value.details
        )
        assert [j.id for j in (await farm.list_jobs()).jobs] == [first.id]


async def test_the_label_the_farm_gives_passes_over_one_held_directly(stack_warm: Stack) -> None:
    # The farm would give its first job 'qube0' in pgrp 1.
    await register_directly(stack_warm, pgrp=1, label="qube0")
    async with FarmClient(stack_warm.channel) as farm:
        (stored,) = (await farm.submit_jobs([job(name="shot")])).jobs
        assert (stored.pgrp, stored.label) == (1, "qube1")
        await callbacks_run(stack_warm, farm, stored.id)


async def test_a_direct_job_the_farm_replaces_under_its_id_frees_its_label(
    stack_warm: Stack,
) -> None:
    # Registered by hand under the id the farm gives next: the farm's job replaces it
    # (README, "The farm"), so the label it held there is free for the farm's job.
    await stack_warm.client.register_job(
        {"id": 1, "name": "by hand", "pgrp": 1, "label": "render", "user": "bob"}
    )
    async with FarmClient(stack_warm.channel) as farm:
        (stored,) = (await farm.submit_jobs([job(name="shot", label="render")])).jobs
        assert (stored.id, stored.pgrp, stored.label) == (1, 1, "render")
        await callbacks_run(stack_warm, farm, stored.id)


async def test_a_label_registered_by_hand_over_a_job_the_farm_has_is_refused(
    stack_warm: Stack,
) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        (first,) = (await farm.submit_jobs([job(name="plate")])).jobs
        # Against the README's advice: a registration by hand under the farm's job's id.
        await stack_warm.client.register_job(
            {"id": first.id, "name": "by hand", "pgrp": first.pgrp, "label": "x", "user": "bob"}
        )
        with pytest.raises(ExecutorRpcError) as err:
            await farm.submit_jobs([job(name="comp", label="x", pgrp=first.pgrp)])
        assert f"label 'x' in pgrp {first.pgrp} is held by job {first.id}," in err.value.details
