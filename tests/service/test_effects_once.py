"""Effects once, end to end: a real executor re-running a callback applies its effects once.

The executor numbers a run's actions, and a re-run of the same callback with the same
invocation id is answered from the reference supervisor's record. The executor is
pointed (``supervisor=``) at the reference Supervisor service on its own loopback port
(``tests.helpers.supervisors``), which records every action request's
``(invocation_id, action_seq)``; the store's history shows what was applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from executor import server
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import stack_settings
from tests.helpers.supervisors import SupervisorEndpoint
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

CALLBACK = """
j = qb.jobid()
print(qb.workunblock(f"{j}:1"))
print(qb.jobstatus(j))
print(qb.block(j))
print(qb.subjobkill(f"{j}.1"))
print(qb.jobstatus(j))
"""


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[SupervisorEndpoint]:
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db")
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()
        endpoint.store.close()


async def test_a_rerun_with_the_same_invocation_id_applies_its_effects_once(
    tmp_path: Path, endpoint: SupervisorEndpoint
) -> None:
    store = endpoint.store
    (job,) = store.submit(
        [
            {
                "name": "comp",
                "user": "alice",
                "status": "pending",
                "cpus": 2,
                "agenda": [{"name": str(n), "status": "blocked"} for n in (1, 2)],
            }
        ]
    )
    job_id = int(job["id"])
    settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
    running = await server.start(settings)
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:

            async def run() -> executor_pb2.ExecuteResponse:
                response = await client.execute_callback(
                    language="python",
                    code=CALLBACK,
                    job=store.job(job_id),
                    invocation_id="rerun-1",
                )
                assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
                return response

            first = await run()
            sent = list(endpoint.servicer.action_requests)
            # Between the runs an operator undoes the block (unnumbered: applied).
            store.job_action("unblock", job_id, "alice")
            repeat = await run()
            # Another run of the same callback is another invocation: applied again.
            other = await client.execute_callback(
                language="python", code=CALLBACK, job=store.job(job_id)
            )
            assert await eventually(lambda: len(store.results()) == 2, timeout_s=30.0)
    finally:
        await running.stop()

    # The executor numbers the actions from 1, in the callback's order; reads take none.
    assert sent == [("rerun-1", 1), ("rerun-1", 2), ("rerun-1", 3)]
    assert endpoint.servicer.action_requests[3:6] == sent
    assert endpoint.servicer.action_requests[6:] == [(other.invocation_id, n) for n in (1, 2, 3)]
    # The re-run got the first run's answers, and applied nothing: the job stays unblocked.
    assert first.stdout.splitlines() == ["1", "pending", "1", "1", "blocked"]
    assert repeat.stdout.splitlines() == ["1", "pending", "1", "1", "pending"]
    verbs = [(a.verb, a.message) for a in first.actions if a.verb != "jobstatus"]
    assert [(a.verb, a.message) for a in repeat.actions if a.verb != "jobstatus"] == verbs
    assert [verb for verb, _ in verbs] == ["workunblock", "block", "subjobkill"]
    applied = [line for line in store.history(job_id) if line["invocation_id"] == "rerun-1"]
    assert len([line for line in applied if " by alice:" in line["text"]]) == 3
    assert other.stdout.splitlines()[-1] == "blocked"
