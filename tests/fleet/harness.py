"""A fleet on one real PostgreSQL: N executor processes, one reference supervisor, round robin.

Each replica is ``python -m executor serve --store <url>`` with a data dir and a sandbox
uid range of its own; all talk to one reference Supervisor service on loopback that
counts every effect: results by invocation id (``CountingSupervisor``) and job/work
actions by invocation id (``ActionCounting``, which can also hold back an action's
answer). The supervisor's transitions go to the replicas in turn
(``RoundRobinForwarder``), the next replica when one does not answer.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2_grpc, supervisor_pb2
from supervisor_client.reference.forwarder import EventForwarder
from tests.conftest import TEST_UID_BASE
from tests.helpers.executor_process import ExecutorProcess, executor_process
from tests.helpers.supervisors import CountingSupervisor, SupervisorEndpoint

# A short lease, so a replica's death is noticed within seconds in the tests.
LEASE_S = 2.0


class ActionCounting(CountingSupervisor):
    """Also counts the job and work actions callbacks asked for, by invocation id.

    A test can hold back the answer to one of them (``hold_answer``): the action is
    applied and counted on arrival, and the callback that asked waits for its answer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.actions: Counter[str] = Counter()
        self._held: dict[tuple[str, int], asyncio.Event] = {}

    def hold_answer(self, invocation_id: str, request_number: int) -> asyncio.Event:
        """Answer the ``request_number``-th action request of ``invocation_id`` (from 1) once set."""
        return self._held.setdefault((invocation_id, request_number), asyncio.Event())

    def _arrived(self, invocation_id: str) -> asyncio.Event | None:
        """Count an action request; what its answer waits for, if it is held."""
        self.actions[invocation_id] += 1
        return self._held.get((invocation_id, self.actions[invocation_id]))

    async def JobAction(
        self, request: supervisor_pb2.JobActionRequest, context: Any
    ) -> supervisor_pb2.JobActionResponse:
        release = self._arrived(request.invocation_id)
        response = await super().JobAction(request, context)
        if release is not None:
            await release.wait()
        return response

    async def WorkAction(
        self, request: supervisor_pb2.WorkActionRequest, context: Any
    ) -> supervisor_pb2.WorkActionResponse:
        release = self._arrived(request.invocation_id)
        response = await super().WorkAction(request, context)
        if release is not None:
            await release.wait()
        return response


class RoundRobinForwarder(EventForwarder):
    """The reference supervisor's transitions, each call (one event or several) to the next replica."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(fleet.endpoint.store, grpc.aio.insecure_channel("127.0.0.1:1"))
        self._fleet = fleet
        self._turn = itertools.count()

    async def _send(self, events: list[Any]) -> None:
        alive = [r for r in self._fleet.replicas if r is not None]
        replica = alive[next(self._turn) % len(alive)]
        self._stub = executor_pb2_grpc.TriggerServiceStub(self._fleet.channel(replica.address))
        await super()._send(events)


class Fleet:
    """Replicas by index (None while one is down), the supervisor, the store's URL."""

    def __init__(
        self,
        root: Path,
        store: str,
        endpoint: SupervisorEndpoint,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.store = store
        self.endpoint = endpoint
        # Added to every replica's environment (settings such as CBEXEC_DEFAULT_LIMITS__*).
        self.env = dict(env or {})
        self.replicas: list[ExecutorProcess | None] = []
        self._stacks: list[AsyncExitStack | None] = []
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def counting(self) -> ActionCounting:
        servicer = self.endpoint.servicer
        assert isinstance(servicer, ActionCounting)
        return servicer

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address)
        return self._channels[address]

    def address(self, index: int) -> str:
        replica = self.replicas[index]
        assert replica is not None, f"replica {index} is down"
        return replica.address

    async def start(self, index: int) -> ExecutorProcess:
        """Start replica ``index`` (again, after a kill: same data dir and log)."""
        while len(self.replicas) <= index:
            self.replicas.append(None)
            self._stacks.append(None)
        stack = AsyncExitStack()
        data_dir = self.root / f"replica-{index}"
        replica = await stack.enter_async_context(
            executor_process(
                data_dir,
                self.endpoint.address,
                self.root / f"replica-{index}.log",
                extra_args=["--store", self.store],
                env={
                    "CBEXEC_SANDBOX_UID_BASE": str(TEST_UID_BASE + 100 * (index + 1)),
                    "CBEXEC_STORE_LEASE_SECONDS": str(LEASE_S),
                    **self.env,
                },
            )
        )
        self.replicas[index] = replica
        self._stacks[index] = stack
        return replica

    async def kill(self, index: int) -> None:
        """SIGKILL replica ``index`` (and reap it and what it started)."""
        replica, stack = self.replicas[index], self._stacks[index]
        assert replica is not None and stack is not None
        replica.sigkill()
        self.replicas[index] = None
        self._stacks[index] = None
        await stack.aclose()

    async def stop(self, index: int) -> None:
        """SIGTERM replica ``index`` (a rolling restart's stop), wait for it to end, reap it."""
        replica, stack = self.replicas[index], self._stacks[index]
        assert replica is not None and stack is not None
        replica.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(replica.proc.wait(), timeout=30)
        self.replicas[index] = None
        self._stacks[index] = None
        await stack.aclose()

    async def close(self) -> None:
        for index, stack in enumerate(self._stacks):
            if stack is not None:
                self.replicas[index] = None
                await stack.aclose()
        for channel in self._channels.values():
            await channel.close()


@asynccontextmanager
async def fleet(
    root: Path, store: str, replicas: int = 3, env: Mapping[str, str] | None = None
) -> AsyncIterator[Fleet]:
    """``replicas`` executors on ``store`` and a counting reference supervisor, all stopped after.

    ``env`` is added to each replica's environment.
    """
    endpoint = SupervisorEndpoint(root / "supervisor.db", ActionCounting, event_outbox=True)
    await endpoint.start()
    group = Fleet(root, store, endpoint, env)
    try:
        await asyncio.gather(*(group.start(i) for i in range(replicas)))
        yield group
    finally:
        await group.close()
        await endpoint.stop()


@asynccontextmanager
async def two_replicas(
    root: Path, store: str
) -> AsyncIterator[tuple[ExecutorClient, ExecutorClient]]:
    """A fleet of two replicas (``fleet``): a client of each."""
    async with (
        fleet(root, store, replicas=2) as group,
        ExecutorClient(group.address(0)) as first,
        ExecutorClient(group.address(1)) as second,
    ):
        yield first, second


def example_jobs(path: Path) -> list[dict[str, Any]]:
    """The jobs a seed example script submits, as dicts (the script run with a small ``qb``)."""
    import runpy
    import sys
    import types

    from executor.cli.farm_qb import Job, Work, genframes

    submitted: list[dict[str, Any]] = []
    module = types.ModuleType("qb")
    module.Job = Job  # type: ignore[attr-defined]
    module.Work = Work  # type: ignore[attr-defined]
    module.genframes = genframes  # type: ignore[attr-defined]
    module.submit = lambda jobs: submitted.extend(dict(job) for job in jobs)  # type: ignore[attr-defined]
    previous = sys.modules.get("qb")
    sys.modules["qb"] = module
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        if previous is None:
            sys.modules.pop("qb", None)
        else:
            sys.modules["qb"] = previous
    return [{"user": "fleet", **job} for job in submitted]
