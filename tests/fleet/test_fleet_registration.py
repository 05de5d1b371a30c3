"""RegisterJob racing events and other RegisterJobs of the same job, in a fleet on PostgreSQL.

A registration keeps what the job's unchanged callbacks hold (latches, counts), so it
must read them in its own transaction, locked against the events that latch them and
against another replica registering the same job: an event answered OK at the moment a
re-registration of its job arrives keeps its latch, and a job registered at two
replicas at once is one submission, which fires a level ``submit-job-self`` once.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from supervisor_client import ExecutorClient
from tests.fleet.harness import fleet
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

# Enough jobs that, on a store that loses the race, some (in practice most) lose it.
JOBS = 30


def job_with(job_id: int, name: str, callback: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Job ``job_id`` of alice, named ``<name><job_id>``, with one python callback (id 1)."""
    return {
        "id": job_id,
        "name": f"{name}{job_id}",
        "user": "alice",
        **fields,
        "callbacks": [{"id": 1, "language": "python", **callback}],
    }


def and_job(job_id: int) -> dict[str, Any]:
    both = {"triggers": "complete-work-self-1 && complete-work-self-2", "code": "print('both')"}
    return job_with(job_id, "and", both, label=f"and{job_id}")


def level_job(job_id: int) -> dict[str, Any]:
    submitted = {"triggers": "submit-job-self", "mode": "level", "code": "print('submitted')"}
    return job_with(job_id, "level", submitted, status="pending")


async def test_a_registration_at_the_moment_of_an_event_keeps_the_events_latch(
    tmp_path: Path, pg_url: str
) -> None:
    async with (
        fleet(tmp_path, pg_url, replicas=2) as group,
        ExecutorClient(group.address(0)) as first,
        ExecutorClient(group.address(1)) as second,
    ):
        fired: dict[int, list[str]] = {}
        # The unchanged registration goes to the replica of the event, then to the other one.
        for job_id, registrar in itertools.chain(
            ((60_000 + n, first) for n in range(JOBS)),
            ((61_000 + n, second) for n in range(JOBS)),
        ):
            await first.register_job(and_job(job_id))
            await asyncio.gather(
                first.publish_event(
                    name="complete",
                    type="work",
                    job_id=job_id,
                    work_name="1",
                    event_id=f"{job_id}-1",
                ),
                registrar.register_job(and_job(job_id)),
            )
            answer = await second.publish_event(
                name="complete", type="work", job_id=job_id, work_name="2", event_id=f"{job_id}-2"
            )
            fired[job_id] = [firing.invocation_id for firing in answer.fired]
        assert [job_id for job_id, ids in fired.items() if len(ids) != 1] == []
        everything = set(itertools.chain.from_iterable(fired.values()))
        counting = group.counting
        assert await eventually(lambda: everything <= set(counting.applied), timeout_s=30)
        assert all(counting.applied[i] == 1 for i in everything)


async def test_a_job_registered_at_two_replicas_at_once_fires_its_level_submit_once(
    tmp_path: Path, pg_url: str
) -> None:
    async with (
        fleet(tmp_path, pg_url, replicas=2) as group,
        ExecutorClient(group.address(0)) as first,
        ExecutorClient(group.address(1)) as second,
    ):
        fired: dict[int, list[str]] = {}
        for job_id in range(62_000, 62_000 + 2 * JOBS):
            answers = await asyncio.gather(
                first.register_job(level_job(job_id)), second.register_job(level_job(job_id))
            )
            fired[job_id] = [firing.invocation_id for a in answers for firing in a.fired]
        assert [job_id for job_id, ids in fired.items() if len(ids) != 1] == []
        # ``why`` tells the same story as the firings: each job's callback fired once.
        counts = {
            job_id: [c.callback.count for c in (await second.explain_callbacks(job_id)).callbacks]
            for job_id in fired
        }
        assert {job_id: n for job_id, n in counts.items() if n != [1]} == {}
        everything = set(itertools.chain.from_iterable(fired.values()))
        counting = group.counting
        assert await eventually(lambda: everything <= set(counting.applied), timeout_s=30)
        assert all(counting.applied[i] == 1 for i in everything)


def watcher_job(job_id: int, watched: int) -> dict[str, Any]:
    watching = {
        "triggers": f"submit-job-{watched}",
        "mode": "level",
        "code": "print('watched job submitted')",
    }
    return job_with(job_id, "watcher", watching, status="pending")


def quiet_job(job_id: int) -> dict[str, Any]:
    """A job whose own callback a submission does not fire."""
    return job_with(
        job_id, "quiet", {"triggers": "complete-job-self", "code": "pass"}, status="pending"
    )


async def test_a_first_registration_racing_its_submit_event_fires_a_watchers_level_submit_once(
    tmp_path: Path, pg_url: str
) -> None:
    async with (
        fleet(tmp_path, pg_url, replicas=2) as group,
        ExecutorClient(group.address(0)) as first,
        ExecutorClient(group.address(1)) as second,
    ):
        fired: dict[int, list[str]] = {}
        # The watcher names the job by id before it is registered; the job's first
        # registration (at one replica) and its submit event (at the other) cross.
        for watcher in range(63_000, 63_000 + 4 * JOBS, 2):
            job_id = watcher + 1
            await second.register_job(watcher_job(watcher, job_id))
            registered, published = await asyncio.gather(
                first.register_job(quiet_job(job_id)),
                second.publish_event(
                    name="submit", type="job", job_id=job_id, event_id=f"submit-{job_id}"
                ),
            )
            fired[watcher] = [f.invocation_id for f in (*registered.fired, *published.fired)]
        assert {w: len(ids) for w, ids in fired.items() if len(ids) != 1} == {}
        counts = {
            w: [c.callback.count for c in (await first.explain_callbacks(w)).callbacks]
            for w in fired
        }
        assert {w: n for w, n in counts.items() if n != [1]} == {}
        everything = set(itertools.chain.from_iterable(fired.values()))
        counting = group.counting
        assert await eventually(lambda: everything <= set(counting.applied), timeout_s=30)
        assert all(counting.applied[i] == 1 for i in everything)
