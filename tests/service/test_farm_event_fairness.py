"""The embedded farm forwards each job's events in order, and no job's backlog holds another's back.

A callback looping ``qb.workblock``/``qb.workunblock`` over its own 100,000-frame job
made 100,000 events a call; the forwarder sent them strictly oldest first across all
jobs, so every other job's dependency callbacks waited behind the flood (50 s per 20 s
of it, probe 68). The bound here is in events, read from the order the trigger engine
applied them in, so it does not depend on how fast this machine is.
"""

from __future__ import annotations

from typing import Any

import pytest

from executor.triggers.event_ids import key as id_key
from supervisor_client import FarmClient
from supervisor_client.reference.forwarder import READ_BATCH
from tests.conftest import Stack
from tests.helpers.trigger_rows import seen_in_order

pytestmark = pytest.mark.service

FLOOD_FRAMES = [str(n) for n in range(1, 2501)]
# Each round blocks and unblocks every frame: a ``blocked`` event per frame (Qube has no
# ``pending`` event), 7,500 events in all, 15 batches.
FLOOD_ROUNDS = 3


def jobs() -> list[dict[str, Any]]:
    """A big job to flood, and depB, whose callback waits for depA's frame 1."""
    return [
        {"name": "big", "label": "big", "user": "alice", "agenda": FLOOD_FRAMES},
        {"name": "depA", "label": "depA", "user": "bob", "agenda": ["1"]},
        {
            "name": "depB",
            "label": "depB",
            "user": "bob",
            "agenda": ["1"],
            "callbacks": [
                {
                    "triggers": "complete-work-depA-1",
                    "language": "python",
                    "code": "print('dependency met')",
                }
            ],
        },
    ]


async def test_a_flooded_job_holds_another_jobs_event_back_by_one_batch_at_most(
    stack_warm: Stack,
) -> None:
    sup = stack_warm.supervisor
    async with FarmClient(stack_warm.channel) as farm:
        big, dep_a, dep_b = (job.id for job in (await farm.submit_jobs(jobs())).jobs)
        await stack_warm.settle()

        # All committed before the forwarder runs again (nothing here awaits): the whole
        # flood is older than depA's complete.
        for _ in range(FLOOD_ROUNDS):
            sup.work_action("block", big, FLOOD_FRAMES, "alice")
            sup.work_action("unblock", big, FLOOD_FRAMES, "alice")
        sup.start_work(dep_a, "1")
        sup.complete_work(dep_a, "1")
        waiting = sup.unsent_events(limit=100_000)
        flood = [id_key(e.event_id) for e in waiting if e.transition.job_id == big]
        (complete,) = [
            e
            for e in waiting
            if e.transition.job_id == dep_a
            and (e.transition.name, e.transition.type) == ("complete", "work")
        ]
        assert len(flood) >= 10 * READ_BATCH
        assert complete.seq > max(e.seq for e in waiting if e.transition.job_id == big)

        await stack_warm.settle()
        applied = seen_in_order(stack_warm.running.engine.store)

        # depA's complete went within the next batch or two, with most of the flood still
        # waiting; the flood's own events kept their order.
        flooded = set(flood)
        ahead = sum(
            1
            for event_id in applied[: applied.index(id_key(complete.event_id))]
            if event_id in flooded
        )
        assert ahead <= 2 * READ_BATCH, (ahead, len(flood))
        assert [event_id for event_id in applied if event_id in flooded] == flood

        (callback,) = (await farm.get_job(dep_b)).callbacks
        assert callback.count == 1
