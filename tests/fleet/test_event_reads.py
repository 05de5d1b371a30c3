"""An event's folded reads decide as the plain ones did, on PostgreSQL as on SQLite.

On PostgreSQL an event's id, its job's place and the near misses in its pgrp are one
statement, the matching atoms come with their (locked) callbacks, and a work item's
agenda and latches are one read; the journal and the known states are written once per
transaction. The same events give the same decisions and journal on either store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from executor.model import Event
from executor.triggers.engine import TriggerEngine
from executor.triggers.journal import EntryKind
from executor.triggers.store import TriggerStore
from tests.helpers.trigger_engines import LIMITS, Recorder, job

pytestmark = pytest.mark.service


@pytest.fixture
async def engine(either_store: str) -> AsyncIterator[TriggerEngine]:
    made = TriggerEngine(TriggerStore(either_store), Recorder(), limits=LIMITS)
    made.start()
    try:
        yield made
    finally:
        await made.close()
        made.store.close()


def agenda(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "status": "blocked"} for name in names]


async def test_a_label_typo_is_a_near_miss_read_with_the_events_id(engine: TriggerEngine) -> None:
    engine.register_job(job(12, label="ribgen", pgrp=3, agenda=agenda("1")))
    engine.register_job(job(15, ("complete-work-ribgn-*", "x"), label="comp", pgrp=3))

    ((fired, repeat),) = await engine.publish_many(
        [Event("complete", "work", 12, work_name="1", event_id="c1")]
    )

    assert (fired, repeat) == ([], False)
    (miss,) = engine.explain(15).callbacks[0].journal
    assert miss.kind is EntryKind.NEAR_MISS
    assert miss.reason == (
        "label 'ribgn' names no job in pgrp 3 (labels there: comp, ribgen); "
        "this event was job 12 'ribgen' in pgrp 3"
    )


async def test_work_items_latch_fire_and_journal_in_one_group(engine: TriggerEngine) -> None:
    engine.register_job(
        job(
            3, ("running-work-self-{work} && killed-work-self-{work}", "x"), agenda=agenda("1", "2")
        )
    )
    events = [
        Event("running", "work", 3, work_name="1", event_id="r1"),
        Event("running", "work", 3, work_name="2", event_id="r2"),
        Event("killed", "work", 3, work_name="1", event_id="k1"),
        Event("killed", "work", 3, work_name="9", event_id="k9"),  # not in the agenda
    ]

    applied = await engine.publish_many(events)

    assert [len(fired) for fired, _ in applied] == [0, 0, 1, 0]
    assert applied[2][0][0].work_name == "1"
    explained = engine.explain(3, work_name="1").callbacks[0]
    assert [entry.kind for entry in explained.journal] == [EntryKind.MATCHED, EntryKind.FIRED]
    assert explained.journal[-1].count == 1
    assert engine.explain(3, work_name="2").callbacks[0].journal[0].kind is EntryKind.MATCHED
