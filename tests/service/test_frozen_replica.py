"""A frozen replica (SIGSTOP: its TCP connection stays up, nothing answers) leaves the fleet.

The client's keepalive pings (``credentials.KEEPALIVE_OPTIONS``: every 10 s, 5 s to
answer) find it; the channel drops its connection, round robin moves on to the replica
that answers, and a call caught on the frozen one fails UNAVAILABLE instead of waiting
for ever. B runs as its own process so that it can be stopped; A in this one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from supervisor_client import ExecutorClient, RetryableError
from supervisor_client.credentials import KEEPALIVE_OPTIONS, KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import TEST_UID_BASE
from tests.helpers.executor_process import executor_process
from tests.helpers.waiting import eventually
from tests.service.test_fleet_client import executor, succeeded

pytestmark = [pytest.mark.service, pytest.mark.timeout(180)]

# Pings find a frozen peer within this long (a ping's interval, then its timeout), plus slack.
DETECTED_S = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + 5


async def ok(client: ExecutorClient, *, timeout: float | None) -> bool:
    response = await client.execute_callback(
        language="python", code="pass", job={"id": 1}, timeout=timeout
    )
    return response.outcome == executor_pb2.OUTCOME_SUCCEEDED


async def test_a_frozen_replica_leaves_the_fleet_and_a_call_caught_on_it_ends(
    tmp_path: Path,
) -> None:
    async with (
        executor(tmp_path / "a", 1) as a,
        executor_process(
            tmp_path / "b",
            "",
            tmp_path / "b.log",
            env={"CBEXEC_SANDBOX_UID_BASE": str(TEST_UID_BASE + 200)},
        ) as b,
    ):
        direct_a = f"127.0.0.1:{a.port}"
        async with ExecutorClient(f"{direct_a},{b.address}") as fleet:
            await fleet.wait_until_serving()
            await b_gets_calls_again(fleet, b.address)

            # Frozen while idle: the pings alone find it, before any call is lost on it.
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(DETECTED_S)
                before_a = await succeeded(direct_a)
                for _ in range(10):
                    assert await ok(fleet, timeout=5)  # none goes to B, so none waits
                assert await eventually(lambda: _count_is(direct_a, before_a + 10))
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            await b_gets_calls_again(fleet, b.address)

            # Frozen while calls go on: a call with no deadline that reaches B used to
            # wait for ever; it ends UNAVAILABLE once a ping goes unanswered.
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                caught = 0
                for _ in range(4):
                    try:
                        await asyncio.wait_for(ok(fleet, timeout=None), DETECTED_S)
                    except RetryableError:
                        caught += 1
                assert caught >= 1
                assert time.monotonic() - started < DETECTED_S
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            await b_gets_calls_again(fleet, b.address)


async def b_gets_calls_again(fleet: ExecutorClient, b: str) -> None:
    """B answers again: it is back in the pick list and runs calls."""
    before_b = await succeeded(b)

    async def reached() -> bool:
        assert await ok(fleet, timeout=30)
        return await succeeded(b) > before_b

    assert await eventually(reached, timeout_s=30), "B never got a call"


async def _count_is(address: str, expected: int) -> bool:
    return await succeeded(address) == expected


async def test_an_executor_takes_idle_pings_without_goaway(tmp_path: Path) -> None:
    """With gRPC's defaults, the third ping without data is answered GOAWAY too_many_pings.

    Pings every 6 s (above the executor's 5 s floor; the client's own are every 10 s)
    for 30 s, with no call: the connection stays READY throughout.
    """
    options = {**dict(KEEPALIVE_OPTIONS), "grpc.keepalive_time_ms": 6_000}
    async with executor(tmp_path / "a", 1) as a:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{a.port}", options=list(options.items()))
        async with channel:
            await channel.channel_ready()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 30
                )
