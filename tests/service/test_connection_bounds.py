"""What a peer that stops reading, or floods idle streams, can make the executor hold.

Each over loopback against a real server: a frozen peer is dropped by keepalive pings,
the server advertises its per-connection stream cap and refuses connections past its
cap, an old connection's calls go on for the age's grace and no longer, an idle one is
closed, health Watch streams are capped, a long health name is answered NOT_FOUND, and a
large answer is followed by a heap trim as a large request is.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from executor.api.connections import server_options
from executor.api.health import HealthService
from executor.api.interceptors import CallGuard
from executor.config import Settings
from executor.config_checks import MAX_CONNECTION_COUNT
from executor.heap_return import HeapTrimmer
from executor.runs.metrics import Metrics
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc
from tests.conftest import running_stack, stack_settings
from tests.helpers.executor_process import executor_process
from tests.helpers.health import SERVING, health_list, health_updates
from tests.helpers.unacked_peer import UnackedPeer
from tests.helpers.unreading_peer import UnreadingPeer
from tests.helpers.waiting import eventually
from tests.service.test_http import fetch

pytestmark = pytest.mark.service

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3


def _frozen_peer(port: int) -> socket.socket:
    """A peer that says the HTTP/2 preface and then nothing more: it never answers a ping."""
    peer = socket.create_connection(("127.0.0.1", port), timeout=0.2)
    peer.sendall(PREFACE + SETTINGS + SETTINGS_ACK)
    return peer


def _closed_within(peer: socket.socket, timeout_s: float) -> bool:
    """Whether the server closes ``peer`` within ``timeout_s`` (read all it sends meanwhile)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if not peer.recv(65536):
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def _server_settings(port: int) -> dict[int, int]:
    """The parameters of the first SETTINGS frame the server sends."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as peer:
        peer.sendall(PREFACE + SETTINGS)
        data = b""
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            data += peer.recv(65536)
        length, kind = int.from_bytes(data[:3], "big"), data[3]
        assert kind == 0x4
        body = data[9 : 9 + length]
        return dict(struct.unpack(">HI", body[i : i + 6]) for i in range(0, length, 6))


async def test_a_frozen_peer_is_dropped_and_a_long_call_is_not(tmp_path: Path) -> None:
    settings = stack_settings(
        tmp_path / "data", keepalive_seconds=0.5, keepalive_timeout_seconds=0.5
    )
    async with running_stack(settings) as stack:
        peer = _frozen_peer(stack.running.port)
        try:
            assert await asyncio.to_thread(_closed_within, peer, 8.0)
        finally:
            peer.close()
        # A live client answers the pings: a call several keepalive periods long goes on.
        reply = await stack.client.execute_callback(
            language="python", code="import time; time.sleep(2.5)", job={"id": 1}, timeout=30
        )
        assert reply.outcome == executor_pb2.OUTCOME_SUCCEEDED, reply.failure.message


async def test_streams_per_connection_and_connections_are_capped(tmp_path: Path) -> None:
    async with running_stack(stack_settings(tmp_path / "data", max_connections=3)) as stack:
        port = stack.running.port
        advertised = await asyncio.to_thread(_server_settings, port)
        assert advertised.get(SETTINGS_MAX_CONCURRENT_STREAMS) == stack.settings.max_streams
        # The fixture's channel holds one connection; two more fill the cap.
        await stack.channel.channel_ready()
        peers = [_frozen_peer(port) for _ in range(2)]
        try:
            await asyncio.sleep(0.3)  # the server has taken both
            past_cap = _frozen_peer(port)
            try:
                assert await asyncio.to_thread(_closed_within, past_cap, 5.0)
            finally:
                past_cap.close()
        finally:
            for peer in peers:
                peer.close()
        # Their places are free again once they are gone.
        for _ in range(50):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
                try:
                    assert (await health_list(fresh))[""] == SERVING
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
        else:
            raise AssertionError("no connection was taken after the others closed")


async def _served(port: int) -> bool:
    """Whether a fresh client's call is answered (not refused at the connection cap)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
        try:
            return (await health_list(fresh))[""] == SERVING
        except grpc.aio.AioRpcError:
            return False


async def test_silent_connections_lose_their_places_at_the_handshake_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Probe 105: 256 TCP connections that never sent a byte held every place for 60 s
    # (120 s under TLS), no token needed, and nothing was logged.
    settings = stack_settings(tmp_path / "data", max_connections=4, handshake_timeout_seconds=2.0)
    async with running_stack(settings) as stack:
        port = stack.running.port
        await stack.channel.channel_ready()  # one place; three silent peers take the rest
        with caplog.at_level(logging.WARNING, logger="executor.api.connection_watch"):
            silent = [socket.create_connection(("127.0.0.1", port), timeout=0.2) for _ in range(3)]
            try:
                full = await eventually(lambda: _full_warnings(caplog), timeout_s=10)
                assert full, "no WARNING while the silent peers held every place"
                assert "127.0.0.1: 4" in full[0], full[0]  # who holds them, for a firewall
                # Far sooner than gRPC's own 60 s: they are dropped at the handshake timeout.
                assert await eventually(lambda: _served(port), timeout_s=20, interval_s=0.2)
                for peer in silent:
                    assert await asyncio.to_thread(_closed_within, peer, 5.0)
            finally:
                for peer in silent:
                    peer.close()


async def test_a_peer_that_never_acknowledges_our_settings_is_dropped(tmp_path: Path) -> None:
    # HTTP/2's preface and nothing more held a place for gRPC's 60 s (probe 105).
    settings = stack_settings(
        tmp_path / "data", keepalive_seconds=600, keepalive_timeout_seconds=1.0
    )
    async with running_stack(settings) as stack:
        peer = socket.create_connection(("127.0.0.1", stack.running.port), timeout=0.2)
        try:
            peer.sendall(PREFACE + SETTINGS)
            assert await asyncio.to_thread(_closed_within, peer, 20.0)
        finally:
            peer.close()


async def test_large_headers_before_our_settings_are_acknowledged_are_refused(
    tmp_path: Path,
) -> None:
    # gRPC bounds headers only once its SETTINGS are acknowledged: before, it took 1 MB
    # header blocks whole and held their calls until the settings timeout (probe 149).
    settings = stack_settings(tmp_path / "data")
    async with running_stack(settings) as stack:
        peer = await UnackedPeer.connect(stack.running.port)
        try:
            small = await peer.call("/grpc.health.v1.Health/Check", 100)
            # Reflection too (probe 176): registered on the server, it was found before
            # the bound's handler and served.
            large = [
                await peer.call(method, size)
                for method, size in (
                    ("/qbcallback.v1.RunService/GetMetrics", 17_000),
                    ("/qbcallback.v1.RunService/GetMetrics", 100_000),
                    ("/qbcallback.v1.RunService/GetMetrics", 1_000_000),
                    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", 100_000),
                )
            ]
            assert await eventually(lambda: set(large) <= set(peer.ended), timeout_s=5)
            # Answered at once, without waiting for a request: the status alone. gRPC's
            # encoder sends the message as a literal, so its words can be seen in the block.
            # gRPC refuses a random share itself (its soft limit), 6% of those of 1 MB.
            ours = 0
            for stream in large:
                block = peer.ended[stream]
                assert b"more than 16384" in block or b"exceeds soft limit" in block
                ours += b"more than 16384" in block
            assert small not in peer.ended  # within the bound it waits for its request
            # The executor's own refusals count as every RESOURCE_EXHAUSTED of its does;
            # gRPC's (its soft limit) never reach it.
            assert (await stack.client.get_metrics()).rejected_at_capacity == ours
        finally:
            await peer.close()


def _full_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()]


async def _bare_health(health: HealthService) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_health_watches_are_capped() -> None:
    metrics = Metrics()
    server, channel = await _bare_health(HealthService(max_watches=2, metrics=metrics))
    try:
        first, second = health_updates(channel), health_updates(channel)
        await first.read()  # type: ignore[attr-defined]  # an aio call
        await second.read()  # type: ignore[attr-defined]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await anext(aiter(health_updates(channel)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            "at most 2 health Watch streams may be open at once; use Check, or end another Watch"
        )
        assert metrics.snapshot().rejected_at_capacity == 1  # as every RESOURCE_EXHAUSTED
        first.cancel()  # type: ignore[attr-defined]  # an aio call
        for _ in range(100):  # its place is free once the server has seen the cancel
            try:
                await anext(aiter(health_updates(channel)))
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("the place of a cancelled Watch was never freed")
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_long_unknown_name_is_not_found() -> None:
    server, channel = await _bare_health(HealthService())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]  # aio; stubs predate it
                health_pb2.HealthCheckRequest(service="x" * 100_000), timeout=5
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(unknown.value.details() or "") < 2100
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_watch_of_a_name_no_service_can_have_ends_at_once() -> None:
    # Each such stream held its 4 MB request: 500 of them, 3.7 GB (probe 86).
    server, channel = await _bare_health(HealthService())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await anext(aiter(health_updates(channel, "x" * 4_000_000)))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "never served" in (unknown.value.details() or "")
        # A short unknown name is watched, as health.proto says: SERVICE_UNKNOWN, held open.
        watch = health_updates(channel, "some.Service")
        first = await watch.read()  # type: ignore[attr-defined]  # an aio call
        assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        watch.cancel()  # type: ignore[attr-defined]
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_large_answer_is_followed_by_a_trim() -> None:
    trimmer = HeapTrimmer(delay_s=0.05)
    health = HealthService()
    server = grpc.aio.server()
    CallGuard(server, Metrics(), trimmer).register(
        health_pb2_grpc.add_HealthServicer_to_server, health
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        for n in range(1500):  # a List answer of ~1.5 MB from a request of a few bytes
            await health.set(f"{n:04d}" + "s" * 1000, health_pb2.HealthCheckResponse.SERVING)
        assert len(await health_list(channel)) == 1501
        for _ in range(200):
            if trimmer.trims:
                break
            await asyncio.sleep(0.01)
        assert trimmer.trims == 1
    finally:
        await channel.close()
        await server.stop(None)
        await trimmer.close()


async def test_a_connection_gone_with_requests_sent_in_part_is_followed_by_a_trim(
    tmp_path: Path,
) -> None:
    # gRPC holds a request sent in part until its connection goes; no call took it, so no
    # call's end gave the memory back: 550 MiB stayed after such peers left (probe 167).
    settings = stack_settings(tmp_path / "data", handshake_timeout_seconds=1.0)  # looks: 0.25 s
    async with running_stack(settings) as stack:
        trimmer = stack.running.trimmer
        assert trimmer is not None
        peer = await UnreadingPeer.connect(stack.running.port)
        await peer.begin("/qbcallback.v1.CallbackExecutorService/Execute", 16 << 20, 8 << 10)
        await asyncio.sleep(1.5)  # counted by several looks
        before = trimmer.trims
        await peer.close()
        assert await eventually(lambda: trimmer.trims > before, timeout_s=10)


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
async def test_a_compressed_request_is_refused_and_an_uncompressed_one_runs(
    tmp_path: Path, compression: grpc.Compression
) -> None:
    # 16 KiB of gzip inflated to a 16 MiB request: 200 of them, 3 MB sent, held every other
    # caller 30 s while each was decoded (probe 170).
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        request = executor_pb2.ExecuteRequest()
        request.callback.language = "python"
        request.callback.code = "pass"
        request.context.job.id = 1
        request.context.job.user = "root"
        async with grpc.aio.insecure_channel(stack.address, compression=compression) as channel:
            stub = executor_pb2_grpc.CallbackExecutorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Execute(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "disabled" in (refused.value.details() or "")
        async with grpc.aio.insecure_channel(stack.address) as channel:
            answer = await executor_pb2_grpc.CallbackExecutorServiceStub(channel).Execute(
                request, timeout=30
            )
        assert answer.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED


async def _health_server(**ages: int) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server(options=server_options(Settings(), **ages))
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_an_old_connection_keeps_its_calls_for_the_grace() -> None:
    server, channel = await _health_server(age_ms=200, age_grace_ms=60_000)
    try:
        watch = health_updates(channel)
        await watch.read()  # type: ignore[attr-defined]  # an aio call
        await asyncio.sleep(1.0)  # well past the age: GOAWAY sent, the call goes on
        assert not watch.done()  # type: ignore[attr-defined]
        assert await health_list(channel) == {"": SERVING}  # on a new connection
        assert not watch.done()  # type: ignore[attr-defined]
    finally:
        await channel.close()
        await server.stop(None)


async def test_an_old_connection_is_closed_after_the_grace() -> None:
    server, channel = await _health_server(age_ms=200, age_grace_ms=300)
    try:
        watch = health_updates(channel)
        await watch.read()  # type: ignore[attr-defined]  # an aio call
        code = await asyncio.wait_for(watch.code(), 10)  # type: ignore[attr-defined]
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()
        await server.stop(None)


async def test_an_idle_connection_is_closed() -> None:
    server, channel = await _health_server(idle_ms=300)
    try:
        assert await health_list(channel) == {"": SERVING}
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        for _ in range(100):
            if channel.get_state() == grpc.ChannelConnectivity.IDLE:
                break
            await asyncio.sleep(0.05)
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE
    finally:
        await channel.close()
        await server.stop(None)


async def test_calls_past_max_streams_are_answered_not_refused(tmp_path: Path) -> None:
    # gRPC's server refuses some of the calls a client sends past max_streams (RST_STREAM
    # REFUSED_STREAM, "error code 7"): 12 of 1200 at 1000 (probe 105). Never seen by the
    # server, the client library sends them again.
    async with running_stack(stack_settings(tmp_path / "data", max_streams=2)) as stack:
        results = await asyncio.gather(
            *(stack.client.get_metrics(timeout=60) for _ in range(200)), return_exceptions=True
        )
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        assert not failures, (len(failures), failures[:3])


async def test_the_executors_own_calls_take_no_clients_place(tmp_path: Path) -> None:
    # With max_connections = 1, the embedded supervisor's channel to the executor's own
    # port took the one place for good: every client was refused (probe 120).
    settings = stack_settings(tmp_path / "data", max_connections=1, http_bind="127.0.0.1:0")
    async with running_stack(settings) as stack:
        # The side port reads, and the supervisor's transitions go, through the own channel.
        status, _, _ = await fetch(f"http://127.0.0.1:{stack.running.http_port}/healthz")
        assert status == 200
        stack.supervisor.submit([{"name": "a", "user": "alice", "agenda": ["1"]}])
        forwarder = stack.running.forwarder
        assert forwarder is not None
        await asyncio.wait_for(forwarder.drain(), 20)
        # A connection of its own (not the global pool's, which the fixture's may share).
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{stack.running.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as client:
            assert (await health_list(client))[""] == SERVING


async def test_the_top_of_max_connections_starts_and_serves(tmp_path: Path) -> None:
    # Probe 182: 2147483647, the documented top, passed --check-config and then gRPC's
    # core aborted start-up (exit 134): it takes a connection cap below 2^31 - 1 only.
    async with (
        executor_process(
            tmp_path / "data",
            "",
            tmp_path / "serve.log",
            env={"CBEXEC_MAX_CONNECTIONS": str(MAX_CONNECTION_COUNT)},
        ) as running,
        ExecutorClient(running.address) as client,
    ):
        response = await client.execute_callback(language="python", code="pass", job={"id": 1})
        assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
