"""What the trigger store keeps is bounded on PostgreSQL as on SQLite (probe 46).

A job removed takes every row of it with it; an event id is forgotten once past its
retention, and a recent one still answers a repeat.
"""

from __future__ import annotations

import time

import pytest

from executor.model import Event
from tests.helpers.trigger_engines import MakeEngine, job
from tests.helpers.trigger_rows import a_job_in_every_table, rows_of, seen_ids

pytestmark = pytest.mark.service


async def test_a_removed_job_leaves_no_row_in_any_table_of_the_store(engines: MakeEngine) -> None:
    engine = engines()
    job_ids, rowids = await a_job_in_every_table(engine)
    assert [t for t, n in rows_of(engine.store, job_ids, rowids).items() if n == 0] == ["firings"]

    await engine.publish(Event("removed", "job", 7, event_id="r7"), wait=True)
    await engine.publish_many([Event("complete", "job", 9), Event("removed", "job", 8)])
    await engine.wait_idle()

    assert {table: n for table, n in rows_of(engine.store, job_ids, rowids).items() if n} == {}


async def test_event_ids_past_their_retention_are_forgotten_and_recent_ones_are_not(
    engines: MakeEngine,
) -> None:
    now = [time.time()]
    engine = engines(start=False, event_id_retention_s=3600.0, clock=lambda: now[0])
    engine.register_job(job(3, ("complete-job-1", "unblock-self")))

    async def repeats(*ids: str) -> list[bool]:
        found = await engine.publish_many([Event("complete", "job", 1, event_id=i) for i in ids])
        return [duplicate for _, duplicate in found]

    assert await repeats("old-1", "old-2") == [False, False]
    between = time.time()
    while time.time() <= between:  # the new id is seen strictly after ``between``
        pass
    assert await repeats("new-1") == [False]

    now[0] = between + 3600.0
    assert engine.prune_event_ids() == 2

    assert seen_ids(engine.store) == {"new-1"}
    assert await repeats("new-1", "old-1") == [True, False]
