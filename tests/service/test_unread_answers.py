"""Answers held for clients that never read them: counted, and calls refused past their bound.

Against a real executor over loopback, the non-reading client a raw HTTP/2 connection
with a zero flow-control window (``tests/helpers/unreading_peer.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import grpc
import pytest

from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.unreading_peer import UnreadingPeer
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

MIB: Final = 1 << 20
# The bound, and so a connection's share of it (a quarter): 4 MiB, two 3 MiB answers.
BOUND_BYTES: Final = 16 * MIB
EXECUTE: Final = "/qbcallback.v1.CallbackExecutorService/Execute"
GET_RUN: Final = "/qbcallback.v1.RunService/GetRun"


def big_run_request(invocation_id: str = "") -> executor_pb2.ExecuteRequest:
    """A run whose answer (and record) holds 3 MiB of output."""
    return executor_pb2.ExecuteRequest(
        invocation_id=invocation_id,
        callback=types_pb2.Callback(
            language="python", code="import sys; sys.stdout.write('x' * (3 << 20))"
        ),
        context=executor_pb2.JobContext(job=types_pb2.Job(id=1)),
        limits=executor_pb2.Limits(output_bytes=4 * MIB),
    )


@contextlib.asynccontextmanager
async def peers(port: int, count: int) -> AsyncIterator[list[UnreadingPeer]]:
    opened = [await UnreadingPeer.connect(port) for _ in range(count)]
    try:
        yield opened
    finally:
        for peer in opened:
            await peer.close()


async def get_run(stack: Stack, invocation_id: str) -> executor_pb2.GetRunResponse:
    stub = executor_pb2_grpc.RunServiceStub(stack.channel)
    answer: executor_pb2.GetRunResponse = await stub.GetRun(
        executor_pb2.GetRunRequest(invocation_id=invocation_id), timeout=30
    )
    return answer


async def test_unread_get_runs_are_bounded_per_connection_and_in_all(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data", unread_answers_max_bytes=BOUND_BYTES)
    async with running_stack(settings) as stack:
        ran = await stack.stub.Execute(big_run_request("bigrun-1"), timeout=60)
        assert ran.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
        request = executor_pb2.GetRunRequest(invocation_id="bigrun-1")
        async with peers(stack.running.port, 3) as unreading:
            first = unreading[0]
            for _ in range(5):
                await first.call(GET_RUN, request)
            # A connection's share (4 MiB) takes two 3 MiB answers (GetRuns are made one
            # at a time, each counted before the next is checked); its other calls wait
            # for its answers to be read.
            assert await eventually(lambda: first.held >= 2), first.headed
            # Come now, a call is refused at once: its stream ends, unanswered.
            late = await first.call(GET_RUN, request)
            assert await eventually(lambda: late in first.ended), first.ended
            assert first.held == 2, (first.held, first.ended)

            # Other connections do the same, until the answers held reach the bound.
            async def refused_at_the_bound() -> grpc.aio.AioRpcError | None:
                try:
                    await get_run(stack, "bigrun-1")
                except grpc.aio.AioRpcError as err:
                    return err
                return None

            for peer in unreading[1:]:
                for _ in range(5):
                    await peer.call(GET_RUN, request)
            # Three connections hold 16 MiB or more, the bound: anyone's GetRun and
            # Execute are refused, retryably, before they run.
            error = await eventually(refused_at_the_bound)
            assert error is not None
            assert all(peer.held <= 2 for peer in unreading), [p.held for p in unreading]
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "have not read, unread_answers_max_bytes (16.0 MiB)" in str(error.details())
            assert ("retry-after-s", "1") in tuple(error.trailing_metadata() or ())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stack.stub.Execute(big_run_request(), timeout=60)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Calls whose answers are small go on.
            assert (await stack.client.list_runs(limit=10)).runs
        # The connections closed, their answers are let go of: a GetRun is answered again.
        answered = await eventually(lambda: _answers(stack), timeout_s=10)
        assert answered


async def _answers(stack: Stack) -> bool:
    try:
        answer = await get_run(stack, "bigrun-1")
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False
    return len(answer.run.result.stdout) == 3 * MIB


async def test_unread_execute_answers_stop_further_runs_of_their_connection(
    tmp_path: Path,
) -> None:
    # One slot: the five runs start one after another, each after its connection's check.
    settings = stack_settings(
        tmp_path / "data", unread_answers_max_bytes=BOUND_BYTES, max_concurrent=1
    )
    async with running_stack(settings) as stack:
        async with peers(stack.running.port, 1) as (peer,):
            for n in range(5):
                await peer.call(EXECUTE, big_run_request(f"unread-{n}"))
            # Two runs answered (6 MiB held, past the 4 MiB share; a third if it started
            # before the second's answer counted); those that had not started when it
            # was reached are refused, nothing run or recorded.
            assert await eventually(lambda: peer.settled(5), timeout_s=30), peer.headed
            assert 2 <= peer.held <= 3, (peer.held, peer.ended)
            held = peer.held
            # Another connection's run is not this one's to pay for.
            other = await stack.stub.Execute(big_run_request(), timeout=60)
            assert other.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
        runs = (await stack.client.list_runs(limit=10)).runs
        unread = sorted(r.invocation_id for r in runs if r.invocation_id.startswith("unread-"))
        assert len(unread) == held, unread
