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
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from executor import server
from supervisor_client import ExecutorClient, ReferenceSupervisor, SupervisorServicer
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2, supervisor_pb2_grpc
from tests.conftest import stack_settings
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.service

RUNS = 200


class CountingSupervisor(SupervisorServicer):
    """The reference Supervisor service, counting reported results by invocation id.

    Both ways in count: ReportResult, and each entry of a ReportResults batch.
    """

    def __init__(self, store: ReferenceSupervisor, delay_s: float = 0.0) -> None:
        super().__init__(store)
        self.applied: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.batches: list[int] = []
        self.delay_s = delay_s

    async def ReportResult(
        self, request: supervisor_pb2.ReportResultRequest, context: Any
    ) -> supervisor_pb2.ReportResultResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        response = await super().ReportResult(request, context)
        self._count(request, response)
        return response

    async def ReportResults(
        self, request: supervisor_pb2.ReportResultsRequest, context: Any
    ) -> supervisor_pb2.ReportResultsResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        response = await super().ReportResults(request, context)
        for entry, answer in zip(request.results, response.results, strict=True):
            self._count(entry, answer)
        self.batches.append(len(request.results))
        return response

    def _count(
        self,
        request: supervisor_pb2.ReportResultRequest,
        answer: supervisor_pb2.ReportResultResponse,
    ) -> None:
        counter = self.duplicates if answer.duplicate else self.applied
        counter[request.result.invocation_id] += 1


class SingleResultSupervisor(CountingSupervisor):
    """A supervisor written before ReportResults: it answers UNIMPLEMENTED to batches."""

    ReportResults = supervisor_pb2_grpc.SupervisorServiceServicer.ReportResults  # type: ignore[assignment]


class SupervisorEndpoint:
    """A Supervisor service on one loopback port that can be stopped and started again."""

    def __init__(self, db: Path, servicer: type[CountingSupervisor] = CountingSupervisor) -> None:
        self.store = ReferenceSupervisor(str(db))
        self.servicer = servicer(self.store)
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        supervisor_pb2_grpc.add_SupervisorServiceServicer_to_server(self.servicer, self._server)
        bound = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert bound and (self.port in (0, bound)), "could not rebind the supervisor's port"
        self.port = bound
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    def stored_ids(self) -> list[str]:
        return [r["invocation_id"] for r in self.store.results()]

    def assert_exactly_once(self, expected: set[str]) -> None:
        stored = self.stored_ids()
        assert len(stored) == len(set(stored))
        assert set(stored) == expected
        assert set(self.servicer.applied) == expected
        assert set(self.servicer.applied.values()) == {1}, "a result was applied twice"


@pytest.fixture(params=[CountingSupervisor, SingleResultSupervisor], ids=["batches", "single"])
async def endpoint(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[SupervisorEndpoint]:
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", request.param)
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()
        endpoint.store.close()


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


@dataclass
class ExecutorProcess:
    proc: asyncio.subprocess.Process
    address: str

    def sigkill(self) -> None:
        """SIGKILL the executor process itself (what it started is left to fend for itself)."""
        os.kill(self.proc.pid, signal.SIGKILL)


@asynccontextmanager
async def executor_process(
    data_dir: Path, supervisor: str, log: Path
) -> AsyncIterator[ExecutorProcess]:
    """`python -m executor serve` in its own session, logging to ``log``; always killed and reaped."""
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "executor",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--supervisor",
            supervisor,
            "--max-concurrent",
            "4",
            "--max-queue",
            "256",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    family = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"serving on port (\d+)", log.read_text())):
            assert proc.returncode is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        yield ExecutorProcess(proc, f"127.0.0.1:{found.group(1)}")
    finally:
        await kill_family(proc, family)


async def kill_family(proc: asyncio.subprocess.Process, family: psutil.Process) -> None:
    """SIGKILL the executor (if still alive) and everything it started; reap it."""
    descendants: list[psutil.Process] = []
    with suppress(psutil.NoSuchProcess):
        descendants = family.children(recursive=True)
    if proc.returncode is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    # Helpers in their own sessions (the zygote) end on their own when their pipe closes.
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for leftover in alive:
        with suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=5)


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
