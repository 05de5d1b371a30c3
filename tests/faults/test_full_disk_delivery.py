"""A full data disk after the callbacks ran: nothing is sent or run twice while the executor runs.

The outbox keeps what the supervisor acknowledged but could not be marked delivered in
memory, and sends it no more; a fired callback whose result cannot be recorded waits for
the storage instead of running again (SQLite: one executor, nobody else to take over);
and a stop does not wait for the storage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import pytest

from executor import server
from executor.runs import recorder
from executor.runs.outbox import Backoff, Outbox
from executor.runs.outbox_transport import DeliveryError
from executor.storage import StorageHealth
from supervisor_client import ExecutorClient
from tests.conftest import stack_settings
from tests.faults.helpers import executor, fill, small_tmpfs, supervisor_endpoint
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults


class CountingReceiver:
    """Takes every result (batches too), counting how often each was sent."""

    def __init__(self) -> None:
        self.down = True
        self.sent: Counter[str] = Counter()

    async def deliver(self, key: str, payload: bytes) -> bool:
        return (await self.deliver_many([(key, payload)]))[0]

    async def deliver_many(self, messages: list[tuple[str, bytes]]) -> list[bool]:
        await asyncio.sleep(0)
        if self.down:
            raise DeliveryError("UNAVAILABLE: down", retryable=True, unreachable=True)
        duplicates = [self.sent[key] > 0 for key, _ in messages]
        self.sent.update(key for key, _ in messages)
        return duplicates


@pytest.mark.parametrize("batch_size", [64, 1], ids=["batches", "one by one"])
async def test_results_acknowledged_while_the_disk_is_full_are_sent_once(
    tmp_path: Path, batch_size: int
) -> None:
    with small_tmpfs(tmp_path / "disk", 4 << 20) as disk:
        receiver = CountingReceiver()
        health = StorageHealth(disk)
        outbox = Outbox(
            disk / "outbox.db",
            receiver,
            backoff=Backoff(first_s=0.01, cap_s=0.05),
            batch_size=batch_size,
            health=health,
        )
        keys = [f"result-{n:02}" for n in range(20)]
        for key in keys:
            outbox.put(key, b"x" * 200)
        outbox.start()
        filler = fill(disk)
        receiver.down = False

        assert await eventually(lambda: set(receiver.sent) == set(keys), timeout_s=10)
        await asyncio.sleep(1.0)  # many backoffs of the delivery task, which fail to mark

        assert health.problem, "the marks did fail"
        assert receiver.sent == Counter(dict.fromkeys(keys, 1))
        assert outbox.pending() == 0, "nothing waits to be sent"
        filler.unlink()
        assert await eventually(lambda: outbox.stats().delivered == len(keys), timeout_s=10)
        assert receiver.sent == Counter(dict.fromkeys(keys, 1))
        await outbox.close()


# -- a fired callback whose result meets a full disk ------------------------------------

SLOW_CALLBACK = "import time\ntime.sleep(1.0)\nprint('ran')\n"


def _runs_of(caplog: pytest.LogCaptureFixture, job_id: int) -> int:
    return sum(
        1
        for r in caplog.records
        if r.getMessage().startswith("callback ran:") and f"job={job_id} " in r.getMessage()
    )


async def _fired_while_the_disk_fills(
    client: ExecutorClient, disk: Path, caplog: pytest.LogCaptureFixture, job_id: int
) -> Path:
    """Fire a slow callback, fill the disk while it runs; the filler once it has ended."""
    job = {
        "id": job_id,
        "name": "full-disk",
        "callbacks": [
            {"triggers": "complete-job-self", "language": "python", "code": SLOW_CALLBACK}
        ],
    }
    await client.register_job(job)
    await client.publish_event(name="complete", type="job", job_id=job_id)
    filler = fill(disk)
    assert await eventually(lambda: _runs_of(caplog, job_id) == 1, timeout_s=20)
    assert await eventually(
        lambda: any("not recorded yet" in r.getMessage() for r in caplog.records), timeout_s=5
    )
    return filler


async def test_a_fired_result_the_disk_cannot_take_waits_and_the_callback_runs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fleet's bound, shortened: SQLite must not use it (it gave the firing back to run again).
    monkeypatch.setattr(recorder, "FIRED_RESULT_WAIT_S", 0.5)
    caplog.set_level(logging.INFO)
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        with small_tmpfs(tmp_path / "disk", 16 << 20) as disk:
            settings = stack_settings(disk / "data", supervisor=endpoint.address)
            async with (
                executor(settings) as running,
                ExecutorClient(f"127.0.0.1:{running.port}") as client,
            ):
                filler = await _fired_while_the_disk_fills(client, disk, caplog, 41)
                await asyncio.sleep(3.5)  # the bound, a refusal's backoff, a second run
                assert _runs_of(caplog, 41) == 1, "run again while the disk was full"

                filler.unlink()
                assert await eventually(lambda: len(endpoint.servicer.applied) == 1, 15)
                assert _runs_of(caplog, 41) == 1
                assert set(endpoint.servicer.applied.values()) == {1}


async def test_a_stop_with_the_disk_full_does_not_wait_and_the_firing_runs_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        with small_tmpfs(tmp_path / "disk", 16 << 20) as disk:
            settings = stack_settings(disk / "data", supervisor=endpoint.address)
            running = await server.start(settings)
            try:
                async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
                    filler = await _fired_while_the_disk_fills(client, disk, caplog, 42)
            finally:
                started = time.monotonic()
                await running.stop()
                stop_s = time.monotonic() - started
            assert stop_s < 8.0, f"the stop took {stop_s:.1f} s"
            assert endpoint.servicer.applied == {}

            filler.unlink()
            async with executor(settings):
                assert await eventually(lambda: len(endpoint.servicer.applied) == 1, 30)
            assert _runs_of(caplog, 42) == 2, "not recorded: run again at the next start"
            assert set(endpoint.servicer.applied.values()) == {1}
