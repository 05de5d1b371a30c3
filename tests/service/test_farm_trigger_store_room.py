"""The trigger store's room (``triggers_max_bytes``) on the embedded farm (probe 136, F3).

A job the farm stored but the trigger engine had no room to register held its ``submit``
event at the head of the forwarder, retried for ever: every later event of every job
waited behind it, the ``removed`` events that would have made room included, and
``cbexec metrics`` said ``storage ok``. Now SubmitJobs refuses a submission the store
cannot take, and a job stored anyway (before this check, or past it in a race) waits
alone: the other jobs' events go on, its own once a removal made room, and the health
line says so meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor_client import FarmClient
from supervisor_client.farm_client import job_struct
from supervisor_client.qbcallback.v1 import farm_pb2, farm_pb2_grpc
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from supervisor_client.reference import ReferenceSupervisor
from tests.conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.service

MAX_BYTES = 2 << 20
# Each of alice's jobs takes about 300 KB of triggers.db (its extra): six fit in 2 MiB.
ALICE = {
    "name": "alice",
    "user": "alice",
    "agenda": ["1"],
    "pad": "q" * 300_000,
    "callbacks": [
        {"triggers": "complete-work-self-*", "language": "python", "code": "print('alice')"}
    ],
}
BOB = {
    "name": "bob",
    "user": "bob",
    "agenda": ["1"],
    "callbacks": [{"triggers": "complete-work-self-*", "language": "python", "code": "print(1)"}],
}


async def eventually(check: Any, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"not so within {timeout_s} s"
        await asyncio.sleep(0.1)


async def bob_runs(stack: Stack, farm: FarmClient, job_id: int) -> None:
    """Complete bob's frame: his callback runs and ``wait_jobs`` says so."""
    await farm.change_work(job_id=job_id, work=["1"], change="start")
    await farm.change_work(job_id=job_id, work=["1"], change="complete")
    waited = await farm.wait_jobs([job_id], wait_seconds=30)
    assert waited.done, waited
    runs = (await stack.client.list_runs(job_id=job_id)).runs
    assert [run.outcome for run in runs] == [Outcome.OUTCOME_SUCCEEDED]


async def test_a_submission_the_trigger_store_has_no_room_for_is_refused_whole(
    tmp_path: Path,
) -> None:
    settings = stack_settings(tmp_path / "data", triggers_max_bytes=MAX_BYTES)
    async with running_stack(settings) as stack, FarmClient(stack.channel) as farm:
        stub = farm_pb2_grpc.FarmServiceStub(stack.channel)
        refused: grpc.aio.AioRpcError | None = None
        for _ in range(10):
            request = farm_pb2.SubmitJobsRequest(jobs=[job_struct(ALICE, "jobs[0]")])
            try:
                await stub.SubmitJobs(request)
            except grpc.aio.AioRpcError as err:
                refused = err
                break
        assert refused is not None, "the farm took more than triggers.db has room for"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        details = refused.details() or ""
        assert "triggers.db would take" in details, details
        assert "(triggers_max_bytes = 2.0 MiB)" in details, details
        assert "publish 'removed' for the jobs that are done" in details, details
        assert ("retry-after-s", "60") in tuple(refused.trailing_metadata() or ())
        # Counted as every RESOURCE_EXHAUSTED is (probe 175, F1).
        assert (await stack.client.get_metrics()).rejected_at_capacity == 1
        stored = [job.id for job in (await farm.list_jobs()).jobs]
        assert stored, "no job fitted at all"
        # Nothing of the refused submission was stored, and every stored job is registered.
        await stack.settle()
        assert stack.running.engine.store.count_jobs() == len(stored)
        # Bob's small job still fits, and its callback runs.
        (bob,) = (await farm.submit_jobs([BOB])).jobs
        await bob_runs(stack, farm, bob.id)
        # Removing alice's finished jobs makes room for hers again.
        for job_id in stored[:3]:
            await farm.change_job(job_id=job_id, verb="remove")
        await stack.settle()
        (again,) = (await farm.submit_jobs([ALICE])).jobs
        assert again.id > bob.id


def _stored_before(data_dir: Path) -> list[int]:
    """Alice's seven jobs (the seventh has no room) and bob's, stored without the room check.

    As an earlier version's farm stored them, or a submission that passed the check while
    another registration took the room.
    """
    data_dir.mkdir(parents=True)
    supervisor = ReferenceSupervisor(str(data_dir / "supervisor.db"), event_outbox=True)
    try:
        ids = [job["id"] for job in supervisor.submit([ALICE] * 7 + [BOB])]
        # The seventh's frame ends before it has room: its events wait behind its submit.
        supervisor.start_work(ids[6], "1")
        supervisor.complete_work(ids[6], "1")
        return ids
    finally:
        supervisor.close()


async def test_a_job_without_room_holds_back_no_other_jobs_events_and_removals_make_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    *alice, bob = _stored_before(data_dir)
    settings = stack_settings(data_dir, triggers_max_bytes=MAX_BYTES)
    caplog.set_level(logging.INFO, logger="supervisor_client.reference.forwarder")
    async with running_stack(settings) as stack, FarmClient(stack.channel) as farm:
        engine = stack.running.engine
        # Alice's seventh waits for room; bob's job, stored after it, is registered all the same.
        await eventually(lambda: _registered(stack, bob))
        assert engine.store.job(alice[6]) is None
        # The health line says the events wait, and for what.
        metrics = await stack.client.get_metrics()
        problem = metrics.storage_problem
        assert f"job {alice[6]}" in problem, problem
        assert "triggers_max_bytes" in problem, problem
        # Every call is still served: health says SERVING meanwhile (probe 175, F3), and
        # the forwarder's refused registration counts as any RESOURCE_EXHAUSTED does.
        assert metrics.health_status == "SERVING"
        assert await stack.client.health() == "SERVING"
        assert metrics.rejected_at_capacity >= 1
        # Bob's callback runs, and waiting for his job answers.
        await bob_runs(stack, farm, bob)
        # An operator removes alice's first five: their removals pass the waiting job,
        # make room, and it is registered.
        for job_id in alice[:5]:
            await farm.change_job(job_id=job_id, verb="remove")
        await eventually(lambda: _registered(stack, alice[6]))
        await stack.settle()
        # Its frame's events came after its registration, in order: its callback ran.
        runs = (await stack.client.list_runs(job_id=alice[6])).runs
        assert [run.outcome for run in runs] == [Outcome.OUTCOME_SUCCEEDED]
        assert engine.store.count_jobs() == 3  # alice's 6th and 7th, and bob's
        assert (await stack.client.get_metrics()).storage_problem == ""
    said = [r.levelname for r in caplog.records if f"job_id={alice[6]}" in r.getMessage()]
    # A WARNING once when it began to wait (not at every retry), then once it went on.
    assert said == ["WARNING", "INFO"], [r.getMessage() for r in caplog.records]


async def _registered(stack: Stack, job_id: int) -> bool:
    return await asyncio.to_thread(stack.running.engine.store.job, job_id) is not None
