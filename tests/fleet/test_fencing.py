"""A replica stalled past its lease (SIGSTOP) while it ran a firing: the re-run's result is the firing's.

Another replica claims the firing once the lease has run out and runs it again with the
same invocation id. When the stalled replica wakes and its own run ends, before or after
the re-run's, its claim no longer holds: its result is neither reported nor put in the
fleet's history, where, ending later, it would replace the re-run's. And its run is
judged by what the callback did: the qb call it sent in time and the stalled replica
answered only on waking is not a WALL_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.migrations import migrate
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.fleet.harness import Fleet, fleet
from tests.helpers.postgres import PostgresServer
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

# Shorter than the stall, so that the stalled run would be past its deadline.
WALL_S = 4
STALL_S = 7.0
# How long the re-run's first qb call may wait for its answer while the woken replica
# ends its run (within about a second): below the supervisor timeout the test sets and
# the re-run's 30 s wall limit.
RERUN_HELD_AT_MOST_S = 15.0


@pytest.fixture
def own_pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A migrated database of this test's own: each test's supervisor numbers jobs from 1."""
    url = postgres.create_database(request.node.name.removeprefix("test_")[:40])
    migrate(url)
    return url


def submit_blocked_job(group: Fleet, code: str) -> dict[str, Any]:
    (job,) = group.endpoint.store.submit(
        [
            {
                "name": "stalled",
                "user": "fleet",
                "status": "blocked",
                "pgrp": 0,
                "callbacks": [
                    {"triggers": "complete-job-self", "language": "python", "code": code}
                ],
            }
        ]
    )
    return group.endpoint.store.job(int(job["id"]), include_callbacks=True)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process frozen (SIGSTOP), as a paused host would be; thawed after, whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def fire_at_replica_0(group: Fleet, code: str) -> tuple[int, str, int]:
    """Register a job with ``code`` and fire it at replica 0: (job id, invocation id, pid)."""
    job = submit_blocked_job(group, code)
    replica = group.replicas[0]
    assert replica is not None
    async with ExecutorClient(replica.address) as client:
        await client.register_job(job)
        reply = await client.publish_event(
            name="complete", type="job", job_id=job["id"], event_id=f"fence-{job['id']}"
        )
    (firing,) = reply.fired
    return int(job["id"]), firing.invocation_id, replica.proc.pid


def requests_of(group: Fleet, invocation_id: str) -> int:
    return sum(1 for inv, _ in group.counting.action_requests if inv == invocation_id)


def run_lines(group: Fleet, index: int, job_id: int) -> list[str]:
    """Replica ``index``'s 'callback ran' log lines for the job."""
    log = (group.root / f"replica-{index}.log").read_text()
    return [line for line in log.splitlines() if f"callback ran: job={job_id} " in line]


async def fleet_history(group: Fleet, job_id: int) -> list[executor_pb2.Run]:
    async with ExecutorClient(group.address(1)) as client:
        return list((await client.list_runs(job_id=job_id)).runs)


async def assert_only_the_rerun_counts(
    group: Fleet, job_id: int, invocation_id: str, *, rerun_wall_below: float
) -> None:
    """The stalled replica's run ended and was fenced off; the re-run's is the only result."""
    assert await eventually(lambda: run_lines(group, 0, job_id), timeout_s=30)
    # Judged by what it did: its qb call went out in time (answered once it woke).
    assert "outcome=SUCCEEDED" in run_lines(group, 0, job_id)[0]
    # Reported once: the stalled replica's result never reaches the supervisor (a
    # delivery takes well under a second; it is given five).
    await asyncio.sleep(5)
    assert group.counting.applied[invocation_id] == 1, group.counting.applied
    (run,) = await fleet_history(group, job_id)
    assert run.outcome == executor_pb2.OUTCOME_SUCCEEDED
    assert run.usage.wall_seconds < rerun_wall_below  # the re-run's, not the stalled one's
    rerun_lines = run_lines(group, 1, job_id)
    assert rerun_lines, "replica 1 did not re-run the firing"
    # The re-run's own: its wall as replica 1 logged it (to the ms; the history's is a REAL).
    (logged_wall,) = re.findall(r" wall=([0-9.]+)s ", rerun_lines[0])
    assert run.usage.wall_seconds == pytest.approx(float(logged_wall), abs=0.002)
    assert (
        f"firing {invocation_id} ran here after its lease ran out"
        in (group.root / "replica-0.log").read_text()
    )


async def test_a_stalled_replica_that_ends_after_the_rerun_does_not_replace_its_result(
    tmp_path: Path, own_pg_url: str
) -> None:
    code = "import time\nqb.unblock(qb.jobid())\ntime.sleep(1)\nqb.block(qb.jobid())\nprint('done')"
    env = {"CBEXEC_DEFAULT_LIMITS__WALL_SECONDS": str(WALL_S)}
    async with fleet(tmp_path, own_pg_url, replicas=2, env=env) as group:
        job_id, invocation_id, pid = await fire_at_replica_0(group, code)
        assert await eventually(lambda: requests_of(group, invocation_id) >= 1, timeout_s=30)
        stalled_at = time.monotonic()
        with stopped(pid):
            # Replica 1 claims the firing after the lease and runs it to its report.
            assert await eventually(lambda: group.counting.applied[invocation_id], timeout_s=30)
            await asyncio.sleep(max(0.0, STALL_S - (time.monotonic() - stalled_at)))
        await assert_only_the_rerun_counts(group, job_id, invocation_id, rerun_wall_below=WALL_S)


async def test_a_stalled_replica_that_ends_before_the_rerun_is_not_reported(
    tmp_path: Path, own_pg_url: str
) -> None:
    # Replica 0 is stopped from the callback's first qb call until the re-run has begun
    # (once the 6 s lease has run out); its callback's second call, 8 s after it began,
    # comes about when it wakes, so it ends soon after. The re-run's first qb call is
    # answered only once replica 0's run has ended, so the re-run cannot end first,
    # however loaded the machine.
    code = (
        "import time\n"
        "began = time.monotonic()\n"
        "qb.unblock(qb.jobid())\n"
        # From the start, not from the answer: the stop may land before the answer has
        # reached the callback (the supervisor counts a call before it answers), and an
        # answer held up until the wake must not put off this run's end by 8 s.
        "time.sleep(max(0.0, began + 8 - time.monotonic()))\n"
        "qb.block(qb.jobid())\n"
        "print('done')"
    )
    env = {
        "CBEXEC_STORE_LEASE_SECONDS": "6",
        # Replica 0's first answer may be held up by the stop (~8 s), and the re-run's
        # by the test (RERUN_HELD_AT_MOST_S): a slow answer, not a supervisor that failed.
        "CBEXEC_SUPERVISOR_TIMEOUT_SECONDS": "30",
    }
    async with fleet(tmp_path, own_pg_url, replicas=2, env=env) as group:
        job_id, invocation_id, pid = await fire_at_replica_0(group, code)
        # The invocation's second qb call is the re-run's first: replica 0 is stopped.
        rerun_may_go_on = group.counting.hold_answer(invocation_id, 2)
        assert await eventually(lambda: requests_of(group, invocation_id) >= 1, timeout_s=30)
        with stopped(pid):
            # The re-run has begun once its first qb call (the same action) arrives.
            assert await eventually(lambda: requests_of(group, invocation_id) >= 2, timeout_s=30)
        try:
            ended = await eventually(lambda: run_lines(group, 0, job_id), RERUN_HELD_AT_MOST_S)
            assert ended, "replica 0 did not end its run after waking"
            assert not run_lines(group, 1, job_id), "the re-run ended first: not the case tested"
        finally:
            rerun_may_go_on.set()
        assert await eventually(lambda: run_lines(group, 1, job_id), timeout_s=30)
        await assert_only_the_rerun_counts(group, job_id, invocation_id, rerun_wall_below=30)
