"""The gRPC health service, as grpc_health_probe sees it: SERVING while up, NOT_SERVING while draining."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from executor import server
from executor.api.edge import FARM_SERVICE, SERVICES
from executor.api.health import HealthService
from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, stack_settings
from tests.helpers.health import (
    NOT_SERVING,
    SERVING,
    health_list,
    health_status,
    health_updates,
)

pytestmark = pytest.mark.service

# Still running when the stop begins: the drain has a callback to end.
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"


async def test_serving_while_up(stack: Stack) -> None:
    stub = stack.channel
    assert await health_status(stub) == SERVING
    assert SERVICES == (
        "qbcallback.v1.CallbackExecutorService",
        "qbcallback.v1.TriggerService",
        "qbcallback.v1.RunService",
    )
    for service in SERVICES:
        assert await health_status(stub, service) == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health_status(stub, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_names_every_service_with_the_status_check_gives(stack_warm: Stack) -> None:
    # Reflection lists List among Health's methods: it was UNIMPLEMENTED, with gRPC
    # Python's "Unexpected <class 'NotImplementedError'>" for a message.
    listed = await health_list(stack_warm.channel)
    assert listed == dict.fromkeys(("", *SERVICES, FARM_SERVICE), SERVING)
    for service, status in listed.items():
        assert await health_status(stack_warm.channel, service) == status


async def test_list_follows_each_change() -> None:
    health = HealthService()
    bare = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, bare)
    port = bare.add_insecure_port("127.0.0.1:0")
    await bare.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        assert await health_list(channel) == {"": SERVING}
        await health.set("a.Service", NOT_SERVING)
        await health.set("", NOT_SERVING)
        assert await health_list(channel) == {"": NOT_SERVING, "a.Service": NOT_SERVING}
    finally:
        await channel.close()
        await bare.stop(None)


@pytest.mark.parametrize("http_bind", ["", "127.0.0.1:0"], ids=["grpc", "with-http-port"])
async def test_not_serving_while_draining(tmp_path: Path, http_bind: str) -> None:
    running = await server.start(
        stack_settings(tmp_path / "data", grace_seconds=1.5, http_bind=http_bind)
    )
    address = f"127.0.0.1:{running.port}"
    channel = grpc.aio.insecure_channel(address)
    stub = channel
    watch = health_updates(channel, SERVICES[0])
    seen: list[int] = []

    async def follow() -> None:
        async for update in watch:
            seen.append(int(update.status))  # noqa: PERF401 - seen grows as updates arrive

    follower = asyncio.create_task(follow())
    client = ExecutorClient(address)
    stopping: asyncio.Task[None] | None = None
    try:
        busy = asyncio.create_task(
            client.execute_callback(language="python", code=STUBBORN, job={"id": 1})
        )
        deadline = time.monotonic() + 10
        while running.dispatcher.running == 0:  # started: a stop kills it, KILLED
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await health_status(stub) == SERVING

        stopping = asyncio.create_task(running.stop())
        samples: list[tuple[int, int]] = []  # (status, callbacks still being drained)
        while not stopping.done() and len(samples) < 5:
            try:
                status = await health_status(stub)
            except grpc.aio.AioRpcError:
                break  # the server has stopped listening
            samples.append((status, running.dispatcher.active))
            await asyncio.sleep(0.05)
        assert samples, "no health check answered while draining"
        assert all(status == NOT_SERVING for status, _ in samples), samples
        if not stopping.done():  # a stop refuses new runs from its first moment
            with pytest.raises(ExecutorRpcError) as refused:
                await client.execute_callback(language="python", code="pass", job={"id": 1})
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        await stopping
        # The drain stopped it: answered (and recorded) as KILLED, with the reason.
        answer = await busy
        assert answer.outcome == executor_pb2.Outcome.OUTCOME_KILLED
        assert answer.failure.message == "the executor is shutting down"
        assert seen[:1] == [SERVING] and NOT_SERVING in seen
    finally:
        await (running.stop() if stopping is None else stopping)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await client.close()
        await channel.close()


async def test_a_stop_ends_the_watch_streams_after_saying_not_serving(tmp_path: Path) -> None:
    # A fleet client's channel always watches (healthCheckConfig). Its stream, left open,
    # held every stop for the server's whole grace period (STOP_GRACE_S, 5 s).
    running = await server.start(stack_settings(tmp_path / "data"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    stopping: asyncio.Task[None] | None = None
    try:
        watch = aiter(health_updates(channel))
        seen = [int((await anext(watch)).status)]
        started = time.monotonic()
        stopping = asyncio.create_task(running.stop())
        seen += [int(update.status) async for update in watch]  # ends: no error raised
        await stopping
        assert seen == [SERVING, NOT_SERVING]
        assert time.monotonic() - started < server.STOP_GRACE_S / 2
    finally:
        await (running.stop() if stopping is None else stopping)
        await channel.close()
