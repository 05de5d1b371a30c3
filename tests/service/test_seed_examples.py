"""The seed's four dependency examples, end to end through the embedded supervisor and the engine.

Jobs are submitted to the embedded supervisor, which registers them and publishes its
transitions to the executor; frames are completed by hand (there are no workers); after
each step we assert exactly which work items are unblocked, negative cases included.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.service

FRAMES = ["1", "2", "3"]
UNBLOCK_JOB = {"python": "qb.unblock(qb.jobid())", "qube": "unblock-self"}
UNBLOCK_FRAME = {
    "python": "qb.workunblock('%d:%s' % (qb.jobid(), qb.workid()))",
    "qube": "unblock-work-self",
}


def blocked_agenda() -> list[dict[str, str]]:
    return [{"name": frame, "status": "blocked"} for frame in FRAMES]


def per_frame(language: str, trigger: str) -> list[dict[str, Any]]:
    """One callback per frame, as the seed builds them: trigger with N, unblock that frame."""
    return [
        {
            "triggers": trigger.replace("N", frame),
            "language": language,
            "code": UNBLOCK_FRAME[language],
        }
        for frame in FRAMES
    ]


def statuses(stack: Stack, job_id: int) -> dict[str, str]:
    return {w["name"]: w["status"] for w in stack.supervisor.job(job_id)["agenda"]}


async def complete(stack: Stack, job_id: int, frame: str) -> None:
    stack.supervisor.start_work(job_id, frame)
    stack.supervisor.complete_work(job_id, frame)
    await stack.settle()


@pytest.fixture(params=["python", "qube"])
def language(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_job_b_waits_for_all_of_job_a(stack_warm: Stack, language: str) -> None:
    stack = stack_warm
    job_a, job_b = stack.supervisor.submit(
        [
            {"name": "jobA", "label": "jobA", "user": "alice", "agenda": FRAMES},
            {
                "name": "jobB",
                "label": "jobB",
                "user": "alice",
                "status": "blocked",
                "agenda": FRAMES,
                "callbacks": [
                    {
                        "triggers": "complete-job-jobA",
                        "language": language,
                        "code": UNBLOCK_JOB[language],
                    }
                ],
            },
        ]
    )
    await stack.settle()

    for frame in FRAMES[:-1]:
        await complete(stack, job_a["id"], frame)
        assert stack.supervisor.job(job_b["id"])["status"] == "blocked"
    await complete(stack, job_a["id"], FRAMES[-1])

    assert stack.supervisor.job(job_a["id"])["status"] == "complete"
    assert stack.supervisor.job(job_b["id"])["status"] == "pending"


async def test_each_frame_of_job_b_waits_for_the_same_frame_of_job_a(
    stack_warm: Stack, language: str
) -> None:
    stack = stack_warm
    job_a, job_b = stack.supervisor.submit(
        [
            {"name": "jobA", "label": "jobA", "user": "alice", "agenda": FRAMES},
            {
                "name": "jobB",
                "label": "jobB",
                "user": "alice",
                "agenda": blocked_agenda(),
                "callbacks": per_frame(language, "complete-work-jobA-N"),
            },
        ]
    )
    await stack.settle()

    await complete(stack, job_a["id"], "2")
    assert statuses(stack, job_b["id"]) == {"1": "blocked", "2": "pending", "3": "blocked"}
    await complete(stack, job_a["id"], "1")
    assert statuses(stack, job_b["id"]) == {"1": "pending", "2": "pending", "3": "blocked"}
    await complete(stack, job_a["id"], "3")
    assert statuses(stack, job_b["id"]) == {"1": "pending", "2": "pending", "3": "pending"}


async def test_job_c_frames_wait_for_ribgen_and_render(stack_warm: Stack, language: str) -> None:
    stack = stack_warm
    ribgen, render, job_c = stack.supervisor.submit(
        [
            {"name": "ribgen", "label": "ribgen", "user": "alice", "agenda": FRAMES},
            {"name": "render", "label": "render", "user": "alice", "agenda": FRAMES},
            {
                "name": "jobC",
                "label": "jobC",
                "user": "alice",
                "agenda": blocked_agenda(),
                "callbacks": per_frame(
                    language, "complete-work-ribgen-N && complete-work-render-N"
                ),
            },
        ]
    )
    await stack.settle()

    await complete(stack, ribgen["id"], "1")  # one of two done: still blocked
    assert statuses(stack, job_c["id"]) == {"1": "blocked", "2": "blocked", "3": "blocked"}
    await complete(stack, render["id"], "2")  # the other half, but of another frame
    assert statuses(stack, job_c["id"]) == {"1": "blocked", "2": "blocked", "3": "blocked"}
    await complete(stack, render["id"], "1")  # frame 1 now has both
    assert statuses(stack, job_c["id"]) == {"1": "pending", "2": "blocked", "3": "blocked"}
    await complete(stack, ribgen["id"], "2")
    assert statuses(stack, job_c["id"]) == {"1": "pending", "2": "pending", "3": "blocked"}


async def test_job_d_frames_wait_for_ribgen_and_render_or_composite(
    stack_warm: Stack, language: str
) -> None:
    stack = stack_warm
    ribgen, render, composite, job_d = stack.supervisor.submit(
        [
            {"name": "ribgen", "label": "ribgen", "user": "alice", "agenda": FRAMES},
            {"name": "render", "label": "render", "user": "alice", "agenda": FRAMES},
            {"name": "composite", "label": "composite", "user": "alice", "agenda": FRAMES},
            {
                "name": "jobD",
                "label": "jobD",
                "user": "alice",
                "agenda": blocked_agenda(),
                "callbacks": per_frame(
                    language,
                    "(complete-work-ribgen-N && complete-work-render-N) || complete-work-composite-N",
                ),
            },
        ]
    )
    await stack.settle()

    await complete(stack, composite["id"], "3")  # the OR branch alone is enough
    assert statuses(stack, job_d["id"]) == {"1": "blocked", "2": "blocked", "3": "pending"}
    await complete(stack, render["id"], "1")  # half of the AND branch: still blocked
    assert statuses(stack, job_d["id"]) == {"1": "blocked", "2": "blocked", "3": "pending"}
    await complete(stack, ribgen["id"], "1")
    assert statuses(stack, job_d["id"]) == {"1": "pending", "2": "blocked", "3": "pending"}
    await complete(stack, ribgen["id"], "2")
    assert statuses(stack, job_d["id"]) == {"1": "pending", "2": "blocked", "3": "pending"}
