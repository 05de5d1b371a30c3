"""What the trigger store keeps is bounded: a removed job's rows go with it."""

from __future__ import annotations

import pytest

from executor.model import Event
from tests.helpers.trigger_engines import Engines, Recorder
from tests.helpers.trigger_rows import a_job_in_every_table, rows_of

pytestmark = pytest.mark.unit


async def test_a_removed_job_leaves_no_row_in_any_table_of_the_store(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    job_ids, rowids = await a_job_in_every_table(engine)
    before = rows_of(engine.store, job_ids, rowids)
    assert [table for table, n in before.items() if n == 0] == ["firings"]  # each is exercised

    for job_id in job_ids:
        await engine.publish(Event("removed", "job", job_id, event_id=f"r{job_id}"), wait=True)
    await engine.wait_idle()

    assert recorder.codes == ["x"]  # the callback on its removal ran, then left the queue
    assert {table: n for table, n in rows_of(engine.store, job_ids, rowids).items() if n} == {}
    # Journal rows of a removed job were kept for trigger_journal_days, unreadable (probe 46).


async def test_a_removed_job_leaves_no_row_when_removed_in_a_batch(engines: Engines) -> None:
    engine = engines(Recorder())
    job_ids, rowids = await a_job_in_every_table(engine)

    await engine.publish_many(
        [Event("removed", "job", 7), Event("complete", "job", 9), Event("removed", "job", 8)]
    )
    await engine.wait_idle()

    assert {table: n for table, n in rows_of(engine.store, job_ids, rowids).items() if n} == {}
