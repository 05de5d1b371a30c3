"""A stop while publishers wait for an event's firings answers each of them in its own words.

Probe 180: the publisher whose event was applied was told the firing runs at the
restart; resends of the same event_id, waiting for the firings the first one decided,
were cut by the stop's grace with gRPC's bare ``Cancelling all calls``, which says
neither what became of the firing nor what to do.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from executor.triggers.firings import STOPPED
from executor.triggers.results_of_record import STOPPED_WHILE_WAITING
from supervisor_client import ExecutorClient, RetryableError
from tests.conftest import stack_settings
from tests.faults.helpers import executor
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults


async def test_resends_waiting_at_a_stop_are_told_to_publish_again(tmp_path: Path) -> None:
    slow = {
        "triggers": "complete-job-self",
        "language": "python",
        "code": "import time\ntime.sleep(60)",
    }
    async with (
        executor(stack_settings(tmp_path / "data")) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        await client.register_job({"id": 31, "name": "slow", "user": "alice", "callbacks": [slow]})

        def publish() -> asyncio.Task[object]:
            return asyncio.ensure_future(
                client.publish_event(
                    name="complete", type="job", job_id=31, event_id="e-31", wait=True
                )
            )

        first = publish()

        async def running_its_firing() -> bool:
            metrics = await client.get_metrics()
            return metrics.callbacks_fired == 1 and metrics.active_children == 1

        assert await eventually(running_its_firing)  # applied: the next two are resends
        resends = [publish() for _ in range(2)]
        await asyncio.sleep(1.5)  # each waiting for the firing (a look every 0.5 s)
        stopped_at = time.monotonic()
        stop = asyncio.ensure_future(running.stop())
        answers = await asyncio.gather(first, *resends, return_exceptions=True)
        answered_in = time.monotonic() - stopped_at
        await stop

    assert all(isinstance(answer, RetryableError) for answer in answers), answers
    details = [answer.details for answer in answers if isinstance(answer, RetryableError)]
    assert details == [STOPPED, STOPPED_WHILE_WAITING, STOPPED_WHILE_WAITING]
    assert answered_in < 5.0  # within the stop's grace, not cut by it
