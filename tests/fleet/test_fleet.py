"""Three executors on one real PostgreSQL, one reference supervisor counting every effect.

The seed's examples with their events published round robin across the replicas; the
two halves of an ``&&`` published to two replicas at the same moment, many times, fire
once. Every result is delivered once, every callback's action applied once.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Final

import psycopg
import pytest

from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.fleet.harness import Fleet, RoundRobinForwarder, example_jobs, fleet, two_replicas
from tests.helpers.cli import ROOT
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

EXAMPLES: Final = ROOT / "scripts" / "examples"
FRAMES: Final = ("1", "2", "3", "4", "5")
PENDING, BLOCKED = "pending", "blocked"
REPLICA_CONNECTIONS: Final = (
    "cbexec-triggers",
    "cbexec-triggers-loop",
    "cbexec-outbox",
    "cbexec-delivery",
    "cbexec-history",
    "cbexec-execute-claims",
    # The event ids' prune counts them from start on a read connection (event_ids.py).
    "cbexec-triggers-reads",
)


def only(pending: str) -> dict[str, str]:
    wanted = set(pending.split(",")) if pending else set()
    return {frame: PENDING if frame in wanted else BLOCKED for frame in FRAMES}


class Farm:
    """The reference supervisor driven by hand, its transitions forwarded round robin."""

    def __init__(self, group: Fleet, forwarder: RoundRobinForwarder) -> None:
        self.group = group
        self.store = group.endpoint.store
        self.forwarder = forwarder

    async def submit(self, path: Path) -> dict[str, int]:
        jobs = self.store.submit(example_jobs(path))
        await self.settle()
        return {job["name"]: int(job["id"]) for job in jobs}

    async def complete(self, job_id: int, frames: str) -> None:
        for frame in frames.split(","):
            self.store.start_work(job_id, frame)
            self.store.complete_work(job_id, frame)
        await self.settle()

    async def settle(self) -> None:
        """Until every transition was acknowledged and every firing it decided has run.

        Each feeds the other (a callback's action is a transition), so both at once. A
        firing leaves the shared store once its run's result is recorded.
        """
        while True:
            await self.forwarder.drain()
            async with await psycopg.AsyncConnection.connect(self.group.store) as db:
                waiting = await (await db.execute("SELECT count(*) FROM firings")).fetchone()
            if waiting == (0,) and not self.store.has_unsent_events():
                return
            await asyncio.sleep(0.02)

    def agenda(self, job_id: int) -> dict[str, str]:
        return {w["name"]: w["status"] for w in self.store.job(job_id)["agenda"]}


async def test_the_seed_examples_with_events_round_robin_across_three_replicas(
    tmp_path: Path, pg_url: str
) -> None:
    async with fleet(tmp_path, pg_url) as group:
        forwarder = RoundRobinForwarder(group)
        task = asyncio.create_task(forwarder.run())
        try:
            farm = Farm(group, forwarder)
            for form in ("python", "qube"):
                jobs = await farm.submit(EXAMPLES / "job-b-waits-for-job-a" / f"{form}.py")
                a, b = jobs["jobA"], jobs["jobB"]
                await farm.complete(a, "1,2,3,4")
                assert farm.store.job(b)["status"] == BLOCKED
                await farm.complete(a, "5")
                assert farm.store.job(b)["status"] == PENDING

                jobs = await farm.submit(EXAMPLES / "frame-by-frame" / f"{form}.py")
                a, b = jobs["jobA"], jobs["jobB"]
                await farm.complete(a, "2")
                assert farm.agenda(b) == only("2")
                await farm.complete(a, "1,5")
                assert farm.agenda(b) == only("1,2,5")

                jobs = await farm.submit(EXAMPLES / "job-c-waits-for-a-and-b" / f"{form}.py")
                ribgen, render, c = jobs["ribgen"], jobs["render"], jobs["jobC"]
                await farm.complete(ribgen, "1")
                await farm.complete(render, "2")
                assert farm.agenda(c) == only("")
                await farm.complete(render, "1")
                assert farm.agenda(c) == only("1")
                await farm.complete(ribgen, "2,3,4,5")
                await farm.complete(render, "3,4,5")
                assert farm.agenda(c) == only("1,2,3,4,5")

                jobs = await farm.submit(EXAMPLES / "job-d-waits-for-a-and-b-or-c" / f"{form}.py")
                ribgen, render, composite, d = (
                    jobs[n] for n in ("ribgen", "render", "composite", "jobD")
                )
                await farm.complete(composite, "3")
                assert farm.agenda(d) == only("3")
                await farm.complete(render, "1")
                assert farm.agenda(d) == only("3")
                await farm.complete(ribgen, "1")
                assert farm.agenda(d) == only("1,3")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        counting = group.counting
        assert counting.actions, "no callback asked the supervisor for anything"
        assert set(counting.actions.values()) == {1}, "an action was applied twice"
        # Every run's result reaches the supervisor once (the run of each action among them).
        assert await eventually(lambda: set(counting.actions) <= set(counting.applied))
        assert set(counting.applied.values()) == {1}
        logs = "".join(p.read_text() for p in tmp_path.glob("replica-*.log"))
        assert "Traceback" not in logs


async def test_both_halves_of_an_and_at_two_replicas_at_once_fire_exactly_once(
    tmp_path: Path, pg_url: str
) -> None:
    rounds = 40
    async with (
        fleet(tmp_path, pg_url, replicas=2) as group,
        ExecutorClient(group.address(0)) as first,
        ExecutorClient(group.address(1)) as second,
    ):
        # One job registered at both replicas at once: both answer, one job is kept.
        for n in range(10):
            job = {"id": 40_000 + n, "name": "twice", "label": "twice"}
            await asyncio.gather(first.register_job(job), second.register_job(job))
        listed = await first.list_registered_jobs(limit=1000)
        twice = sorted(j.id for j in listed.jobs if 40_000 <= j.id < 40_010)
        assert twice == [40_000 + n for n in range(10)]

        fired: dict[int, list[str]] = {}
        for n in range(rounds):
            a, b, c = 50_000 + 3 * n, 50_001 + 3 * n, 50_002 + 3 * n
            await first.register_job({"id": a, "pgrp": a, "label": "a", "name": "a"})
            await second.register_job({"id": b, "pgrp": a, "label": "b", "name": "b"})
            await first.register_job(
                {
                    "id": c,
                    "pgrp": a,
                    "label": "c",
                    "name": "c",
                    "callbacks": [
                        {
                            "triggers": "complete-job-a && complete-job-b",
                            "language": "python",
                            "code": "print('both')",
                        }
                    ],
                }
            )
            # The halves race: each replica's transaction sees the other's latch or waits.
            answers = await asyncio.gather(
                first.publish_event(name="complete", type="job", job_id=a, event_id=f"a{n}"),
                second.publish_event(name="complete", type="job", job_id=b, event_id=f"b{n}"),
            )
            fired[c] = [f.invocation_id for answer in answers for f in answer.fired]
        assert {c: len(ids) for c, ids in fired.items()} == dict.fromkeys(fired, 1)
        everything = set(itertools.chain.from_iterable(fired.values()))
        counting = group.counting
        assert await eventually(lambda: everything <= set(counting.applied), timeout_s=30)
        assert all(counting.applied[i] == 1 for i in everything)


def install_noted(root: Path, replicas: int, trigger: str) -> None:
    """The same universal callback, noted.py, in each replica's own <data_dir>/callback."""
    for index in range(replicas):
        directory = root / f"replica-{index}" / "callback"
        directory.mkdir(exist_ok=True)
        (directory / "noted.py").write_text("print('noted')\n")
        (directory / "callbacks.conf").write_text(f"noted.py = {trigger}\n")


async def test_a_reload_reaches_every_replica_and_every_replica_reads_the_fleets_history(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_replicas(tmp_path, pg_url) as (first, second):
        # Each replica reads its own callbacks.conf; both get the same file here.
        install_noted(tmp_path, 2, "submit-job-self")
        reloaded = await first.reload_universal_callbacks()
        assert reloaded.reloaded and reloaded.active == 1

        async def second_has_it() -> bool:
            job_id = 70_000 + len(second_jobs)
            second_jobs.append(job_id)
            reply = await second.register_job({"id": job_id, "name": "late"})
            return any(cb.universal for cb in reply.callbacks)

        second_jobs: list[int] = []
        assert await eventually(second_has_it, timeout_s=10, interval_s=0.2), (
            "the reload on one replica never reached the other"
        )

        # A run on one replica is in the history every replica reads.
        ran = await second.execute_callback(
            language="python", code="print('here')", job={"id": 70_999, "user": "fleet"}
        )

        # Each replica's bookkeeping thread writes its runs a moment after the answer.
        async def first_lists_it() -> bool:
            listed = await first.list_runs(job_id=70_999)
            return [run.invocation_id for run in listed.runs] == [ran.invocation_id]

        assert await eventually(first_lists_it, timeout_s=10, interval_s=0.05)
        got = await first.get_run(ran.invocation_id)
        assert got.invocation_id == ran.invocation_id and "here" in got.result.stdout

        # The README's deploy step: seven connections per replica, named by their part.
        def connections() -> list[str]:
            with psycopg.connect(pg_url, autocommit=True) as db:
                return sorted(
                    row[0]
                    for row in db.execute(
                        "SELECT application_name FROM pg_stat_activity"
                        " WHERE datname = current_database() AND application_name LIKE 'cbexec-%'"
                    )
                )

        assert await eventually(
            lambda: connections() == sorted(REPLICA_CONNECTIONS * 2), interval_s=0.2
        ), connections()


async def test_a_universal_callback_fires_at_a_replica_with_its_own_callbacks_directory(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_replicas(tmp_path, pg_url) as (first, second):
        # The default universal_callback_path, <data_dir>/callback: a directory per replica.
        install_noted(tmp_path, 2, "complete-job-self")
        for client in (first, second):
            assert (await client.reload_universal_callbacks()).active == 1
        await first.register_job({"id": 71_000, "name": "registered at one", "user": "fleet"})

        answer = await second.publish_event(
            name="complete", type="job", job_id=71_000, event_id="c71000", wait=True
        )

        (fired,) = answer.fired
        assert fired.result.outcome == executor_pb2.OUTCOME_SUCCEEDED, fired.result.failure
        assert fired.result.stdout == "noted\n"


async def test_each_line_of_a_file_named_twice_keeps_its_options_at_another_replica(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_replicas(tmp_path, pg_url) as (first, second):
        install_noted(tmp_path, 2, "complete-job-self")
        for index in range(2):
            with (tmp_path / f"replica-{index}" / "callback" / "callbacks.conf").open("a") as conf:
                conf.write("noted.py [shadow] = failed-job-self\n")
        for client in (first, second):
            assert (await client.reload_universal_callbacks()).active == 2
        for job_id in (71_001, 71_002):
            await first.register_job({"id": job_id, "name": "registered at one", "user": "fleet"})

        live = await second.publish_event(
            name="complete", type="job", job_id=71_001, event_id="c71001", wait=True
        )
        await second.publish_event(
            name="failed", type="job", job_id=71_002, event_id="f71002", wait=True
        )

        (fired,) = live.fired
        assert fired.result.outcome == executor_pb2.OUTCOME_SUCCEEDED, fired.result.failure
        runs = {run.job_id: run for run in (await second.list_runs()).runs}
        assert not runs[71_001].shadow
        assert runs[71_002].shadow and runs[71_002].triggers == "failed-job-self"
        assert runs[71_002].outcome == executor_pb2.OUTCOME_SUCCEEDED
