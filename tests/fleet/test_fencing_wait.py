"""A publisher waiting at a replica that stalled past its lease gets the re-run's result.

The stalled replica's own run of the firing is fenced off (tests/fleet/test_fencing.py):
its result is neither reported nor kept. Answering ``PublishEvent(wait=True)`` with it
would tell the caller of a run that is not the firing's; the answer waits for the run of
record instead.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.fleet.harness import fleet
from tests.fleet.test_fencing import (
    STALL_S,
    WALL_S,
    own_pg_url,
    requests_of,
    stopped,
    submit_blocked_job,
)
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

__all__ = ["own_pg_url"]  # the fixture, used by name


async def test_a_wait_publisher_at_a_stalled_replica_gets_the_reruns_result(
    tmp_path: Path, own_pg_url: str
) -> None:
    code = "import time\nqb.unblock(qb.jobid())\ntime.sleep(1)\nqb.block(qb.jobid())\nprint('done')"
    env = {"CBEXEC_DEFAULT_LIMITS__WALL_SECONDS": str(WALL_S)}
    async with fleet(tmp_path, own_pg_url, replicas=2, env=env) as group:
        job = submit_blocked_job(group, code)
        replica = group.replicas[0]
        assert replica is not None
        async with ExecutorClient(replica.address) as client:
            await client.register_job(job)
            waiting = asyncio.ensure_future(
                client.publish_event(
                    name="complete", type="job", job_id=job["id"], event_id="fence-wait", wait=True
                )
            )
            assert await eventually(lambda: group.counting.action_requests, timeout_s=30)
            ((invocation_id, _), *_) = group.counting.action_requests
            stalled_at = time.monotonic()
            with stopped(replica.proc.pid):
                # Replica 1 claims the firing after the lease and runs it to its report.
                assert await eventually(lambda: group.counting.applied[invocation_id], timeout_s=30)
                await asyncio.sleep(max(0.0, STALL_S - (time.monotonic() - stalled_at)))
            reply = await asyncio.wait_for(waiting, timeout=60)
        assert requests_of(group, invocation_id) >= 2  # it did run twice
        (firing,) = reply.fired
        assert firing.invocation_id == invocation_id
        assert firing.result.outcome == executor_pb2.OUTCOME_SUCCEEDED
        assert firing.result.stdout == "done\n"
        # The re-run's (a second or so), not the stalled run's (past the stall).
        assert firing.result.usage.wall_seconds < WALL_S, firing.result.usage
