"""Execute's invocation-id checks in a fleet: another replica's firings and runs count too.

They are asked of the shared store in one statement (``executor.runs.invocation_ids``).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from supervisor_client import ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.fleet.harness import two_replicas

pytestmark = pytest.mark.service


async def test_an_id_another_replica_used_is_refused_for_another_run_and_kept_for_a_retry(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_replicas(tmp_path, pg_url) as (first, second):
        job = {"id": 72_000, "name": "ids", "user": "fleet"}
        ran = await first.execute_callback(
            language="python", code="print('one')", job=job, invocation_id="fleet-id-1"
        )
        assert ran.outcome == executor_pb2.OUTCOME_SUCCEEDED

        # A retry of the same callback at the other replica runs again.
        again = await second.execute_callback(
            language="python", code="print('one')", job=job, invocation_id="fleet-id-1"
        )
        assert again.outcome == executor_pb2.OUTCOME_SUCCEEDED

        # Another job's run under that id is refused, whichever replica is asked.
        for client in (first, second):
            with pytest.raises(ExecutorRpcError) as refused:
                await client.execute_callback(
                    language="python",
                    code="print('two')",
                    job={**job, "id": 72_001},
                    invocation_id="fleet-id-1",
                )
            assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
            assert "already recorded for another run" in refused.value.details


async def test_the_id_of_a_firing_running_at_another_replica_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_replicas(tmp_path, pg_url) as (first, second):
        await first.register_job(
            {
                "id": 72_100,
                "name": "slow",
                "user": "fleet",
                "callbacks": [
                    {
                        "triggers": "complete-job-self",
                        "language": "python",
                        "code": "import time; time.sleep(4)",
                    }
                ],
            }
        )
        reply = await first.publish_event(
            name="complete", type="job", job_id=72_100, event_id="slow-72100"
        )
        (firing,) = reply.fired

        with pytest.raises(ExecutorRpcError) as refused:
            await second.execute_callback(
                language="python",
                code="print('intruder')",
                job={"id": 72_100, "name": "slow", "user": "fleet"},
                invocation_id=firing.invocation_id,
            )
        assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert "is a fired callback's, which has not run to its end yet" in refused.value.details
