"""A stop's Execute calls: runs in progress end KILLED and recorded; queued ones are resendable.

Probe 95: a callback still waiting for a slot when its executor was stopped was answered
KILLED, recorded and reported, so a fleet caller (who resends only RetryableError) lost
it in every rolling restart, though it never ran.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from executor import server
from supervisor_client import ExecutorClient, RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import stack_settings
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

SLOW = "import time\ntime.sleep(60)"
QUICK = "print('ran')"


async def test_a_stop_answers_queued_calls_unavailable_unrecorded_and_kills_running_ones(
    tmp_path: Path,
) -> None:
    settings = stack_settings(tmp_path / "data", max_concurrent=2, max_queue=8)
    running = await server.start(settings)
    stopped = False
    client = ExecutorClient(f"127.0.0.1:{running.port}")
    try:
        busy = {
            f"busy-{n}": asyncio.create_task(
                client.execute_callback(
                    language="python", code=SLOW, job={"id": 1}, invocation_id=f"busy-{n}"
                )
            )
            for n in range(2)
        }
        # Started, not just in a slot: a child not yet given its callback is not a run either.
        assert await eventually(lambda: running.dispatcher.running == 2, timeout_s=20)
        queued = {
            f"queued-{n}": asyncio.create_task(
                client.execute_callback(
                    language="python", code=QUICK, job={"id": 1}, invocation_id=f"queued-{n}"
                )
            )
            for n in range(3)
        }
        assert await eventually(lambda: running.dispatcher.waiting == 3, timeout_s=20)

        await running.stop()
        stopped = True

        for invocation_id, call in busy.items():
            answer = await call
            assert answer.outcome == executor_pb2.Outcome.OUTCOME_KILLED, invocation_id
            assert answer.failure.message == "the executor is shutting down"
        for invocation_id, call in queued.items():
            with pytest.raises(RetryableError) as refused:
                await call
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE, invocation_id
            assert "did not start" in refused.value.details
            assert "may be sent again" in refused.value.details
    finally:
        await client.close()
        if not stopped:
            await running.stop()

    # The history (the same data dir, started again) has the runs that were killed only.
    again = await server.start(settings)
    client = ExecutorClient(f"127.0.0.1:{again.port}")
    try:
        listed = await client.list_runs()
        assert {run.invocation_id: run.outcome for run in listed.runs} == {
            "busy-0": executor_pb2.Outcome.OUTCOME_KILLED,
            "busy-1": executor_pb2.Outcome.OUTCOME_KILLED,
        }
        # A resend under the same invocation id runs as a first attempt would.
        for invocation_id in queued:
            answer = await client.execute_callback(
                language="python", code=QUICK, job={"id": 1}, invocation_id=invocation_id
            )
            assert answer.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED, invocation_id
            assert answer.stdout == "ran\n"
    finally:
        await client.close()
        await again.stop()


async def test_a_stop_logs_how_many_fired_callbacks_stay_queued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Probe 100: the stop's line counted only the fired runs in a slot ("1 ... kept")
    # while three stayed queued, the others never having reached a slot.
    settings = stack_settings(tmp_path / "data", max_concurrent=1, max_queue=8)
    running = await server.start(settings)
    client = ExecutorClient(f"127.0.0.1:{running.port}")
    try:
        for job_id in (501, 502, 503):
            await client.register_job(
                {
                    "id": job_id,
                    "name": "slow",
                    "user": "root",
                    "callbacks": [
                        {"triggers": "complete-job-self", "language": "python", "code": SLOW}
                    ],
                }
            )
            await client.publish_event(name="complete", type="job", job_id=job_id)
        assert await eventually(lambda: running.dispatcher.running == 1, timeout_s=20)
    finally:
        await client.close()
        with caplog.at_level("INFO"):
            await running.stop()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopping: ")]
    assert (
        "stopping: 3 fired callbacks decided and not run to their end stay queued in the "
        "trigger store (run at the next start, or by another replica of a fleet)"
    ) in said, said
    assert (
        "stopping: killing 1 callback in progress (KILLED, recorded); 0 Execute calls not "
        "started answered UNAVAILABLE (not recorded: to be sent again)"
    ) in said, said


async def test_a_stop_logs_no_warning_for_the_fired_callbacks_it_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Probe 147: each fired run the stop killed, or kept waiting for a slot, logged
    # "firing ... refused (the executor is shutting down); retrying in 0.09s" at WARNING,
    # at every routine restart: nothing is retried, the firings run at the next start.
    settings = stack_settings(tmp_path / "data", max_concurrent=2, max_queue=8)
    running = await server.start(settings)
    client = ExecutorClient(f"127.0.0.1:{running.port}")
    try:
        busy = asyncio.create_task(
            client.execute_callback(
                language="python", code=SLOW, job={"id": 1}, invocation_id="busy"
            )
        )
        assert await eventually(lambda: running.dispatcher.running == 1, timeout_s=20)
        for job_id in (601, 602):
            await client.register_job(
                {
                    "id": job_id,
                    "name": "slow",
                    "user": "root",
                    "callbacks": [
                        {"triggers": "complete-job-self", "language": "python", "code": SLOW}
                    ],
                }
            )
            await client.publish_event(name="complete", type="job", job_id=job_id)
        # One fired run in the free slot, the other waiting for one.
        assert await eventually(
            lambda: running.dispatcher.running == 2 and running.dispatcher.waiting == 1,
            timeout_s=20,
        )
        with caplog.at_level("DEBUG"):
            await running.stop()
        await busy
    finally:
        await client.close()
    loud = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING
    ]
    assert loud == [], loud
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopping: ")]
    assert (
        "stopping: 2 fired callbacks decided and not run to their end stay queued in the "
        "trigger store (run at the next start, or by another replica of a fleet)"
    ) in said, said
    # Each says why at DEBUG, once: none is tried again in this process.
    kept = [
        r.getMessage()
        for r in caplog.records
        if r.name == "executor.triggers.firings"
        and "stopped by the executor's stop" in r.getMessage()
    ]
    assert len(kept) == 2, kept
    assert all(line.endswith("it stays queued and runs at the next start") for line in kept)
