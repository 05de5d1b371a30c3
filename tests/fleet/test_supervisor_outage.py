"""A fleet waits out a supervisor outage replica by replica: no fired run fails for it.

Two replicas on one PostgreSQL store and one reference supervisor, which the test stops
and starts again. Each replica is published half of the frames' ``complete`` events
while the supervisor is away; each holds its own fired runs (its log says so once) and
runs them once the supervisor answers, so every frame is unblocked and every run of
record SUCCEEDED.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import pytest

from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.fleet.harness import fleet
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

FRAMES: Final = 8
UNBLOCK: Final = "qb.workunblock('%d:%s' % (qb.jobid(), qb.workid()))\n"
HOLDING: Final = "holding fired runs"
RESUMING: Final = "fired runs resume"


async def test_each_replica_holds_its_fired_runs_while_the_supervisor_is_away(
    tmp_path: Path, pg_url: str
) -> None:
    async with fleet(tmp_path, pg_url, replicas=2) as group:
        endpoint = group.endpoint
        names = [str(n) for n in range(1, FRAMES + 1)]
        (job,) = endpoint.store.submit([{"name": "frames", "user": "alice", "agenda": names}])
        job_id = int(job["id"])
        endpoint.store.work_action("block", job_id, names, "alice")
        logs = [tmp_path / f"replica-{index}.log" for index in range(2)]
        async with (
            ExecutorClient(group.address(0)) as first,
            ExecutorClient(group.address(1)) as second,
        ):
            callback = {"triggers": "complete-work-self-*", "language": "python", "code": UNBLOCK}
            await first.register_job(
                {"id": job_id, "name": "frames", "user": "alice", "callbacks": [callback]}
            )
            await endpoint.stop()
            for index, client in enumerate((first, second)):
                await client.publish_events(
                    [
                        {"name": "complete", "type": "work", "job_id": job_id, "work_name": name}
                        for name in names[index::2]
                    ]
                )
            for log in logs:

                def holding(log: Path = log) -> bool:
                    return HOLDING in log.read_text()

                assert await eventually(holding, timeout_s=30)
            await asyncio.sleep(1.0)  # the outage goes on
            await endpoint.start()

            async def all_done() -> bool:
                return (await first.get_metrics()).firings_queued == 0

            assert await eventually(all_done, timeout_s=60)

            async def recorded() -> list[executor_pb2.Run]:
                # A replica's bookkeeping thread writes a run a moment after it ends.
                runs = (await first.list_runs(job_id=job_id, limit=100)).runs
                outcomes = {run.outcome for run in runs if run.work_name}
                return list(runs) if outcomes == {executor_pb2.OUTCOME_SUCCEEDED} else []

            runs = await eventually(recorded, timeout_s=10) or list(
                (await first.list_runs(job_id=job_id, limit=100)).runs
            )
        job_now = endpoint.store.job(job_id)
    assert job_now is not None
    assert [w["name"] for w in job_now["agenda"] if w["status"] == "blocked"] == []
    fired = [run for run in runs if run.work_name]
    assert len(fired) == FRAMES, runs
    assert {executor_pb2.Outcome.Name(run.outcome) for run in fired} == {"OUTCOME_SUCCEEDED"}
    for log in logs:
        text = log.read_text()
        assert text.count(HOLDING) == 1 and text.count(RESUMING) == 1, text
