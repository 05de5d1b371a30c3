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
from tests.faults.helpers import supervisor_endpoint
from tests.helpers.supervisors import BrieflyUnavailableSupervisor, SupervisorEndpoint
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


# Each call's error is caught: the callback goes on to its next call whatever happened.
ATTEMPTS = """
j = qb.jobid()
def attempt(name, call):
    try:
        print(name, call())
    except qb.SupervisorUnavailable:
        print(name, "unavailable")
attempt("workunblock", lambda: qb.workunblock(f"{j}:1"))
attempt("subjobkill", lambda: qb.subjobkill([f"{j}.0", f"{j}.1"]))
attempt("block", lambda: qb.block(j))
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


async def test_an_id_reused_for_another_job_after_a_crash_is_refused_at_its_first_action(
    tmp_path: Path, endpoint: SupervisorEndpoint
) -> None:
    # A kill -9 cut the first run off after its action 1 (block job A): the executor's
    # history has no record of the id, the supervisor has the action.
    store = endpoint.store
    job_a, job_b = (
        int(job["id"])
        for job in store.submit(
            [{"name": name, "user": "alice", "status": "pending"} for name in ("a", "b")]
        )
    )
    store.job_action("block", job_a, "alice", invocation_id="cut-off", action_seq=1)
    settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
    running = await server.start(settings)
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            response = await client.execute_callback(
                language="python",
                code="print(qb.block(qb.jobid()))",
                job=store.job(job_b),
                invocation_id="cut-off",
            )
    finally:
        await running.stop()

    # The block of job B is refused, visibly; it is not answered with job A's answer.
    assert response.outcome == executor_pb2.OUTCOME_FAILED, response
    assert response.failure.exception_type == "QbError"
    assert "was applied as 'block job" in response.failure.message
    assert store.job(job_b)["status"] == "pending"


@pytest.fixture
async def restarting(tmp_path: Path) -> AsyncIterator[SupervisorEndpoint]:
    db = tmp_path / "supervisor.db"
    async with supervisor_endpoint(db, servicer=BrieflyUnavailableSupervisor) as endpoint:
        yield endpoint


async def test_a_rerun_after_calls_that_found_the_supervisor_away_applies_each_action_once(
    tmp_path: Path, restarting: SupervisorEndpoint
) -> None:
    # Found by fault injection: a work verb whose read of the job failed took no number,
    # and a list whose first target failed none for the rest, so the re-run's numbers
    # moved: its work verb got the block's answer, and the block was applied twice.
    store = restarting.store
    servicer = restarting.servicer
    assert isinstance(servicer, BrieflyUnavailableSupervisor)
    (job,) = store.submit(
        [
            {
                "name": "comp",
                "user": "alice",
                "status": "pending",
                "cpus": 3,  # instances 0-2: killing two leaves the job alive
                "agenda": [{"name": str(n), "status": "blocked"} for n in (1, 2)],
            }
        ]
    )
    job_id = int(job["id"])
    settings = stack_settings(tmp_path / "data", supervisor=restarting.address)
    running = await server.start(settings)
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:

            async def run() -> list[str]:
                response = await client.execute_callback(
                    language="python",
                    code=ATTEMPTS,
                    job=store.job(job_id),
                    invocation_id="rerun-away",
                )
                assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
                return list(response.stdout.splitlines())

            # The first run: the work verb's read and the first instance's kill find the
            # supervisor away (unapplied); the block is applied.
            servicer.unavailable.update({"JobInfo": 1, "SubjobAction": 1})
            first = await run()
            sent = list(servicer.action_requests)
            store.job_action("unblock", job_id, "alice")  # an operator's, unnumbered
            repeat = await run()
    finally:
        await running.stop()

    # Each call keeps its numbers whether its requests were sent or not: the work verb 1,
    # the two instances 2 and 3, the block 4.
    assert first == ["workunblock unavailable", "subjobkill unavailable", "block 1"]
    assert sent == [("rerun-away", 4)]
    assert servicer.action_requests[1:] == [("rerun-away", n) for n in (1, 2, 3, 4)]
    # The re-run applies what the first did not, and the block only once.
    assert repeat == ["workunblock 1", "subjobkill 2", "block 1"]
    applied = [
        line["text"]
        for line in store.history(job_id)
        if line["invocation_id"] == "rerun-away" and " by alice:" in line["text"]
    ]
    verbs = sorted(text.split(" by alice:")[0].split()[-1] for text in applied)
    assert verbs == ["block", "subjobkill", "subjobkill", "workunblock"], applied
    after = store.job(job_id)
    assert after["status"] == "pending"  # the operator's unblock stands
    assert [w["status"] for w in after["agenda"]] == ["pending", "blocked"]
