"""What starts a job afresh on the farm, and what does not: resubmit, resume, a last frame's check."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor_client import FarmClient, InvalidRequestError
from supervisor_client.jobdict import job_to_dict
from supervisor_client.qbcallback.v1 import farm_pb2
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from tests.conftest import Stack
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service


def statuses(response: farm_pb2.GetJobResponse) -> tuple[str, dict[str, str]]:
    return response.job.status, {w.name: w.status for w in response.job.agenda}


def counts(response: farm_pb2.GetJobResponse) -> list[int]:
    return [cb.count for cb in response.callbacks]


async def told(stack: Stack, farm: FarmClient, job_id: int) -> farm_pb2.GetJobResponse:
    """The job once the supervisor has been told of every run of its callbacks (counts)."""
    shown = await farm.get_job(job_id)

    async def all_reported() -> bool:
        nonlocal shown
        shown = await farm.get_job(job_id)
        return sum(counts(shown)) == len((await stack.client.list_runs(job_id=job_id)).runs)

    await eventually(all_reported)
    return shown


async def test_a_job_dict_read_back_after_its_job_ran_is_submitted_as_a_new_job(
    stack_warm: Stack,
) -> None:
    # Qube's resubmit of an ended job (qube-callbacks.md §5.2: a killed job "must be
    # retried/resubmitted to run again"). Before, the dict was refused: "status must be
    # 'pending' or 'blocked', got 'killed'", then each work item's likewise (probe 76).
    shot = {
        "name": "shot",
        "label": "shot",
        "agenda": ["1", "2", "3"],
        "callbacks": [{"triggers": "done-work-self-*", "language": "python", "code": "pass"}],
    }
    async with FarmClient(stack_warm.channel) as farm:
        (job,) = (await farm.submit_jobs([shot])).jobs
        await farm.change_work(job_id=job.id, work=["3"], change="block")
        await farm.change_work(job_id=job.id, work=["1"], change="start", host="node7")
        await farm.change_work(
            job_id=job.id, work=["1"], change="complete", result_package={"out": "/r/1.exr"}
        )
        await farm.change_work(job_id=job.id, work=["2"], change="start", host="node7")
        await farm.change_work(job_id=job.id, work=["2"], change="fail")
        await farm.change_job(job_id=job.id, verb="kill")
        await stack_warm.settle()
        old = await told(stack_warm, farm, job.id)
        assert statuses(old) == ("killed", {"1": "complete", "2": "failed", "3": "blocked"})
        assert counts(old) == [2]

        read_back = {**job_to_dict(old.job, include_callbacks=True), "label": "shot_v2"}
        (again,) = (await farm.submit_jobs([read_back])).jobs
        await stack_warm.settle()

        new = await farm.get_job(again.id)
        # A frame the dict says is blocked stays blocked; everything else starts afresh.
        assert statuses(new) == ("pending", {"1": "pending", "2": "pending", "3": "blocked"})
        assert [(w.host, w.subid, w.count, dict(w.resultpackage)) for w in new.job.agenda] == [
            ("", -1, 0, {})
        ] * 3
        assert new.job.pgrp == job.id
        # Not started nor ended: both show the time Qube shows for unset.
        assert new.job.timestart == new.job.timecomplete != old.job.timestart
        assert [(cb.triggers, cb.count) for cb in new.callbacks] == [("done-work-self-*", 0)]

        refusals: list[tuple[dict[str, Any], str]] = [
            ({"status": "finished"}, "job 1 of the submission: status"),
            ({"agenda": [{"name": "1", "status": 16}]}, "job 1 of the submission, work 1: status"),
        ]
        for bad, named in refusals:
            with pytest.raises(InvalidRequestError, match=named) as refused:
                await farm.submit_jobs([{**read_back, "label": "shot_v3", **bad}])
            assert "'pending' or 'blocked'" in str(refused.value)


async def test_a_resume_is_not_a_start_so_a_job_held_on_start_can_be_resumed(
    stack_warm: Stack,
) -> None:
    # qube-callbacks.md §1.3: running is "object has started running". Before, resume
    # raised it again: the hold below suspended the job again at once, and the second
    # job's callback suspended and resumed it for ever (1,252 runs in 5 s; probe 76).
    jobs: list[dict[str, Any]] = [
        {
            "name": "hold",
            "label": "hold",
            "agenda": ["1", "2"],
            "callbacks": [
                {"triggers": "running-job-self", "language": "qube", "code": "suspend-self"}
            ],
        },
        {
            "name": "loop",
            "label": "loop",
            "agenda": ["1"],
            "callbacks": [
                {
                    "triggers": "running-work-self-1",
                    "language": "qube",
                    "code": "suspend-self\nresume-self",
                    "maximum": 5,  # bounds the loop the old farm ran
                }
            ],
        },
    ]
    async with FarmClient(stack_warm.channel) as farm:
        hold, loop = (job.id for job in (await farm.submit_jobs(jobs)).jobs)
        await farm.change_work(job_id=hold, work=["1"], change="start")
        await farm.change_work(job_id=loop, work=["1"], change="start")
        await stack_warm.settle()
        assert statuses(await farm.get_job(hold)) == (
            "suspended",
            {"1": "suspended", "2": "pending"},
        )

        await farm.change_job(job_id=hold, verb="resume")
        await stack_warm.settle()

        shown = await told(stack_warm, farm, hold)
        assert (statuses(shown), counts(shown)) == (
            ("running", {"1": "running", "2": "pending"}),
            [1],
        )
        shown = await told(stack_warm, farm, loop)
        assert (statuses(shown), counts(shown)) == (("running", {"1": "running"}), [1])

        # The trigger engine knows the resumed job runs (it was registered again): a
        # level callback registered now latches its running at once.
        watcher = {
            "name": "watcher",
            "callbacks": [
                {
                    "triggers": f"running-job-{hold}",
                    "language": "python",
                    "code": "pass",
                    "mode": "level",
                }
            ],
        }
        (watching,) = (await farm.submit_jobs([watcher])).jobs
        await stack_warm.settle()
        assert counts(await told(stack_warm, farm, watching.id)) == [1]

        # An interrupt then a dispatch is a new start: running fires, and the hold holds.
        await farm.change_job(job_id=hold, verb="interrupt")
        await farm.change_work(job_id=hold, work=["1"], change="start")
        await stack_warm.settle()
        shown = await told(stack_warm, farm, hold)
        assert (statuses(shown)[0], counts(shown)) == ("suspended", [2])


async def test_a_check_of_the_last_frame_can_fail_its_job(stack_warm: Stack) -> None:
    # The last frame's completion completes the job before its callbacks run. Before,
    # fail-self and qb.fail there changed nothing ("job 1 is complete; fail applies to
    # jobs that have not ended"), so a frame check missed the last frame (probe 76).
    def checked(name: str, check: dict[str, Any]) -> dict[str, Any]:
        ended = {"triggers": "failed-job-self", "language": "python", "code": "pass"}
        return {"name": name, "agenda": ["1", "2"], "callbacks": [check, ended]}

    jobs = [
        checked("qube", {"triggers": "complete-work-self-2", "code": "fail-self"}),
        checked(
            "python",
            {
                "triggers": "complete-work-self-*",
                "language": "python",
                "code": "import qb\nif qb.workid() == '2':\n    assert qb.fail(qb.jobid()) == 1",
            },
        ),
    ]
    async with FarmClient(stack_warm.channel) as farm:
        ids = [job.id for job in (await farm.submit_jobs(jobs)).jobs]
        for job_id in ids:
            for frame in ("1", "2"):
                await farm.change_work(job_id=job_id, work=[frame], change="start")
                await farm.change_work(job_id=job_id, work=[frame], change="complete")
        await stack_warm.settle()

        for job_id, check_runs in zip(ids, [1, 2], strict=True):
            shown = await told(stack_warm, farm, job_id)
            assert statuses(shown) == ("failed", {"1": "complete", "2": "complete"})
            assert counts(shown) == [check_runs, 1]  # and failed-job-self fired
            assert f"[callback] fail by qube: job {job_id} complete -> failed" in [
                h.text for h in shown.history
            ]
            runs = (await stack_warm.client.list_runs(job_id=job_id)).runs
            assert {run.outcome for run in runs} == {Outcome.OUTCOME_SUCCEEDED}
        # A failed or killed job is not failed again; a retry runs the checked job anew.
        assert (await farm.change_job(job_id=ids[0], verb="fail")).changed == 0
        assert (await farm.change_job(job_id=ids[0], verb="retry")).job_status == "pending"
