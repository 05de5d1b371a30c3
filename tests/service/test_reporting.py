"""Fault tests of result reporting: a supervisor that goes away, an executor killed with SIGKILL.

The Supervisor endpoint here is a separate grpc.aio server hosting the reference
supervisor (``supervisor_client.reference``) on a fixed loopback port, which the tests
stop and start again on the same port; the executor is pointed at it with
``supervisor=``. "Exactly once" is checked on the receiver: every invocation id is
stored once, and counting the ReportResult calls that were *applied* (not answered
``duplicate``) gives exactly one per run.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from executor import server
from executor.cli.metrics import format_metrics
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import stack_settings
from tests.faults.helpers import supervisor_endpoint
from tests.helpers.executor_process import executor_process
from tests.helpers.supervisors import CountingSupervisor, SingleResultSupervisor, SupervisorEndpoint
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.service

RUNS = 200


@pytest.fixture(params=[CountingSupervisor, SingleResultSupervisor], ids=["batches", "single"])
async def endpoint(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[SupervisorEndpoint]:
    async with supervisor_endpoint(tmp_path / "supervisor.db", servicer=request.param) as endpoint:
        yield endpoint


async def run_many(client: ExecutorClient, count: int) -> list[str]:
    async def one(n: int) -> str:
        response = await client.execute_callback(
            language="python", code=f"print('frame {n}')", job={"id": 1000 + n % 7}
        )
        assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
        return response.invocation_id

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def test_results_survive_a_supervisor_outage(
    tmp_path: Path, endpoint: SupervisorEndpoint
) -> None:
    settings = stack_settings(
        tmp_path / "data", supervisor=endpoint.address, max_concurrent=4, max_queue=RUNS
    )
    running = await server.start(settings)
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            warm_up = await run_many(client, 1)
            assert await eventually(lambda: endpoint.stored_ids() == warm_up, timeout_s=30.0)

            await endpoint.stop()
            started = time.monotonic()
            ids = await run_many(client, RUNS)
            ran_s = time.monotonic() - started
            assert (await client.get_metrics()).outbox_pending == RUNS
            assert endpoint.stored_ids() == warm_up

            await endpoint.start()
            restarted = time.monotonic()
            assert await eventually(lambda: len(endpoint.stored_ids()) == RUNS + 1, timeout_s=30.0)
            caught_up_s = time.monotonic() - restarted
            endpoint.assert_exactly_once({*warm_up, *ids})
            assert await outbox_drained(client)
            if isinstance(endpoint.servicer, SingleResultSupervisor):
                assert not endpoint.servicer.batches
            else:  # the backlog went in batches
                assert max(endpoint.servicer.batches) > 1
            print(
                f"{RUNS} runs in {ran_s:.2f}s while the supervisor was down; "
                f"all delivered {caught_up_s:.2f}s after it came back"
            )
    finally:
        await running.stop()


# -- the executor as a real process, killed with SIGKILL ------------------------------------


async def test_queued_results_survive_sigkill_of_the_executor(
    tmp_path: Path, endpoint: SupervisorEndpoint
) -> None:
    data_dir = tmp_path / "data"
    await endpoint.stop()
    async with executor_process(data_dir, endpoint.address, tmp_path / "first.log") as first:
        async with ExecutorClient(first.address) as client:
            ids = await run_many(client, RUNS)
            assert (await client.get_metrics()).outbox_pending == RUNS
        first.sigkill()
        assert await first.proc.wait() == -signal.SIGKILL
    assert endpoint.stored_ids() == []

    await endpoint.start()
    async with executor_process(data_dir, endpoint.address, tmp_path / "second.log") as second:
        assert await eventually(lambda: len(endpoint.stored_ids()) == RUNS, timeout_s=30.0)
        endpoint.assert_exactly_once(set(ids))
        async with ExecutorClient(second.address) as client:
            assert await outbox_drained(client)


async def test_sigkill_during_delivery_redelivers_without_applying_twice(
    tmp_path: Path, endpoint: SupervisorEndpoint
) -> None:
    data_dir = tmp_path / "data"
    # A slow supervisor: delivery is still going on at the kill (a batch carries many).
    batches = not isinstance(endpoint.servicer, SingleResultSupervisor)
    endpoint.servicer.delay_s = 0.5 if batches else 0.02
    await endpoint.stop()
    async with executor_process(data_dir, endpoint.address, tmp_path / "first.log") as first:
        async with ExecutorClient(first.address) as client:
            ids = await run_many(client, RUNS)
        await endpoint.start()
        assert await eventually(lambda: len(endpoint.stored_ids()) >= RUNS // 4, timeout_s=30.0)
        first.sigkill()
        await first.proc.wait()
    delivered_before_kill = len(endpoint.stored_ids())
    assert delivered_before_kill < RUNS, "the kill came too late to test anything"

    endpoint.servicer.delay_s = 0.0
    async with executor_process(data_dir, endpoint.address, tmp_path / "second.log"):
        assert await eventually(lambda: len(endpoint.stored_ids()) == RUNS, timeout_s=30.0)
    endpoint.assert_exactly_once(set(ids))
    in_flight = max(endpoint.servicer.batches, default=1)
    resent = sum(endpoint.servicer.duplicates.values())
    assert resent <= in_flight, "only the in-flight exchange is resent"


async def test_while_the_supervisor_is_away_the_warning_and_the_metrics_say_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by fault injection (probe 67): the WARNING repeated during an outage said only
    # "3 pending, retrying in 2.80s"; why (UNAVAILABLE, DEADLINE_EXCEEDED) was at INFO, and
    # GetMetrics, cbexec metrics and the health page showed only the count.
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", CountingSupervisor)
    await endpoint.start()
    await endpoint.stop()  # away: its port known, nothing answering there
    running = await server.start(stack_settings(tmp_path / "data", supervisor=endpoint.address))
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            await run_many(client, 3)

            async def said() -> str:
                return (await client.get_metrics()).outbox_last_error

            assert "UNAVAILABLE" in await eventually(said)
            shown = format_metrics(await client.get_metrics())
            assert "dead letters; last delivery failed: UNAVAILABLE: " in shown, shown
            retrying = [
                r
                for r in caplog.records
                if "retrying in" in r.getMessage() and "pending" in r.getMessage()
            ]
            assert retrying and all(r.levelname == "WARNING" for r in retrying)
            assert all("UNAVAILABLE" in r.getMessage() for r in retrying), retrying[0].getMessage()

            await endpoint.start()
            assert await outbox_drained(client)
            assert await said() == ""
    finally:
        await running.stop()
        await endpoint.stop()
        endpoint.store.close()
