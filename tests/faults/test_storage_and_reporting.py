"""Faults on the recording side: a full data disk, a supervisor that refuses big results.

Against a real executor and a real SupervisorService on loopback that counts every
delivered result by invocation id: nothing answered SUCCEEDED is lost, nothing is
applied twice, nothing stays stuck, and the executor recovers without a restart.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import grpc
import pytest

from executor.runs import recorder
from executor.runs.outbox import Backoff, Outbox
from supervisor_client import ExecutorClient, RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2
from tests.conftest import stack_settings
from tests.faults.helpers import executor, fill, slow_link, small_tmpfs, supervisor_endpoint
from tests.helpers.health import NOT_SERVING, SERVING, health_status
from tests.helpers.supervisors import CountingSupervisor
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.faults


async def test_a_full_data_disk_refuses_answers_it_cannot_record_and_recovers(
    tmp_path: Path,
) -> None:
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        with small_tmpfs(tmp_path / "disk", 16 << 20) as disk:
            settings = stack_settings(disk / "data", supervisor=endpoint.address)
            async with executor(settings) as running:
                address = f"127.0.0.1:{running.port}"
                async with ExecutorClient(address) as client:
                    channel = grpc.aio.insecure_channel(address)
                    answered: list[str] = []

                    async def run(n: int) -> None:
                        response = await client.execute_callback(
                            language="python",
                            code=f"print('run {n}')",
                            job={"id": 7},
                            invocation_id=f"disk-{n}",
                        )
                        assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
                        answered.append(response.invocation_id)

                    await run(0)
                    filler = fill(disk)
                    refused: list[RetryableError] = []
                    ran_unrecorded: set[str] = set()
                    for n in range(1, 31):
                        try:
                            await run(n)
                        except RetryableError as err:
                            refused.append(err)
                            if "the callback ran" in err.details:
                                ran_unrecorded.add(f"disk-{n}")
                    assert {err.code for err in refused} <= {grpc.StatusCode.UNAVAILABLE}
                    assert refused, "a full disk must refuse answers it cannot record"
                    assert all(str(disk / "data") in err.details for err in refused), refused[0]
                    assert await eventually(lambda: _is(channel, NOT_SERVING), timeout_s=5)
                    problem = (await client.get_metrics()).storage_problem
                    assert str(disk / "data") in problem
                    # Known degraded: nothing runs, so no effect happens for a lost result.
                    requests = len(endpoint.servicer.action_requests)
                    with pytest.raises(RetryableError) as not_run:
                        await client.execute_callback(
                            language="python", code="qb.block(7)", job={"id": 7}
                        )
                    assert "cannot record results now, so it runs nothing" in not_run.value.details
                    assert len(endpoint.servicer.action_requests) == requests

                    filler.unlink()  # space returns: everything resumes by itself
                    assert await eventually(lambda: _is(channel, SERVING), timeout_s=15), (
                        "health never recovered"
                    )
                    assert (await client.get_metrics()).storage_problem == ""
                    for n in range(31, 36):
                        await run(n)
                    assert await outbox_drained(client)
                    # A run whose caller was told its result could not be recorded happened:
                    # its result is reported too, once the disk takes it.
                    assert ran_unrecorded, "no run met the full disk after it ran"
                    assert "reported to the supervisor once the storage takes it" in next(
                        err.details for err in refused if "the callback ran" in err.details
                    )
                    endpoint.assert_exactly_once(set(answered) | ran_unrecorded)
                    await channel.close()


async def _is(channel: grpc.aio.Channel, status: int) -> bool:
    return await health_status(channel) == status


def _print(size: int) -> str:
    return f"import sys\nsys.stdout.write('x' * {size})\n"


async def test_oversized_results_are_delivered_reduced_and_block_nothing(tmp_path: Path) -> None:
    """Results piled up during an outage, some larger than the supervisor's 4 MiB limit."""
    async with supervisor_endpoint(
        tmp_path / "supervisor.db", max_receive_bytes=4 << 20
    ) as endpoint:
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
        await endpoint.stop()  # the outage
        async with (
            executor(settings) as running,
            ExecutorClient(f"127.0.0.1:{running.port}") as client,
        ):
            codes = [_print(900_000)] * 8  # 7.2 MB together: one batch would be refused
            codes.append(_print(5_000_000))  # one result larger than the limit
            codes.append("import sys\nsys.stdout.buffer.write(b'\\xff' * 1_000_000)\n")
            codes += ["print('small')"] * 3
            limits = {"output_bytes": 6 << 20}
            ids = []
            for code in codes:
                response = await client.execute_callback(
                    language="python", code=code, job={"id": 3}, limits=limits
                )
                assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response.failure
                ids.append(response.invocation_id)
            big = ids[8]
            assert len((await client.get_run(big)).result.stdout) == 5_000_000

            await endpoint.start()
            assert await outbox_drained(client), "a large result blocked the ones behind it"
            endpoint.assert_exactly_once(set(ids))
            reported = endpoint.store.result(big)
            assert reported is not None
            payload = reported["payload"]
            assert payload["stdout_truncated"] is True
            assert 0 < len(payload["stdout"]) < 4 << 20
            assert (await client.get_metrics()).outbox_dead_letters == 0
            assert len((await client.get_run(big)).result.stdout) == 5_000_000


async def test_a_result_the_supervisor_keeps_refusing_is_set_aside_and_can_be_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor that takes less than the executor was told: the result cannot block."""
    # Set aside after tries over a second, not the service's 30 s and backoff up to 5 s
    # (the outbox's own tests hold those): this test proves a set-aside result blocks nothing.
    quick = functools.partial(Outbox, backoff=Backoff(cap_s=0.2), min_refusing_s=1.0)
    monkeypatch.setattr(recorder, "Outbox", quick)
    async with supervisor_endpoint(
        tmp_path / "supervisor.db", max_receive_bytes=300_000
    ) as endpoint:
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
        async with (
            executor(settings) as running,
            ExecutorClient(f"127.0.0.1:{running.port}") as client,
        ):
            big = await client.execute_callback(
                language="python", code=_print(600_000), job={"id": 4}
            )
            small = await client.execute_callback(language="python", code="print(1)", job={"id": 4})
            assert await eventually(lambda: small.invocation_id in endpoint.stored_ids())

            async def dead() -> list[str]:
                letters = (await client.list_dead_letters()).dead_letters
                return [letter.invocation_id for letter in letters]

            assert await eventually(dead, timeout_s=60) == [big.invocation_id]
            metrics = await client.get_metrics()
            assert (metrics.outbox_dead_letters, metrics.outbox_pending) == (1, 0)

            endpoint.max_receive_bytes = None  # the site raises its limit
            await endpoint.stop()
            await endpoint.start()
            assert (await client.retry_dead_letters([big.invocation_id])).queued == 1
            assert await outbox_drained(client)
            endpoint.assert_exactly_once({big.invocation_id, small.invocation_id})
            assert await dead() == []


class FlakySupervisor(CountingSupervisor):
    """Fails every third batch with INTERNAL and hangs on every fifth."""

    calls = 0

    async def ReportResults(
        self, request: supervisor_pb2.ReportResultsRequest, context: Any
    ) -> supervisor_pb2.ReportResultsResponse:
        FlakySupervisor.calls += 1
        if self.calls % 3 == 0:
            await context.abort(grpc.StatusCode.INTERNAL, "flaky supervisor")
        if self.calls % 5 == 0:
            await asyncio.sleep(3)  # longer than supervisor_timeout_seconds
        return await super().ReportResults(request, context)


async def test_delivery_survives_a_failing_and_hanging_supervisor(tmp_path: Path) -> None:
    async with supervisor_endpoint(
        tmp_path / "supervisor.db", servicer=FlakySupervisor
    ) as endpoint:
        settings = stack_settings(
            tmp_path / "data", supervisor=endpoint.address, supervisor_timeout_seconds=1.0
        )
        async with (
            executor(settings) as running,
            ExecutorClient(f"127.0.0.1:{running.port}") as client,
        ):
            responses = await asyncio.gather(
                *(
                    client.execute_callback(language="python", code=f"print({n})", job={"id": 5})
                    for n in range(40)
                )
            )
            assert await outbox_drained(client, timeout_s=90)
            endpoint.assert_exactly_once({r.invocation_id for r in responses})


async def test_a_supervisor_slow_to_connect_is_waited_for_not_refused(tmp_path: Path) -> None:
    # Found by fault injection: a connection attempt was given up after 200 ms (gRPC takes
    # its minimum reconnect backoff as the connect timeout), so behind a slow link every
    # qb call failed at once with SupervisorUnavailable, well inside its 10 s.
    async with (
        supervisor_endpoint(tmp_path / "supervisor.db") as endpoint,
        slow_link(endpoint.address, delay_s=0.4) as slow,
    ):
        settings = stack_settings(tmp_path / "data", supervisor=slow)
        async with (
            executor(settings) as running,
            ExecutorClient(f"127.0.0.1:{running.port}") as client,
        ):
            (job,) = endpoint.store.submit([{"name": "far", "user": "alice"}])
            response = await client.execute_callback(
                language="python", code="print(qb.jobinfo()[0]['name'])", job=job, timeout=30
            )
            assert response.stdout == "far\n", response


async def test_a_supervisor_slower_than_the_timeout_gets_more_time_not_the_same_results_again(
    tmp_path: Path,
) -> None:
    # Found by a probe: each report was sent again every supervisor_timeout_seconds, so a
    # supervisor that took longer was sent the same results over and over (and one whose
    # handler stops at the deadline, as this one's does, never took them at all).
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        endpoint.servicer.delay_s = 1.5
        settings = stack_settings(
            tmp_path / "data", supervisor=endpoint.address, supervisor_timeout_seconds=1.0
        )
        async with (
            executor(settings) as running,
            ExecutorClient(f"127.0.0.1:{running.port}") as client,
        ):
            response = await client.execute_callback(
                language="python", code="print('slowly')", job={"id": 7}
            )
            assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
            assert await eventually(
                lambda: response.invocation_id in endpoint.servicer.applied, timeout_s=20
            )
            endpoint.assert_exactly_once({response.invocation_id})
