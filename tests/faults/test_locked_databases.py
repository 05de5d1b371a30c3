"""A database another process holds locked: the storage refusing writes, not a bug.

A backup tool or an admin's ``sqlite3`` holding ``BEGIN EXCLUSIVE`` on one of the
executor's databases, against a real executor: a write that meets the lock is answered
UNAVAILABLE at once (a quarter of a second, not SQLite's 5 s busy timeout on the event
loop), health says NOT_SERVING while the lock holds, nothing runs meanwhile, and what ran
is recorded and reported once the lock is gone. The event loop is never stalled for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import grpc
import pytest

from supervisor_client import ExecutorClient, FarmClient, RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import stack_settings
from tests.faults.helpers import executor, locked, supervisor_endpoint
from tests.helpers.health import NOT_SERVING, SERVING, health_status, health_updates
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.faults

# Well under SQLite's 5 s busy timeout, well over the executor's 0.25 s on the loop.
PROMPTLY_S: Final = 2.0
# Qube time: Unix time less this.
QUBE_EPOCH: Final = 946702800


async def _is(channel: grpc.aio.Channel, status: int) -> bool:
    return await health_status(channel) == status


async def _slowest_health_check(channel: grpc.aio.Channel, until: asyncio.Task[object]) -> float:
    """The longest a health check took while ``until`` ran (the event loop's stalls)."""
    slowest = 0.0
    while not until.done():
        started = time.monotonic()
        await health_status(channel)
        slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(0.02)
    return slowest


async def test_a_locked_outbox_refuses_at_once_runs_nothing_and_reports_what_ran_after(
    tmp_path: Path,
) -> None:
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
        async with executor(settings) as running:
            address = f"127.0.0.1:{running.port}"
            async with ExecutorClient(address) as client:
                channel = grpc.aio.insecure_channel(address)

                async def run(invocation_id: str) -> None:
                    response = await client.execute_callback(
                        language="python",
                        code=f"print('{invocation_id}')",
                        job={"id": 7},
                        invocation_id=invocation_id,
                    )
                    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED

                await run("before")
                # Its delivery written first: meeting the lock, it made the storage degraded
                # before the next run came, which was then refused at the door, not run.
                assert await outbox_drained(client)
                with locked(settings.data_dir / "outbox.db"):
                    started = time.monotonic()
                    meeting = asyncio.ensure_future(run("ran-locked"))
                    slowest = await _slowest_health_check(channel, meeting)
                    with pytest.raises(RetryableError) as refused:
                        await meeting
                    assert time.monotonic() - started < PROMPTLY_S
                    assert slowest < 1.0, f"a health check waited {slowest:.2f}s for the lock"
                    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
                    details = refused.value.details
                    assert "the callback ran, but its result could not be recorded" in details
                    assert "outbox.db: database is locked" in details, details
                    assert await _is(channel, NOT_SERVING)
                    # Nothing runs while the lock holds: no effect happens unrecorded.
                    requests = len(endpoint.servicer.action_requests)
                    with pytest.raises(RetryableError) as not_run:
                        await client.execute_callback(
                            language="python", code="qb.block(7)", job={"id": 7}
                        )
                    assert "cannot record results now, so it runs nothing" in not_run.value.details
                    assert len(endpoint.servicer.action_requests) == requests
                    assert "database is locked" in (await client.get_metrics()).storage_problem

                assert await eventually(lambda: _is(channel, SERVING), timeout_s=10)
                await run("after")
                assert await outbox_drained(client)
                # The run the lock refused is reported too, once: its callback ran.
                endpoint.assert_exactly_once({"before", "ran-locked", "after"})
                await channel.close()


async def test_a_burst_with_big_results_never_meets_a_lock_of_the_executors_own(
    tmp_path: Path,
) -> None:
    # The loop's short wait for a lock must not fail a commit for the executor's own
    # writers: checkpoints by log size (~1 MB a result), delivery's marks, the history.
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address, max_concurrent=4)
        async with executor(settings) as running:
            address = f"127.0.0.1:{running.port}"
            async with ExecutorClient(address) as client:
                channel = grpc.aio.insecure_channel(address)
                statuses: list[int] = []

                async def watch() -> None:
                    async for update in health_updates(channel):
                        statuses.append(int(update.status))  # noqa: PERF401 - until cancelled

                watching = asyncio.ensure_future(watch())
                gate = asyncio.Semaphore(12)
                ids = [f"burst-{n}" for n in range(96)]

                async def run(invocation_id: str) -> None:
                    async with gate:
                        response = await client.execute_callback(
                            language="python",
                            code="import sys\nsys.stdout.write('x' * (1 << 20))\n",
                            job={"id": 8},
                            invocation_id=invocation_id,
                        )
                    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED

                await asyncio.gather(*(run(i) for i in ids))
                assert await outbox_drained(client)
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
                assert statuses and set(statuses) == {SERVING}, statuses
                assert (await client.get_metrics()).storage_problem == ""
                endpoint.assert_exactly_once(set(ids))
                await channel.close()


async def test_a_locked_history_stops_nothing_and_gets_its_runs_after(tmp_path: Path) -> None:
    # The runs wait in memory; their results are recorded in the outbox meanwhile.
    async with executor(stack_settings(tmp_path / "data")) as running:
        address = f"127.0.0.1:{running.port}"
        async with ExecutorClient(address) as client:
            channel = grpc.aio.insecure_channel(address)
            with locked(tmp_path / "data" / "runs.db"):
                response = await client.execute_callback(
                    language="python", code="print('hi')", job={"id": 9}, invocation_id="h-1"
                )
                assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
                await asyncio.sleep(0.5)  # the bookkeeping thread meets the lock meanwhile
                assert await _is(channel, SERVING)
            runs = (await client.list_runs(job_id=9)).runs
            assert [run.invocation_id for run in runs] == ["h-1"]
            await channel.close()


async def test_reads_of_a_locked_history_never_stall_the_event_loop(tmp_path: Path) -> None:
    # A run waits in the bookkeeping thread for runs.db; GetMetrics, a /metrics scrape,
    # ListRuns and GetRun meanwhile wait for it (if at all) off the loop: health checks
    # every 50 ms are each answered at once, and the metrics count the waiting run.
    settings = stack_settings(tmp_path / "data", http_bind="127.0.0.1:0")
    async with executor(settings) as running:
        address = f"127.0.0.1:{running.port}"
        scrape = f"http://127.0.0.1:{running.http_port}/metrics"
        async with ExecutorClient(address) as client:
            channel = grpc.aio.insecure_channel(address)
            await client.execute_callback(
                language="python", code="print(1)", job={"id": 10}, invocation_id="l-0"
            )
            checks: list[float] = []

            async def check_health(until: asyncio.Event) -> None:
                while not until.is_set():
                    started = time.monotonic()
                    try:
                        await health_status(channel)
                    except grpc.aio.AioRpcError:
                        checks.append(math.inf)
                    else:
                        checks.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)

            def scraped() -> str:
                with urllib.request.urlopen(scrape, timeout=10) as answer:
                    return str(answer.read().decode())

            done = asyncio.Event()
            checking = asyncio.ensure_future(check_health(done))
            with locked(settings.data_dir / "runs.db"):
                await client.execute_callback(
                    language="python", code="print(2)", job={"id": 10}, invocation_id="l-1"
                )
                await asyncio.sleep(0.3)  # the bookkeeping thread waits for the lock now
                listing = asyncio.ensure_future(client.list_runs(job_id=10))
                getting = asyncio.ensure_future(client.get_run("l-1"))
                started = time.monotonic()
                metrics = await client.get_metrics()
                assert time.monotonic() - started < 1.0
                assert metrics.runs_by_outcome["SUCCEEDED"] == 2, "the waiting run is counted"
                started = time.monotonic()
                text = await asyncio.to_thread(scraped)
                assert time.monotonic() - started < 1.0
                assert (
                    'cbexec_runs_total{language="python",outcome="SUCCEEDED",source="execute"} 2.0'
                    in text
                )
                await asyncio.sleep(1.5)
            # The history's readers got their answer once the writer could write.
            assert [r.invocation_id for r in (await listing).runs] == ["l-1", "l-0"]
            assert (await getting).invocation_id == "l-1"
            done.set()
            await checking
            assert checks and max(checks) < 1.0, f"a health check took {max(checks):.2f}s"
            await channel.close()


async def test_a_locked_trigger_store_answers_unavailable_and_applies_nothing(
    tmp_path: Path,
) -> None:
    settings = stack_settings(tmp_path / "data")
    async with executor(settings) as running:
        address = f"127.0.0.1:{running.port}"
        async with ExecutorClient(address) as client:
            channel = grpc.aio.insecure_channel(address)
            await client.register_job(
                {
                    "id": 21,
                    "name": "locked",
                    "callbacks": [
                        {
                            "triggers": "complete-work-self-*",
                            "language": "python",
                            "code": "print('frame done')",
                        }
                    ],
                }
            )
            event: dict[str, Any] = {"name": "complete", "type": "work", "job_id": 21, "wait": True}
            with locked(settings.data_dir / "triggers.db"):
                started = time.monotonic()
                with pytest.raises(RetryableError) as refused:
                    await client.publish_event(**event, work_name="1", event_id="w1")
                assert time.monotonic() - started < PROMPTLY_S
                assert refused.value.code == grpc.StatusCode.UNAVAILABLE
                assert "triggers.db: database is locked" in refused.value.details
                assert await _is(channel, NOT_SERVING)
                with pytest.raises(RetryableError) as not_registered:
                    await client.register_job({"id": 22, "name": "later"})
                assert "triggers.db: database is locked" in not_registered.value.details
            assert await eventually(lambda: _is(channel, SERVING), timeout_s=10)
            listed = await client.list_registered_jobs()
            assert [job.id for job in listed.jobs] == [21], (
                "the refused registration applied nothing"
            )
            # Nothing was applied: the same event, sent again, fires its callback once.
            reply = await client.publish_event(**event, work_name="1", event_id="w1")
            assert not reply.duplicate
            assert [fired.result.stdout for fired in reply.fired] == ["frame done\n"]
            await channel.close()


async def test_timers_meeting_a_locked_trigger_store_wait_for_the_probe_not_the_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each try of a write meets the lock for the loop's quarter second: a timer that
    # tried again every second stalled every request a quarter of the time.
    settings = stack_settings(tmp_path / "data")
    async with executor(settings) as running, ExecutorClient(f"127.0.0.1:{running.port}") as client:
        now_qube = int(time.time()) - QUBE_EPOCH
        await client.register_job(
            {
                "id": 41,
                "name": "ticking",
                "callbacks": [
                    {
                        "triggers": f"dummy-repeat-self-{now_qube}-1",
                        "language": "python",
                        "code": "print('tick')",
                    }
                ],
            }
        )

        async def ticks() -> int:
            runs = await client.list_runs(job_id=41, limit=1000)
            return len(runs.runs)

        assert await eventually(lambda: _at_least(ticks, 1), timeout_s=10)
        with caplog.at_level(logging.WARNING, logger="executor.triggers.timers"):
            with locked(settings.data_dir / "triggers.db"):
                await asyncio.sleep(4.5)  # four ticks due meanwhile
            tries = [r for r in caplog.records if r.getMessage().startswith("timers: ")]
        assert len(tries) == 1, [r.getMessage() for r in tries]
        assert "triggers.db: database is locked" in tries[0].getMessage()
        # Once the probe finds the lock gone, the clock ticks on: missed ticks coalesce.
        after = await ticks()
        assert await eventually(lambda: _at_least(ticks, after + 1), timeout_s=10)


async def _at_least(count: Callable[[], Awaitable[int]], least: int) -> bool:
    return await count() >= least


async def test_a_locked_embedded_supervisor_answers_unavailable_and_changes_nothing(
    tmp_path: Path,
) -> None:
    settings = stack_settings(tmp_path / "data")
    async with executor(settings) as running:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        async with FarmClient(channel) as farm:
            with locked(settings.data_dir / "supervisor.db"):
                started = time.monotonic()
                with pytest.raises(RetryableError) as refused:
                    await farm.submit_jobs([{"name": "shot", "user": "alice"}])
                assert time.monotonic() - started < PROMPTLY_S
                assert "supervisor.db: database is locked" in refused.value.details
                assert await _is(channel, NOT_SERVING)
            assert await eventually(lambda: _is(channel, SERVING), timeout_s=10)
            assert not (await farm.list_jobs()).jobs
            submitted = await farm.submit_jobs([{"name": "shot", "user": "alice"}])
            assert [job.name for job in submitted.jobs] == ["shot"]
        await channel.close()


async def test_a_waiting_publisher_whose_result_cannot_be_recorded_is_told_at_once(
    tmp_path: Path,
) -> None:
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
        async with (
            executor(settings) as running,
            ExecutorClient(f"127.0.0.1:{running.port}") as client,
        ):
            await client.register_job(
                {
                    "id": 23,
                    "name": "waits",
                    "callbacks": [
                        {
                            "triggers": "complete-job-self",
                            "language": "python",
                            # Its call tells the test it runs (the supervisor has no job 23);
                            # the lock comes before its end.
                            "code": (
                                "import time\ntry:\n    qb.block(23)\nexcept Exception:\n    pass\n"
                                "time.sleep(1.0)\nprint('ran')\n"
                            ),
                        }
                    ],
                }
            )
            event: dict[str, Any] = {
                "name": "complete",
                "type": "job",
                "job_id": 23,
                "event_id": "ev-23",
                "wait": True,
            }
            waiting = asyncio.ensure_future(client.publish_event(**event, timeout=20))
            assert await eventually(lambda: endpoint.servicer.action_requests, timeout_s=10)
            with locked(settings.data_dir / "outbox.db"):
                started = time.monotonic()
                with pytest.raises(RetryableError) as refused:
                    await waiting
                # The run's last second, then a quarter second's try of the commit.
                assert time.monotonic() - started < 1.0 + PROMPTLY_S
                assert refused.value.code == grpc.StatusCode.UNAVAILABLE
                details = refused.value.details
                assert details.startswith("callback 1 of job 23 ran (firing "), details
                assert "but its result could not be recorded" in details, details
                assert "records it once the storage takes it" in details, details
                assert "outbox.db: database is locked" in details, details
                assert "same event_id" in details, details
                # A resend meanwhile is told the same, at once, and runs nothing again.
                with pytest.raises(RetryableError) as resent:
                    await client.publish_event(**event, timeout=20)
                assert resent.value.details == details
            # Once the storage has taken it (and the supervisor has it), the resend
            # answers with the firing's result.
            assert await eventually(lambda: endpoint.servicer.applied, timeout_s=15)
            reply = await client.publish_event(**event, timeout=20)
            assert reply.duplicate
            assert [fired.result.stdout for fired in reply.fired] == ["ran\n"]
            assert await outbox_drained(client)
            assert len(endpoint.servicer.applied) == 1
            assert set(endpoint.servicer.applied.values()) == {1}, "it ran once"


async def test_fired_callbacks_wait_out_a_lock_on_the_embedded_supervisor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Probe 141 F1: its reads answer while another process holds supervisor.db's write lock.

    The hold looked with a read (a JobInfo of job 0), which was answered: it ended at
    once (``resume after 0.0 s``), the one re-run met the lock again, and its failure
    stayed the firing's result, its frame blocked for good.
    """
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    frames = [str(n) for n in range(1, 7)]
    settings = stack_settings(tmp_path / "data", max_concurrent=2)
    async with executor(settings) as running, ExecutorClient(f"127.0.0.1:{running.port}") as client:
        farm = running.reference
        assert farm is not None
        (job,) = farm.submit([{"name": "frames", "user": "alice", "agenda": frames}])
        farm_job = int(job["id"])
        farm.work_action("block", farm_job, frames, "alice")
        unblock = f"qb.workunblock('{farm_job}:' + qb.workid())\n"
        callback = {"triggers": "complete-work-self-*", "language": "python", "code": unblock}
        await client.register_job(
            {"id": 7004, "name": "unblocker", "user": "alice", "callbacks": [callback]}
        )
        with locked(settings.data_dir / "supervisor.db"):
            for frame in frames:  # one at a time, as a farm's frames end
                await client.publish_event(
                    name="complete", type="work", job_id=7004, work_name=frame
                )
                await asyncio.sleep(0.3)
            assert await eventually(lambda: "holding fired runs" in caplog.text, timeout_s=10)
            await asyncio.sleep(2.0)  # the hold looks again while the lock holds
            assert "fired runs resume" not in caplog.text, caplog.text
        assert await eventually(lambda: running.engine.idle, timeout_s=30)
        assert await outbox_drained(client)
        job_after = farm.job(farm_job)
        history = farm.history(farm_job)
        runs = (await client.list_runs(job_id=7004, limit=100)).runs
    assert job_after is not None
    assert [w["name"] for w in job_after["agenda"] if w["status"] == "blocked"] == []
    # Each frame's unblock applied once, whatever ran again.
    unblocked = [line["text"] for line in history if "workunblock" in line["text"]]
    assert sorted(unblocked) == sorted(set(unblocked)) and len(unblocked) == len(frames), history
    # Each firing's result of record is its last run's: SUCCEEDED.
    assert {executor_pb2.Outcome.Name(run.outcome) for run in runs} == {"OUTCOME_SUCCEEDED"}, runs
    assert len(runs) == len(frames), runs
