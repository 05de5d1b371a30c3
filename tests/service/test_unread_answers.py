"""Answers held for clients that never read them: counted, and calls refused past their bound.

Against a real executor over loopback, the non-reading client a raw HTTP/2 connection
with a zero flow-control window (``tests/helpers/unreading_peer.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import grpc
import pytest
from google.protobuf.message import Message

from executor.config import Settings
from supervisor_client import ExecutorClient
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
PUBLISH_EVENT: Final = "/qbcallback.v1.TriggerService/PublishEvent"
PUBLISH_EVENTS: Final = "/qbcallback.v1.TriggerService/PublishEvents"
# What a wait answer's results keep of their output, in all (the README's bound).
WAIT_ANSWER_OUTPUT: Final = 32 * MIB


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


async def _share_held_then_refused(peer: UnreadingPeer, method: str, request: Message) -> None:
    """Five calls of 3 MiB answers on ``peer``: its share holds two, a sixth is refused."""
    for _ in range(5):
        await peer.call(method, request)
    # A connection's share (4 MiB) takes two 3 MiB answers; its other calls wait for its
    # answers to be read.
    assert await eventually(lambda: peer.held >= 2), peer.headed
    # Come now, a call is refused at once: its stream ends, unanswered.
    late = await peer.call(method, request)
    assert await eventually(lambda: late in peer.ended), peer.ended
    assert peer.held == 2, (peer.held, peer.ended)


async def test_unread_get_runs_are_bounded_per_connection_and_in_all(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data", unread_answers_max_bytes=BOUND_BYTES)
    async with running_stack(settings) as stack:
        ran = await stack.stub.Execute(big_run_request("bigrun-1"), timeout=60)
        assert ran.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
        request = executor_pb2.GetRunRequest(invocation_id="bigrun-1")
        async with peers(stack.running.port, 3) as unreading:
            # GetRuns are made one at a time, each counted before the next is checked.
            await _share_held_then_refused(unreading[0], GET_RUN, request)

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


def _writes(stdout_mib: int, stderr_mib: int = 0) -> str:
    return (
        f"import sys; sys.stdout.write('x' * ({stdout_mib} << 20));"
        f" sys.stderr.write('y' * ({stderr_mib} << 20))"
    )


def _big_output_settings(tmp_path: Path, **overrides: object) -> Settings:
    settings = stack_settings(tmp_path / "data", **overrides)
    limits = dataclasses.replace(settings.default_limits, output_bytes=16 * MIB)
    return settings.replace(default_limits=limits)


def _completed(job_id: int, event_id: str = "", *, wait: bool) -> executor_pb2.PublishEventRequest:
    return executor_pb2.PublishEventRequest(
        name="complete", type="job", job_id=job_id, event_id=event_id, wait=wait
    )


async def test_unread_resends_of_a_waited_event_are_bounded_per_connection(
    tmp_path: Path,
) -> None:
    settings = _big_output_settings(tmp_path, unread_answers_max_bytes=BOUND_BYTES)
    async with running_stack(settings) as stack:
        callbacks = [{"triggers": "complete-job-self", "language": "python", "code": _writes(3)}]
        await stack.client.register_job({"id": 7, "name": "big", "callbacks": callbacks})
        async with ExecutorClient(stack.address) as reading:  # takes answers up to 160 MiB
            first = await reading.publish_event(_completed(7, "big-1", wait=True), timeout=60)
        assert len(first.fired[0].result.stdout) == 3 * MIB
        resend = _completed(7, "big-1", wait=True)
        async with peers(stack.running.port, 1) as (peer,):
            # Each resend is answered from the history, its 3 MiB read one at a time.
            await _share_held_then_refused(peer, PUBLISH_EVENT, resend)
            # An event without wait, alone or batched, is never refused: it is applied.
            alone = await peer.call(PUBLISH_EVENT, _completed(7, "small-1", wait=False))
            batched = await peer.call(
                PUBLISH_EVENTS,
                executor_pb2.PublishEventsRequest(events=[_completed(7, "small-2", wait=False)]),
            )
            assert await eventually(lambda: {alone, batched} <= peer.headed), peer.headed
            assert not {alone, batched} & peer.ended, peer.ended


async def test_a_wait_answer_keeps_32_mib_of_output_first_come_first_kept(tmp_path: Path) -> None:
    settings = _big_output_settings(tmp_path)
    async with running_stack(settings) as stack:
        # 20 + 10 MiB fit in 32, the third's 3 MiB do not, the fourth's 1 MiB does.
        codes = [_writes(4, 16), _writes(10), _writes(3), _writes(1)]
        callbacks = [
            {"triggers": "complete-job-self", "language": "python", "code": code} for code in codes
        ]
        await stack.client.register_job({"id": 8, "name": "many", "callbacks": callbacks})
        for event_id in ("many-1", "many-1"):  # the first application, then a resend
            async with ExecutorClient(stack.address) as reading:  # up to 160 MiB
                answer = await reading.publish_event(_completed(8, event_id, wait=True), timeout=60)
            fired = list(answer.fired)  # in firing order: the callbacks' order
            assert [f.callback_id for f in fired] == sorted(f.callback_id for f in fired)
            assert [f.result.outcome for f in fired] == [executor_pb2.Outcome.OUTCOME_SUCCEEDED] * 4
            kept = [len(f.result.stdout) + len(f.result.stderr) for f in fired]
            assert kept == [20 * MIB, 10 * MIB, 0, MIB], kept
            assert [f.output_left_out for f in fired] == [False, False, True, False]
            assert sum(kept) <= WAIT_ANSWER_OUTPUT
            # The run's whole output is in its record.
            whole = await get_run(stack, fired[2].invocation_id)
            assert len(whole.run.result.stdout) == 3 * MIB
