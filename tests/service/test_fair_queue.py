"""Fair sharing between users: the queue's places and the freed slots, with real children.

Probe 105: with alice's calls filling the slots and the queue, bob's trivial call waited
44 s behind hers, or was refused RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import grpc
import pytest

from executor.errors import UnavailableError
from supervisor_client import ExecutorRpcError, RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

SLOW = "import time\ntime.sleep(60)"
# When it started, by the clock every process of the host shares.
STAMP = "import time\nprint(time.monotonic())"


async def test_a_second_user_gets_a_place_in_a_full_queue_and_the_next_free_slot(
    tmp_path: Path,
) -> None:
    settings = stack_settings(tmp_path / "data", max_concurrent=1, max_queue=3)
    async with running_stack(settings) as stack:
        dispatcher = stack.running.dispatcher

        def call(code: str, user: str, n: int) -> asyncio.Task[executor_pb2.ExecuteResponse]:
            return asyncio.create_task(
                stack.client.execute_callback(
                    language="python",
                    code=code,
                    job={"id": 1, "user": user},
                    invocation_id=f"{user}-{n}",
                )
            )

        blocker = call(SLOW, "alice", 0)
        assert await eventually(lambda: dispatcher.running == 1, timeout_s=20)
        alice = []
        for n in range(1, 4):  # one at a time: their order in the queue is known
            alice.append(call(STAMP, "alice", n))
            assert await eventually(lambda: dispatcher.waiting == len(alice))
        bob = call(STAMP, "bob", 1)

        # The queue is full of alice's: bob's call takes the place of her newest.
        with pytest.raises(RetryableError) as refused:
            await alice[2]
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "gave its place to a run of user 'bob'" in refused.value.details
        assert refused.value.retry_after_s == 1.0  # the executor's hint, typed (probe 136)
        assert dispatcher.waiting == 3

        blocker.cancel()  # alice's slot frees: her next, then bob's, then her last
        await asyncio.gather(blocker, return_exceptions=True)
        answers = await asyncio.gather(alice[0], alice[1], bob)
        assert [a.outcome for a in answers] == [executor_pb2.Outcome.OUTCOME_SUCCEEDED] * 3
        alice_1, alice_2, bob_1 = (float(a.stdout) for a in answers)
        assert alice_1 < bob_1 < alice_2


async def test_fired_callbacks_take_turns_per_user_and_their_wait_is_their_queue_time(
    tmp_path: Path,
) -> None:
    # Probe 136: bob's one trivial fired callback waited behind all of alice's firings
    # (strict decision order), and its record said queue_seconds=0.00.
    settings = stack_settings(tmp_path / "data", max_concurrent=1)
    async with running_stack(settings) as stack:
        client = stack.client
        stamp_and_sleep = f"{STAMP}\ntime.sleep(1)"
        callbacks = [
            {"triggers": f"complete-job-{n}", "language": "python", "code": stamp_and_sleep}
            for n in (141, 142, 143)
        ]
        await client.register_job({"id": 41, "user": "alice", "callbacks": callbacks})
        bobs = [{"triggers": "complete-job-144", "language": "python", "code": STAMP}]
        await client.register_job({"id": 42, "user": "bob", "callbacks": bobs})
        alice = []
        for n in (141, 142, 143):
            reply = await client.publish_event(name="complete", type="job", job_id=n)
            alice.append(reply.fired[0].invocation_id)
        bob = await client.publish_event(name="complete", type="job", job_id=144, wait=True)

        (fired,) = bob.fired
        assert fired.result.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
        # alice's first took the free slot, her second was in the round before bob;
        # bob's went before her third.
        runs = [await eventually(partial(_recorded, stack, i), timeout_s=30) for i in alice]
        alice_started = [float(run.result.stdout) for run in runs if run is not None]
        assert alice_started[1] < float(fired.result.stdout) < alice_started[2]
        record = await client.get_run(fired.invocation_id)
        assert record.usage.queue_seconds > 0.9  # from its decision to its start


async def _recorded(stack: Stack, invocation_id: str) -> executor_pb2.Run | None:
    try:
        return await stack.client.get_run(invocation_id)
    except ExecutorRpcError as err:
        if err.code != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def test_a_queued_execute_does_not_start_once_the_storage_cannot_record(
    tmp_path: Path,
) -> None:
    # Probe 136: the refusals that stop every run were checked at the door only, so the
    # calls already waiting for a slot started all the same.
    settings = stack_settings(tmp_path / "data", max_concurrent=1)
    async with running_stack(settings) as stack:
        dispatcher = stack.running.dispatcher

        def call(code: str, n: int) -> asyncio.Task[executor_pb2.ExecuteResponse]:
            return asyncio.create_task(
                stack.client.execute_callback(
                    language="python", code=code, job={"id": 1}, invocation_id=f"run-{n}"
                )
            )

        blocker = call(SLOW, 1)
        assert await eventually(lambda: dispatcher.running == 1, timeout_s=20)
        queued = call(STAMP, 2)
        assert await eventually(lambda: dispatcher.waiting == 1)
        health = stack.running.recorder._health
        assert health is not None
        # Its probe finds the storage writable a second later: the slot frees before.
        health.failed(UnavailableError("cannot write outbox.db: disk I/O error"))
        blocker.cancel()

        with pytest.raises(RetryableError) as refused:
            await queued
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert "cannot record results now, so it runs nothing" in refused.value.details
        await asyncio.gather(blocker, return_exceptions=True)
        with pytest.raises(ExecutorRpcError) as unknown:
            await stack.client.get_run("run-2")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
