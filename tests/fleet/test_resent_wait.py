"""A waiting event resent to another replica after a failover answers once its firing has run.

The README tells a publisher whose call failed UNAVAILABLE to send it again, with the same
``event_id``, to another replica. The event was applied at the first replica, so the
resend is a repeat: it decides nothing, but with ``wait`` it still answers only once the
callbacks the event fired have run (at the replica that took the firing over), with their
results.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor_client import ExecutorClient, RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.fleet.harness import fleet
from tests.fleet.test_fencing import own_pg_url, submit_blocked_job
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

__all__ = ["own_pg_url"]  # the fixture, used by name


async def test_a_waiting_resend_after_a_failover_answers_with_the_taken_over_run(
    tmp_path: Path, own_pg_url: str
) -> None:
    # Replica 0 is killed while its run sleeps after its qb call; replica 1 takes the
    # firing over once the lease runs out and runs it to its end.
    code = "import time\nqb.unblock(qb.jobid())\ntime.sleep(3)\nprint('done')"
    async with fleet(tmp_path, own_pg_url, replicas=2) as group:
        job = submit_blocked_job(group, code)
        async with (
            ExecutorClient(group.address(0)) as first,
            ExecutorClient(group.address(1)) as second,
        ):
            await first.register_job(job)
            waiting = asyncio.ensure_future(
                first.publish_event(
                    name="complete", type="job", job_id=job["id"], event_id="resent", wait=True
                )
            )
            assert await eventually(lambda: group.counting.action_requests, timeout_s=30)
            ((invocation_id, _), *_) = group.counting.action_requests
            await group.kill(0)
            with pytest.raises(RetryableError):
                await waiting
            reply = await second.publish_event(
                name="complete", type="job", job_id=job["id"], event_id="resent", wait=True
            )
        assert reply.duplicate
        (firing,) = reply.fired
        assert (firing.invocation_id, firing.job_id, firing.callback_id) == (
            invocation_id,
            job["id"],
            1,
        )
        # The run replica 1 took over, to its end (replica 0's never printed).
        assert firing.result.outcome == executor_pb2.OUTCOME_SUCCEEDED
        assert firing.result.stdout == "done\n"
