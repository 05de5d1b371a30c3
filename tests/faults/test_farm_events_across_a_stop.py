"""The embedded farm's events survive a stop or a kill -9 right after the change that made them.

A real `cbexec serve` with the embedded supervisor: frames of jobA complete, and at once
the executor is stopped (SIGTERM) or killed (SIGKILL), then started again on the same data
dir. The stop comes within milliseconds of the change: its events may still wait in
supervisor.db (sent after the restart), or be latched with their firings queued in
triggers.db (run after it), and jobA's first frame fires a slow callback that is still
running when the executor goes. Whichever it was, each of jobB's per-frame callbacks runs
exactly once. (An event left unsent at a stop is resent with its id:
tests/service/test_event_forwarder.py.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from supervisor_client import ExecutorClient, FarmClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.executor_process import executor_process
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults

FRAMES = ("1", "2", "3")


def jobs() -> list[dict[str, Any]]:
    """jobA, whose frame 1 fires a slow callback; jobB, whose frame N waits for jobA's."""
    return [
        {
            "name": "jobA",
            "label": "jobA",
            "user": "alice",
            "agenda": list(FRAMES),
            "callbacks": [
                {
                    "triggers": "complete-work-self-1",
                    "language": "python",
                    "code": "import time\ntime.sleep(2)",
                }
            ],
        },
        {
            "name": "jobB",
            "label": "jobB",
            "user": "alice",
            "agenda": [{"name": frame, "status": "blocked"} for frame in FRAMES],
            "callbacks": [
                {
                    "triggers": f"complete-work-jobA-{frame}",
                    "language": "python",
                    "code": f"qb.workunblock('%d:{frame}' % qb.jobid())",
                }
                for frame in FRAMES
            ],
        },
    ]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
async def test_frames_completed_just_before_a_stop_fire_their_callbacks_once_after_it(
    tmp_path: Path, stop: signal.Signals
) -> None:
    data, log = tmp_path / "data", tmp_path / "executor.log"
    async with executor_process(data, "", log) as first:
        async with FarmClient(first.address) as farm:
            a, b = (job.id for job in (await farm.submit_jobs(jobs())).jobs)
            changed = await farm.change_work(job_id=a, work=["1-3"], change="complete")
            assert changed.changed == len(FRAMES)
            os.kill(first.proc.pid, stop)
        assert await first.proc.wait() in (0, -signal.SIGKILL), log.read_text()

    async with executor_process(data, "", log) as second, FarmClient(second.address) as farm:
        waited = await farm.wait_jobs([a], wait_seconds=60)
        assert waited.done, log.read_text()
        shown = await farm.get_job(b)
    assert {w.name: w.status for w in shown.job.agenda} == dict.fromkeys(FRAMES, "pending")
    assert [(cb.id, cb.count) for cb in shown.callbacks] == [(1, 1), (2, 1), (3, 1)]
    unblocks = [line.text for line in shown.history if "workunblock by" in line.text]
    assert len(unblocks) == len(FRAMES), unblocks
    assert sorted(text.split(f"work {b}:")[1].split(" ")[0] for text in unblocks) == list(FRAMES)


async def test_a_fired_callback_running_at_a_stop_runs_again_at_the_next_start(
    tmp_path: Path,
) -> None:
    # Marked done when the stop killed it, its frame stayed blocked for good.
    held = {
        "name": "held",
        "label": "held",
        "user": "alice",
        "agenda": [{"name": "1", "status": "blocked"}, "2"],
        "callbacks": [
            {
                "triggers": "complete-work-self-2",
                "language": "python",
                "code": "import time\ntime.sleep(3)\nqb.workunblock('%d:1' % qb.jobid())",
            }
        ],
    }
    data, log = tmp_path / "data", tmp_path / "executor.log"
    async with executor_process(data, "", log) as first:
        async with FarmClient(first.address) as farm, ExecutorClient(first.address) as client:
            (job_id,) = (job.id for job in (await farm.submit_jobs([held])).jobs)
            assert (await farm.change_work(job_id=job_id, work=["2"], change="start")).changed
            assert (await farm.change_work(job_id=job_id, work=["2"], change="complete")).changed
            assert await eventually(lambda: _running(client), timeout_s=30), (
                "the callback never started"
            )
            os.kill(first.proc.pid, signal.SIGTERM)
        assert await first.proc.wait() == 0, log.read_text()

    async with (
        executor_process(data, "", log) as second,
        FarmClient(second.address) as farm,
        ExecutorClient(second.address) as client,
    ):

        async def unblocked() -> bool:
            shown = await farm.get_job(job_id)
            return {w.name: w.status for w in shown.job.agenda}["1"] == "pending"

        assert await eventually(unblocked, timeout_s=30), log.read_text()
        shown = await farm.get_job(job_id)
        runs = (await client.list_runs(job_id=job_id)).runs
    assert [(cb.id, cb.count) for cb in shown.callbacks] == [(1, 1)]  # decided once
    # One run of record: the re-run's, under the killed run's invocation id.
    assert [run.outcome for run in runs] == [executor_pb2.OUTCOME_SUCCEEDED]
    assert "outcome=KILLED" in log.read_text()


async def _running(client: ExecutorClient) -> bool:
    return (await client.get_metrics()).active_children > 0
