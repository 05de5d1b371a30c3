"""`farm wait` after a kill -9 waits for the firings decided before it, as it does without one.

A real `cbexec serve` with the embedded supervisor: jobA's `complete-job-self` callback
unblocks jobB, then sleeps. The executor is killed while it sleeps, so the firing is
still queued in triggers.db, while the event that fired it was acknowledged already and
no longer waits in supervisor.db. At the restart the firing runs again, and WaitJobs for
jobA answers only once that run has ended: the run history then holds it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor_client import ExecutorClient, FarmClient
from tests.helpers.executor_process import executor_process

pytestmark = pytest.mark.faults

# Long enough that the kill surely comes while the callback sleeps, and that the restart
# (a second or two) does not outlast its re-run, which a WaitJobs that ignored it would miss.
CALLBACK_SLEEP_S = 4


def jobs() -> list[dict[str, Any]]:
    """jobA, whose end fires a slow callback that unblocks jobB first."""
    return [
        {
            "name": "jobA",
            "label": "jobA",
            "user": "alice",
            "agenda": ["1"],
            "callbacks": [
                {
                    "triggers": "complete-job-self",
                    "language": "python",
                    "code": f"import time\nqb.unblock(qb.jobid() + 1)\ntime.sleep({CALLBACK_SLEEP_S})",
                }
            ],
        },
        {"name": "jobB", "label": "jobB", "user": "alice", "status": "blocked", "agenda": ["1"]},
    ]


async def _until_unblocked(farm: FarmClient, job_id: int) -> None:
    deadline = time.monotonic() + 30
    while (await farm.get_job(job_id)).job.status == "blocked":
        assert time.monotonic() < deadline, f"job {job_id} was never unblocked"
        await asyncio.sleep(0.05)


async def test_wait_after_a_kill_holds_until_the_restored_firing_has_run(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "executor.log"
    async with executor_process(data, "", log) as first:
        async with FarmClient(first.address) as farm:
            a, b = (job.id for job in (await farm.submit_jobs(jobs())).jobs)
            assert b == a + 1
            await farm.change_work(job_id=a, work=["1"], change="complete")
            await _until_unblocked(farm, b)  # the callback now sleeps
            first.sigkill()
        assert await first.proc.wait() == -signal.SIGKILL, log.read_text()

    async with (
        executor_process(data, "", log) as second,
        FarmClient(second.address) as farm,
        ExecutorClient(second.address) as client,
    ):
        waited = await farm.wait_jobs([a], wait_seconds=60)
        assert waited.done, log.read_text()
        runs = (await client.list_runs(job_id=a)).runs
        assert [(run.callback_id, run.triggers) for run in runs] == [(1, "complete-job-self")], (
            log.read_text()
        )
        shown = await farm.get_job(b)
    unblocks = [line.text for line in shown.history if "unblock by" in line.text]
    assert len(unblocks) == 1, unblocks
