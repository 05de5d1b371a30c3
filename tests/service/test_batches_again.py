"""A supervisor that once answered UNIMPLEMENTED to ReportResults is asked for batches again.

Found by fault injection: one UNIMPLEMENTED turned batching off until the executor
restarted, so a supervisor upgraded in place, or replaced by a new one on the same port,
got one ReportResult per run for good (one call per result costs more executor CPU than
the run itself). A real Supervisor service on loopback answers UNIMPLEMENTED, then takes
batches: after its upgrade the outbox asks again a while later, and after it was out of
reach (replaced) at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from executor import server
from executor.api.reporting import GrpcReportTransport
from executor.runs.outbox import Backoff, Outbox
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2
from tests.conftest import stack_settings
from tests.helpers.supervisors import BatchOnlySupervisor, CountingSupervisor, SupervisorEndpoint
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.service


class UpgradableSupervisor(CountingSupervisor):
    """Answers UNIMPLEMENTED to ReportResults (counting each ask) until ``upgraded``."""

    upgraded = False
    refused_batches = 0

    async def ReportResults(
        self, request: supervisor_pb2.ReportResultsRequest, context: Any
    ) -> supervisor_pb2.ReportResultsResponse:
        if not self.upgraded:
            self.refused_batches += 1
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        return await super().ReportResults(request, context)


def report(n: int) -> bytes:
    return supervisor_pb2.ReportResultRequest(
        result=executor_pb2.ExecuteResponse(
            invocation_id=f"run-{n}", outcome=executor_pb2.OUTCOME_SUCCEEDED
        ),
        job_id=1,
        ended_at=time.time(),
    ).SerializeToString()


async def test_a_supervisor_upgraded_in_place_is_asked_for_batches_again(tmp_path: Path) -> None:
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", UpgradableSupervisor)
    await endpoint.start()
    servicer = endpoint.servicer
    assert isinstance(servicer, UpgradableSupervisor)
    channel = grpc.aio.insecure_channel(endpoint.address)
    try:
        outbox = Outbox(
            tmp_path / "outbox.db",
            GrpcReportTransport(channel, timeout_s=5.0),
            backoff=Backoff(first_s=0.01, cap_s=0.05),
            ask_for_batches_again_s=1.0,
        )
    except BaseException:
        await channel.close()
        await endpoint.stop()
        endpoint.store.close()
        raise
    try:
        for n in range(5):
            outbox.put(f"run-{n}", report(n))
        outbox.start()
        assert await outbox.flush(10)
        assert (servicer.refused_batches, servicer.batches) == (1, [])
        assert set(servicer.applied) == {f"run-{n}" for n in range(5)}

        servicer.upgraded = True
        await asyncio.sleep(1.2)
        for n in range(5, 10):
            outbox.put(f"run-{n}", report(n))

        assert await outbox.flush(10)
        assert servicer.batches == [5], "asked again, and taken"
        assert set(servicer.applied) == {f"run-{n}" for n in range(10)}
    finally:
        await outbox.close()
        await channel.close()
        await endpoint.stop()
        endpoint.store.close()


async def test_a_supervisor_replaced_on_its_port_gets_batches_at_once(tmp_path: Path) -> None:
    old = SupervisorEndpoint(tmp_path / "old.db", UpgradableSupervisor)
    await old.start()
    new = SupervisorEndpoint(tmp_path / "new.db", CountingSupervisor)
    new.port = old.port
    settings = stack_settings(tmp_path / "data", supervisor=old.address, max_queue=64)
    running = await server.start(settings)
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:

            async def runs(count: int) -> set[str]:
                responses = await asyncio.gather(
                    *(
                        client.execute_callback(language="python", code="pass", job={"id": 3})
                        for _ in range(count)
                    )
                )
                return {response.invocation_id for response in responses}

            first = await runs(8)
            assert await outbox_drained(client)
            assert isinstance(old.servicer, UpgradableSupervisor)
            assert old.servicer.refused_batches >= 1 and set(old.servicer.applied) == first

            await old.stop()  # replaced: down a moment, then another one on its port
            later = await runs(8)
            await new.start()

            assert await outbox_drained(client, timeout_s=30)
            assert await eventually(lambda: set(new.servicer.applied) == later)
            assert new.servicer.batches and max(new.servicer.batches) > 1, new.servicer.batches
    finally:
        await running.stop()
        for endpoint in (old, new):
            await endpoint.stop()
            endpoint.store.close()


async def test_a_lone_result_reaches_a_supervisor_that_takes_only_batches(tmp_path: Path) -> None:
    # Found by fault injection (probe 67): a batch of one was never sent, so each lone
    # result to a supervisor implementing only ReportResults was set aside after its tries.
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", BatchOnlySupervisor)
    await endpoint.start()
    channel = grpc.aio.insecure_channel(endpoint.address)
    outbox = Outbox(
        tmp_path / "outbox.db",
        GrpcReportTransport(channel, timeout_s=5.0),
        backoff=Backoff(first_s=0.01, cap_s=0.05),
        max_attempts=2,
        min_refusing_s=0.0,
    )
    try:
        outbox.put("run-0", report(0))
        outbox.start()
        assert await outbox.flush(10)
        assert outbox.dead() == 0
        assert endpoint.servicer.batches == [1]
        endpoint.assert_exactly_once({"run-0"})
    finally:
        await outbox.close()
        await channel.close()
        await endpoint.stop()
        endpoint.store.close()
