"""Fair sharing between users: the queue's places and the freed slots, with real children.

Probe 105: with alice's calls filling the slots and the queue, bob's trivial call waited
44 s behind hers, or was refused RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from supervisor_client import RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import running_stack, stack_settings
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
