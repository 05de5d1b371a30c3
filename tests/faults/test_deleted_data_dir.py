"""A data dir deleted under the running executor: nothing is run or applied into the lost files.

Health said NOT_SERVING and Execute was refused, but events were still answered OK and
their callbacks ran, their firings and results written into files nothing reads again,
lost at the stop, the publisher given no reason to resend (probe 141).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from executor import storage_health
from supervisor_client import RetryableError
from tests.conftest import running_stack, stack_settings
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults

REFUSED = "the executor cannot record results now, so it runs nothing: cannot write "
DELETED = "the database was deleted while the executor ran"


async def test_events_registrations_and_fired_runs_are_refused_once_the_data_dir_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(storage_health, "WATCH_INTERVAL_S", 0.05)
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    async with running_stack(stack_settings(data, max_concurrent=1)) as stack:
        client = stack.client
        slow = "import time; time.sleep(1.5)"
        await client.register_job(
            {
                "id": 5,
                "name": "j",
                "user": "root",
                "callbacks": [
                    {"triggers": "complete-job-self", "language": "python", "code": slow}
                ],
            }
        )
        (fired,) = (await client.publish_event(name="complete", type="job", job_id=5)).fired
        await client.publish_event(name="complete", type="job", job_id=5, event_id="second")
        # The first firing runs; the second waits for the one slot, past the deletion.
        # Deleted once the first has started, not after a fixed 0.5 s: a loaded machine
        # could reach its slot's check later, and it was then refused as the second is.
        assert await eventually(lambda: stack.running.dispatcher.running == 1, 20)
        shutil.rmtree(data)

        async def not_serving() -> bool:
            return await client.health() == "NOT_SERVING"

        assert await eventually(not_serving, 5)
        await asyncio.sleep(2.0)  # the first run ends; the second would start

        refusals = [
            client.publish_event(name="complete", type="job", job_id=5, event_id="third"),
            client.publish_events([{"name": "complete", "type": "job", "job_id": 5}]),
            client.register_job({"id": 6, "name": "k", "user": "root"}),
            client.execute_callback(language="python", code="pass", job={"id": 5}),
        ]
        for call in refusals:
            with pytest.raises(RetryableError) as refused:
                await call
            assert refused.value.details.startswith(REFUSED), refused.value.details
            assert DELETED in refused.value.details

    second_runs = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "refused (the executor cannot record" in r.getMessage()
    ]
    assert second_runs, "the second firing waited in its queue, not run into the lost files"
    ran = [r for r in caplog.records if r.getMessage().startswith("callback ran: job=5")]
    assert len(ran) == 1, "only the first firing ran"
    assert fired.invocation_id not in " ".join(second_runs)
