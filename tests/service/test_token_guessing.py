"""Guessing the token on the gRPC port is as slow as on the HTTP side port: 128 a second at most."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from executor.api.interceptors import WRONG_TOKEN_DELAY_S, WRONG_TOKENS_AT_ONCE
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc
from tests.conftest import running_stack, stack_settings
from tests.helpers.unreading_peer import FIRST_WINDOW, UnreadingPeer
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

TOKEN = "guess-me-if-you-can"


async def metrics_call(
    channel: grpc.aio.Channel, token: str, timeout: float = 30
) -> grpc.StatusCode:
    call = executor_pb2_grpc.RunServiceStub(channel).GetMetrics(
        executor_pb2.GetMetricsRequest(),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=timeout,
    )
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_wrong_tokens_are_answered_at_128_a_second_at_most_and_the_right_one_at_once(
    tmp_path: Path,
) -> None:
    async with running_stack(stack_settings(tmp_path / "data", auth_token=TOKEN)) as stack:
        channel = stack.channel
        # One guess alone waits as long as on the side port.
        began = time.monotonic()
        assert await metrics_call(channel, "wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - began >= WRONG_TOKEN_DELAY_S * 0.95

        # Three rounds' worth at once, on one channel: 4,300 a second before.
        guesses = 3 * WRONG_TOKENS_AT_ONCE
        began = time.monotonic()
        flood = [asyncio.ensure_future(metrics_call(channel, f"guess-{n}")) for n in range(guesses)]
        await asyncio.sleep(0.1)
        # The right token meanwhile never waits behind them.
        right_began = time.monotonic()
        assert await metrics_call(channel, TOKEN) == grpc.StatusCode.OK
        assert time.monotonic() - right_began < WRONG_TOKEN_DELAY_S / 2
        answers = await asyncio.gather(*flood)
        took = time.monotonic() - began
        assert set(answers) == {grpc.StatusCode.UNAUTHENTICATED}
        assert took >= 3 * WRONG_TOKEN_DELAY_S * 0.95, f"{guesses} guesses in {took:.2f} s"
        assert guesses / took <= WRONG_TOKENS_AT_ONCE / WRONG_TOKEN_DELAY_S * 1.06  # 128/s


async def test_a_guess_given_up_gives_its_turn_back(tmp_path: Path) -> None:
    # A caller that leaves while its wrong token waits (its deadline) holds no turn after:
    # the next guess waits its own half second, not theirs.
    async with running_stack(stack_settings(tmp_path / "data", auth_token=TOKEN)) as stack:
        channel = stack.channel
        left = await asyncio.gather(
            *(metrics_call(channel, "wrong", timeout=0.1) for _ in range(WRONG_TOKENS_AT_ONCE))
        )
        assert set(left) == {grpc.StatusCode.DEADLINE_EXCEEDED}
        began = time.monotonic()
        assert await metrics_call(channel, "wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - began < 2 * WRONG_TOKEN_DELAY_S


async def test_a_call_without_the_right_token_is_refused_before_its_request_is_read(
    tmp_path: Path,
) -> None:
    # A request is received whole before gRPC calls a unary handler: a peer without the
    # token that declared 16 MiB requests and sent part of each had the executor hold what
    # it sent, 60 streams x 12 MiB on one connection, waiting for the rest (probe 167).
    execute = "/qbcallback.v1.CallbackExecutorService/Execute"
    wait_jobs = "/qbcallback.v1.FarmService/WaitJobs"
    async with running_stack(stack_settings(tmp_path / "data", auth_token=TOKEN)) as stack:
        peer = await UnreadingPeer.connect(stack.running.port)
        try:  # what each sends stays within the connection's first 64 KiB window
            calls = [
                await peer.begin(execute, 16 << 20, 8 << 10),
                await peer.begin(wait_jobs, 1 << 20, 1 << 10),
                await peer.begin(execute, 16 << 20, 8 << 10, ("authorization", "Bearer no")),
            ]

            async def refused() -> bool:
                return peer.ended >= set(calls)

            assert await eventually(refused, timeout_s=10 * WRONG_TOKEN_DELAY_S), peer.ended
        finally:
            await peer.close()


async def test_a_wrong_token_waiting_its_turn_is_sent_no_more_of_its_request_than_the_first_window(
    tmp_path: Path,
) -> None:
    # gRPC took the whole request of a call waiting its turn: 64 guesses of 15 MiB on one
    # connection had the executor hold 800 MB (probe 172). The peer sends as the windows let it.
    execute = "/qbcallback.v1.CallbackExecutorService/Execute"
    async with running_stack(stack_settings(tmp_path / "data", auth_token=TOKEN)) as stack:
        peer = await UnreadingPeer.connect(stack.running.port)
        try:
            stream = await peer.begin(execute, 16 << 20, 0, ("authorization", "Bearer no"))
            until = asyncio.get_running_loop().time() + 10 * WRONG_TOKEN_DELAY_S
            sent = await peer.send_within_windows(stream, 5, until)
            assert stream in peer.ended  # refused, after its turn
            assert sent <= 2 * FIRST_WINDOW, (sent, peer.first_window, peer.granted)
        finally:
            await peer.close()
