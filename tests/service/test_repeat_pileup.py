"""A repeat whose callback is slower than its interval runs once at a time (probe 92).

Each tick used to add a firing: with a 1 s repeat and a slower callback, runs of the same
callback overlapped on every slot, the queue grew without bound, and every other job's
callbacks waited behind the backlog. Now a tick while the last one's firing is queued or
running is skipped, and counted.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.service

QUBE_EPOCH = 946702800


async def test_a_slow_repeat_neither_overlaps_nor_piles_up(stack_warm: Stack) -> None:
    client = stack_warm.client
    start = int(time.time()) - QUBE_EPOCH
    await client.register_job(
        {
            "id": 501,
            "user": "u",
            "callbacks": [
                {
                    "triggers": f"dummy-repeat-self-{start}-1",
                    "language": "python",
                    "code": "import time; time.sleep(2.5)",
                }
            ],
        }
    )
    await client.register_job(
        {
            "id": 502,
            "user": "u",
            "callbacks": [
                {"triggers": "complete-job-self", "language": "python", "code": "print('done')"}
            ],
        }
    )
    most_queued = most_running = 0
    deadline = time.monotonic() + 6.0
    while time.monotonic() < deadline:
        metrics = await client.get_metrics()
        most_queued = max(most_queued, metrics.firings_queued)
        most_running = max(most_running, metrics.active_children)
        await asyncio.sleep(0.2)
    assert (most_queued, most_running) == (1, 1)

    began = time.monotonic()
    answer = await client.publish_event(
        name="complete", type="job", job_id=502, wait=True, timeout=30
    )
    assert [f.callback_id for f in answer.fired] == [1]
    assert time.monotonic() - began < 2.0  # behind at most the one run of the repeat

    metrics = await client.get_metrics()
    assert metrics.repeat_ticks_skipped >= 3
    await client.publish_event(name="removed", type="job", job_id=501)
