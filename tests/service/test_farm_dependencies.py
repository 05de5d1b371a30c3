"""Qube's dependency and waitfor job attributes on the farm: held blocked, started when met."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor_client import FarmClient, InvalidRequestError
from supervisor_client.jobdict import job_to_dict
from supervisor_client.qbcallback.v1 import farm_pb2
from tests.conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.service


def statuses(response: farm_pb2.GetJobResponse) -> tuple[str, dict[str, str]]:
    return response.job.status, {w.name: w.status for w in response.job.agenda}


async def test_dependencies_hold_jobs_and_frames_until_met(stack_warm: Stack) -> None:
    jobs: list[dict[str, Any]] = [
        {"name": "render", "label": "render", "user": "alice", "agenda": ["1", "2"]},
        {"name": "comp", "user": "alice", "dependency": "link-complete-job-render"},
        {"name": "legacy", "user": "alice", "waitfor": 1},
        {
            "name": "per-frame",
            "user": "alice",
            "agenda": ["1", "2"],
            "dependency": 'link-complete-work-render, info-complete-{"*":["1:*"]}',
        },
    ]
    async with FarmClient(stack_warm.channel) as farm:
        stored = (await farm.submit_jobs(jobs)).jobs
        render, comp, legacy, per_frame = (job.id for job in stored)
        await stack_warm.settle()
        assert statuses(await farm.get_job(comp)) == ("blocked", {})
        assert statuses(await farm.get_job(legacy)) == ("blocked", {})
        shown = await farm.get_job(per_frame)
        assert statuses(shown) == ("pending", {"1": "blocked", "2": "blocked"})
        assert [(cb.triggers, cb.language) for cb in shown.callbacks] == [
            ("complete-work-render-{work}", "qube")
        ]

        await farm.change_work(job_id=render, work=["1"], change="complete")
        await stack_warm.settle()
        assert statuses(await farm.get_job(per_frame))[1] == {"1": "pending", "2": "blocked"}
        assert statuses(await farm.get_job(comp))[0] == "blocked"

        await farm.change_work(job_id=render, work=["2"], change="complete")
        await stack_warm.settle()
        assert statuses(await farm.get_job(comp))[0] == "pending"
        assert statuses(await farm.get_job(legacy))[0] == "pending"
        assert statuses(await farm.get_job(per_frame))[1] == {"1": "pending", "2": "pending"}

        # Submitted after what it waits for is done: it does not wait for ever.
        (late,) = (await farm.submit_jobs([{"name": "late", "dependency": str(render)}])).jobs
        await stack_warm.settle()
        assert statuses(await farm.get_job(late.id))[0] == "pending"


async def test_a_job_killed_while_its_frames_wait_stays_killed_as_they_are_released(
    stack_warm: Stack,
) -> None:
    # The README's frame-by-frame case: a wrangler kills comp while its frames wait for
    # render's. Each release unblocked a frame and made the killed job pending again,
    # ready to render, and its done-job-self fired once more (probe 54).
    jobs: list[dict[str, Any]] = [
        {"name": "render", "label": "render", "agenda": ["1", "2"]},
        {
            "name": "comp",
            "agenda": ["1", "2"],
            "dependency": "link-complete-work-render",
            "callbacks": [{"triggers": "done-job-self", "language": "python", "code": "pass"}],
        },
    ]
    async with FarmClient(stack_warm.channel) as farm:
        render, comp = (job.id for job in (await farm.submit_jobs(jobs)).jobs)
        await stack_warm.settle()
        await farm.change_job(job_id=comp, verb="kill")
        await farm.change_work(job_id=render, work=["1", "2"], change="complete")
        await stack_warm.settle()

        shown = await farm.get_job(comp)
        assert statuses(shown) == ("killed", {"1": "pending", "2": "pending"})
        (done,) = (cb for cb in shown.callbacks if cb.triggers == "done-job-self")
        assert done.count == 1
        assert not (await farm.take_work()).taken  # nothing of comp's is dispatched

        await farm.change_job(job_id=comp, verb="retry")  # as in Qube: run it again
        assert statuses(await farm.get_job(comp))[0] == "pending"


async def test_a_resubmitted_jobinfo_dict_waits_for_its_own_dependency_only(
    stack_warm: Stack,
) -> None:
    # Qube's resubmit: read the job back with its callbacks, change it, submit it again.
    # Before, the callback made for the old dependency came back among the job's own:
    # level mode, A complete, so the new job was released at once while C was pending;
    # and a dict resubmitted as it was got one more copy of its dependency each time.
    own = {"triggers": "complete-job-self", "language": "qube", "code": "mail-status"}
    jobs: list[dict[str, Any]] = [
        {"name": "A", "label": "A", "agenda": ["1"]},
        {"name": "C", "label": "C", "agenda": ["1"]},
        {"name": "B", "label": "B", "agenda": ["1"], "dependency": "link-complete-job-A"},
        {
            "name": "F",
            "label": "F",
            "agenda": ["1"],
            "dependency": "link-complete-work-A",
            "callbacks": [own],
        },
    ]
    async with FarmClient(stack_warm.channel) as farm:
        a, c, b, f = (job.id for job in (await farm.submit_jobs(jobs)).jobs)
        await farm.change_work(job_id=a, work=["1"], change="complete")
        await stack_warm.settle()
        assert statuses(await farm.get_job(b))[0] == "pending"

        def read_back(job: farm_pb2.GetJobResponse, label: str) -> dict[str, Any]:
            info = job_to_dict(job.job, include_callbacks=True)
            del info["id"]
            return {**info, "label": label, "status": "pending"}

        moved = {**read_back(await farm.get_job(b), "B2"), "dependency": "link-complete-job-C"}
        same = read_back(await farm.get_job(f), "F2")
        b2, f2 = (job.id for job in (await farm.submit_jobs([moved, same])).jobs)
        await stack_warm.settle()

        def callbacks(job: farm_pb2.GetJobResponse) -> list[tuple[str, str]]:
            listed = job_to_dict(job.job, include_callbacks=True)["callbacks"]
            return [(cb["triggers"], cb["code"]) for cb in listed]

        shown = await farm.get_job(b2)
        assert statuses(shown)[0] == "blocked"
        assert callbacks(shown) == [("complete-job-C", "unblock-self")]
        assert callbacks(await farm.get_job(f2)) == [
            ("complete-job-self", "mail-status"),
            ("complete-work-A-{work}", "unblock-work-self"),
        ]
        await farm.change_work(job_id=c, work=["1"], change="complete")
        await stack_warm.settle()
        assert statuses(await farm.get_job(b2))[0] == "pending"


@pytest.mark.parametrize("retried_as", ["job", "frame"])
async def test_a_dependency_on_a_retried_job_waits_for_its_next_end(
    stack_warm: Stack, retried_as: str
) -> None:
    # Before, the engine still knew the retried job as complete (Qube has no pending
    # event): these were released at once, while it was pending again.
    async with FarmClient(stack_warm.channel) as farm:
        (first,) = (await farm.submit_jobs([{"name": "A", "label": "A", "agenda": ["1"]}])).jobs
        await farm.change_work(job_id=first.id, work=["1"], change="start")
        await farm.change_work(job_id=first.id, work=["1"], change="complete")
        await stack_warm.settle()
        if retried_as == "job":
            await farm.change_job(job_id=first.id, verb="retry")
        else:
            await farm.change_work(job_id=first.id, work=["1"], change="retry")
        await stack_warm.settle()
        assert statuses(await farm.get_job(first.id)) == ("pending", {"1": "pending"})

        waiting: list[dict[str, Any]] = [
            {"name": "B", "dependency": str(first.id)},
            {"name": "C", "waitfor": first.id},
            {"name": "D", "agenda": ["1"], "dependency": f"link-complete-work-{first.id}"},
        ]
        b, c, d = (job.id for job in (await farm.submit_jobs(waiting)).jobs)
        await stack_warm.settle()
        assert statuses(await farm.get_job(b))[0] == "blocked"
        assert statuses(await farm.get_job(c))[0] == "blocked"
        assert statuses(await farm.get_job(d))[1] == {"1": "blocked"}

        await farm.change_work(job_id=first.id, work=["1"], change="start")
        await farm.change_work(job_id=first.id, work=["1"], change="complete")
        await stack_warm.settle()
        assert statuses(await farm.get_job(b))[0] == "pending"
        assert statuses(await farm.get_job(c))[0] == "pending"
        assert statuses(await farm.get_job(d))[1] == {"1": "pending"}


@pytest.mark.parametrize(
    ("dependency", "message"),
    [
        ("1 || 2", "without operators or parentheses"),
        ("link-done-subjob-1", "instance-by-instance links are not supported"),
        ("after-render", "dependency item 'after-render': expected a job id"),
        ("link-done-work-1", "a frame-by-frame dependency (link-...-work-...) needs an agenda"),
        ("link-complete-job-self", "'self' is not another job's id or label"),
        ("complete-job-parent", "'parent' is not another job's id or label"),
        ("link-complete-work-24-5", "'24-5' is not another job's id or label"),
        # Past the stored ids: SubmitJobs said OK and the job was never registered.
        (
            "9223372036854775808",
            "dependency item '9223372036854775808': job id 9223372036854775808 is out of range",
        ),
        (
            "link-done-job-18446744073709551615",
            "dependency item 'link-done-job-18446744073709551615': job id 18446744073709551615 is out of range",
        ),
        ("12, 0", "dependency item '0': job id 0 is out of range (1 to 9223372036854775807)"),
    ],
)
async def test_a_dependency_that_cannot_hold_is_refused(
    stack_warm: Stack, dependency: str, message: str
) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        with pytest.raises(InvalidRequestError) as refused:
            await farm.submit_jobs([{"name": "x", "dependency": dependency}])
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details, refused.value.details


async def test_a_policy_without_unblock_still_lets_dependencies_release_jobs(
    tmp_path: Path,
) -> None:
    # Before, the releases ran under 'ops' and were FAILED ('qb.unblock is not allowed by
    # the sandbox policy 'ops' ...'): B and C's frames stayed blocked for ever.
    ops = {"verbs": ["kill"], "users": ["lead"]}
    async with (
        running_stack(stack_settings(tmp_path / "data", policies={"ops": ops})) as stack,
        FarmClient(stack.channel) as farm,
    ):
        (first,) = (await farm.submit_jobs([{"name": "A", "user": "lead", "agenda": ["1"]}])).jobs
        waiting: list[dict[str, Any]] = [
            {"name": "B", "user": "lead", "waitfor": first.id},
            {
                "name": "C",
                "user": "lead",
                "agenda": ["1"],
                "dependency": f"link-done-work-{first.id}",
            },
            # Its own unblock, of another form, is still the policy's to refuse.
            {
                "name": "D",
                "user": "lead",
                "status": "blocked",
                "callbacks": [{"triggers": "done-job-self", "code": "unblock-self"}],
            },
        ]
        b, c, d = (job.id for job in (await farm.submit_jobs(waiting)).jobs)
        await farm.change_work(job_id=first.id, work=["1"], change="complete")
        await farm.change_job(job_id=d, verb="kill")
        await stack.settle()

        assert statuses(await farm.get_job(b))[0] == "pending"
        assert statuses(await farm.get_job(c))[1] == {"1": "pending"}
        history = stack.running.recorder.history
        assert {r.policy for job_id in (b, c) for r in history.list_runs(job_id=job_id)} == {"ops"}
        (refused,) = history.list_runs(job_id=d)
        assert "policies.ops.verbs" in str(history.get(refused.invocation_id))
