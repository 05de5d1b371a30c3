"""The seed's four dependency examples, end to end through the embedded supervisor and the engine.

Jobs are submitted to the embedded supervisor, which registers them and publishes its
transitions to the executor; frames are completed by hand (there are no workers); after
each step we assert exactly which work items are unblocked, negative cases included, and
what ExplainCallbacks says each frame still waits for. The frame-by-frame examples run
twice: written as the seed writes them (one callback per frame) and as one callback
with the ``{work}`` placeholder; both must behave, and explain themselves, the same.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from executor.triggers.nodes import render
from executor.triggers.parser import parse
from supervisor_client import ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
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


def per_frame(language: str, trigger: str, form: str) -> list[dict[str, Any]]:
    """The frame-by-frame callbacks, one per frame or one with the {work} placeholder.

    One per frame as the seed builds them (trigger with N, unblock that frame), or one
    with the {work} placeholder standing for each frame.
    """
    if form == "placeholder":
        return [
            {
                "triggers": trigger.replace("N", "{work}"),
                "language": language,
                "code": UNBLOCK_FRAME[language],
            }
        ]
    return [
        {
            "triggers": trigger.replace("N", frame),
            "language": language,
            "code": UNBLOCK_FRAME[language],
        }
        for frame in FRAMES
    ]


Waits = dict[str, tuple[int, str]]


async def waits(stack: Stack, job_id: int) -> Waits:
    """Per frame: (times its callback fired, what it still waits for), from ExplainCallbacks.

    With one callback per frame, callback n is frame n's; with {work}, the work items say.
    """
    reply = await stack.client.explain_callbacks(job_id)
    found: Waits = {}
    for index, explained in enumerate(reply.callbacks):
        if explained.callback.per_work_item:
            for item in explained.work_items:
                for name in item.work_names:
                    found[name] = (item.count, item.waiting.replace("{work}", name))
        else:
            found[FRAMES[index]] = (explained.callback.count, explained.waiting)
    return found


async def words(stack: Stack, job_id: int, frame: str) -> list[str]:
    """What ExplainCallbacks says, in words, that frame's callback still waits for."""
    reply = await stack.client.explain_callbacks(job_id)
    for index, explained in enumerate(reply.callbacks):
        if explained.callback.per_work_item:
            for item in explained.work_items:
                if list(item.work_names) == [frame]:
                    return list(item.waiting_for)
        elif FRAMES[index] == frame:
            return list(explained.waiting_for)
    raise AssertionError(f"no callback of job {job_id} explains frame {frame}")


def expect(trigger: str, **changed: tuple[int, str]) -> Waits:
    """Every frame fired 0 times and waiting for all of ``trigger``, but the ``changed`` ones.

    Keyword ``f2`` is frame 2.
    """
    canonical = {frame: render(parse(trigger.replace("N", frame))) for frame in FRAMES}
    return {frame: changed.get(f"f{frame}", (0, canonical[frame])) for frame in FRAMES}


def statuses(stack: Stack, job_id: int) -> dict[str, str]:
    return {w["name"]: w["status"] for w in stack.supervisor.job(job_id)["agenda"]}


async def complete(stack: Stack, job_id: int, frame: str) -> None:
    stack.supervisor.start_work(job_id, frame)
    stack.supervisor.complete_work(job_id, frame)
    await stack.settle()


@pytest.fixture(params=["python", "qube"])
def language(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["separate", "placeholder"])
def form(request: pytest.FixtureRequest) -> str:
    """How the frame-by-frame callbacks are written: one per frame, or one with {work}."""
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
    (waiting,) = (await stack.client.explain_callbacks(job_b["id"])).callbacks
    assert (waiting.waiting, list(waiting.waiting_for)) == (
        "complete-job-jobA",
        [
            f"complete-job-jobA: job {job_a['id']} 'jobA' in pgrp {job_a['pgrp']}, "
            f"job {job_a['id']} is pending"
        ],
    )

    for frame in FRAMES[:-1]:
        await complete(stack, job_a["id"], frame)
        assert stack.supervisor.job(job_b["id"])["status"] == "blocked"
        (waiting,) = (await stack.client.explain_callbacks(job_b["id"])).callbacks
        assert waiting.waiting_for[0].endswith(f"job {job_a['id']} is running")
    await complete(stack, job_a["id"], FRAMES[-1])

    assert stack.supervisor.job(job_a["id"])["status"] == "complete"
    assert stack.supervisor.job(job_b["id"])["status"] == "pending"
    (fired,) = (await stack.client.explain_callbacks(job_b["id"])).callbacks
    assert fired.callback.count == 1
    assert [entry.kind for entry in fired.journal][-1] == executor_pb2.JOURNAL_ENTRY_KIND_FIRED
    # A work item the job does not have is not "waiting": it is not there at all.
    with pytest.raises(ExecutorRpcError) as unknown:
        await stack.client.explain_callbacks(job_b["id"], work_name="99")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert f"job {job_b['id']} has no work item '99' (its agenda: " in unknown.value.details


async def test_each_frame_of_job_b_waits_for_the_same_frame_of_job_a(
    stack_warm: Stack, language: str, form: str
) -> None:
    stack = stack_warm
    trigger = "complete-work-jobA-N"
    job_a, job_b = stack.supervisor.submit(
        [
            {"name": "jobA", "label": "jobA", "user": "alice", "agenda": FRAMES},
            {
                "name": "jobB",
                "label": "jobB",
                "user": "alice",
                "agenda": blocked_agenda(),
                "callbacks": per_frame(language, trigger, form),
            },
        ]
    )
    await stack.settle()
    assert await waits(stack, job_b["id"]) == expect(trigger)

    await complete(stack, job_a["id"], "2")
    assert statuses(stack, job_b["id"]) == {"1": "blocked", "2": "pending", "3": "blocked"}
    assert await waits(stack, job_b["id"]) == expect(trigger, f2=(1, "complete-work-jobA-2"))
    await complete(stack, job_a["id"], "1")
    assert statuses(stack, job_b["id"]) == {"1": "pending", "2": "pending", "3": "blocked"}
    await complete(stack, job_a["id"], "3")
    assert statuses(stack, job_b["id"]) == {"1": "pending", "2": "pending", "3": "pending"}
    assert await waits(stack, job_b["id"]) == {
        frame: (1, f"complete-work-jobA-{frame}") for frame in FRAMES
    }


async def test_job_c_frames_wait_for_ribgen_and_render(
    stack_warm: Stack, language: str, form: str
) -> None:
    stack = stack_warm
    trigger = "complete-work-ribgen-N && complete-work-render-N"
    ribgen, render, job_c = stack.supervisor.submit(
        [
            {"name": "ribgen", "label": "ribgen", "user": "alice", "agenda": FRAMES},
            {"name": "render", "label": "render", "user": "alice", "agenda": FRAMES},
            {
                "name": "jobC",
                "label": "jobC",
                "user": "alice",
                "agenda": blocked_agenda(),
                "callbacks": per_frame(language, trigger, form),
            },
        ]
    )
    await stack.settle()
    assert await waits(stack, job_c["id"]) == expect(trigger)

    await complete(stack, ribgen["id"], "1")  # one of two done: still blocked
    assert statuses(stack, job_c["id"]) == {"1": "blocked", "2": "blocked", "3": "blocked"}
    assert await waits(stack, job_c["id"]) == expect(trigger, f1=(0, "complete-work-render-1"))
    assert await words(stack, job_c["id"], "1") == [
        f"complete-work-render-1: job {render['id']} 'render' in pgrp {render['pgrp']}, "
        "work 1 is pending"
    ]
    await complete(stack, render["id"], "2")  # the other half, but of another frame
    assert statuses(stack, job_c["id"]) == {"1": "blocked", "2": "blocked", "3": "blocked"}
    assert await waits(stack, job_c["id"]) == expect(
        trigger, f1=(0, "complete-work-render-1"), f2=(0, "complete-work-ribgen-2")
    )
    await complete(stack, render["id"], "1")  # frame 1 now has both
    assert statuses(stack, job_c["id"]) == {"1": "pending", "2": "blocked", "3": "blocked"}
    assert await waits(stack, job_c["id"]) == expect(
        trigger,
        f1=(1, "complete-work-ribgen-1 && complete-work-render-1"),
        f2=(0, "complete-work-ribgen-2"),
    )
    await complete(stack, ribgen["id"], "2")
    assert statuses(stack, job_c["id"]) == {"1": "pending", "2": "pending", "3": "blocked"}
    assert await waits(stack, job_c["id"]) == expect(
        trigger,
        f1=(1, "complete-work-ribgen-1 && complete-work-render-1"),
        f2=(1, "complete-work-ribgen-2 && complete-work-render-2"),
    )


async def test_job_d_frames_wait_for_ribgen_and_render_or_composite(
    stack_warm: Stack, language: str, form: str
) -> None:
    stack = stack_warm
    trigger = "(complete-work-ribgen-N && complete-work-render-N) || complete-work-composite-N"
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
                "callbacks": per_frame(language, trigger, form),
            },
        ]
    )
    await stack.settle()
    full = expect(trigger)
    assert await waits(stack, job_d["id"]) == full

    await complete(stack, composite["id"], "3")  # the OR branch alone is enough
    assert statuses(stack, job_d["id"]) == {"1": "blocked", "2": "blocked", "3": "pending"}
    assert await waits(stack, job_d["id"]) == expect(trigger, f3=(1, full["3"][1]))
    await complete(stack, render["id"], "1")  # half of the AND branch: still blocked
    assert statuses(stack, job_d["id"]) == {"1": "blocked", "2": "blocked", "3": "pending"}
    assert await waits(stack, job_d["id"]) == expect(
        trigger,
        f1=(0, "complete-work-ribgen-1 || complete-work-composite-1"),
        f3=(1, full["3"][1]),
    )
    await complete(stack, ribgen["id"], "1")
    assert statuses(stack, job_d["id"]) == {"1": "pending", "2": "blocked", "3": "pending"}
    await complete(stack, ribgen["id"], "2")
    assert statuses(stack, job_d["id"]) == {"1": "pending", "2": "blocked", "3": "pending"}
    assert await waits(stack, job_d["id"]) == expect(
        trigger,
        f1=(1, full["1"][1]),
        f2=(0, "complete-work-render-2 || complete-work-composite-2"),
        f3=(1, full["3"][1]),
    )
