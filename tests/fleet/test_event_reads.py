"""An event's folded reads decide as the plain ones did, on PostgreSQL as on SQLite.

On PostgreSQL a group's event ids, its jobs' places and near misses are one statement,
the atoms its events match come with their (locked) callbacks in one, and its work
items' agendas and latches in one; each event is decided on what the events before it
in the group left (not yet written), and the group's writes are a statement per table
at its end. The same events give the same decisions and journal on either store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from executor.model import Event
from executor.triggers.engine import TriggerEngine
from executor.triggers.journal import EntryKind, JournalLimits
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


async def test_an_and_latched_by_two_events_of_one_group_fires_once_each_time(
    engine: TriggerEngine,
) -> None:
    engine.register_job(job(4, ("complete-work-self-1 && complete-work-self-2", "both")))
    halves = [Event("complete", "work", 4, work_name=name) for name in ("1", "2", "1", "2")]

    applied = await engine.publish_many(halves)

    # Each event sees the latches and count the one before it left (not yet written).
    assert [len(fired) for fired, _ in applied] == [0, 1, 0, 1]
    assert [cb.count for cb in engine.store.callbacks_of(4)] == [2]
    assert [fired[0].callback.count for fired, _ in applied if fired] == [0, 1]


async def test_a_shared_atom_sees_the_items_latched_earlier_in_the_group(
    engine: TriggerEngine,
) -> None:
    engine.register_job(
        job(
            5,
            ("running-work-self-{work} && killed-work-self-{work} && complete-job-self", "x"),
            agenda=agenda("1", "2"),
        )
    )
    await engine.publish_many([Event("running", "work", 5, work_name="1")])  # item 1 has a row
    events = [
        Event("killed", "work", 5, work_name="1"),
        # No {work}: it latches in every item's vector, which it reads with item 1's
        # latch from the event above (not yet written when the group is read).
        Event("complete", "job", 5),
    ]

    applied = await engine.publish_many(events)

    assert [[f.work_name for f in fired] for fired, _ in applied] == [[], ["1"]]
    explained = engine.explain(5, work_name="2").callbacks[0]
    assert [entry.kind for entry in explained.journal] == [EntryKind.MATCHED]


async def test_events_after_a_removed_job_in_one_group_do_not_find_it(
    engine: TriggerEngine,
) -> None:
    for job_id in (6, 7):
        engine.register_job(
            job(
                job_id,
                ("running-work-self-{work} && killed-work-self-{work}", "x"),
                agenda=agenda("1"),
            )
        )
    events = [
        Event("running", "work", 6, work_name="1"),
        Event("removed", "job", 6),
        Event("killed", "work", 6, work_name="1"),  # its job is gone: nothing to latch
        Event("running", "work", 7, work_name="1"),
        Event("killed", "work", 7, work_name="1"),
    ]

    applied = await engine.publish_many(events)

    assert [len(fired) for fired, _ in applied] == [0, 0, 0, 0, 1]
    assert engine.store.callbacks_of(6) == []
    assert engine.store.job(6) is None
    assert engine.store.place(7) is not None


async def test_a_label_that_does_not_resolve_in_another_pgrp_is_a_near_miss_of_the_group(
    engine: TriggerEngine,
) -> None:
    engine.register_job(job(12, label="ribgen", pgrp=3, agenda=agenda("1")))
    # pgrp 4 names "ribgen", which no job of pgrp 4 holds: job 12 landed in pgrp 3.
    engine.register_job(job(16, ("complete-work-ribgen-*", "x"), label="comp", pgrp=4))

    applied = await engine.publish_many(
        [
            Event("running", "work", 12, work_name="1", event_id="r1"),
            Event("complete", "work", 12, work_name="1", event_id="c1"),
        ]
    )

    assert [fired for fired, _ in applied] == [[], []]
    (miss,) = engine.explain(16).callbacks[0].journal
    assert miss.kind is EntryKind.NEAR_MISS
    assert miss.seen.event.event_id == "c1"
    assert miss.reason == (
        "label 'ribgen' names no job in pgrp 4; this event was job 12 'ribgen' in pgrp 3"
    )


async def test_what_a_group_fires_is_queued_and_leaves_the_queue_once_run(
    engine: TriggerEngine,
) -> None:
    engine.register_job(
        job(
            8, ("running-work-self-{work} && killed-work-self-{work}", "x"), agenda=agenda("1", "2")
        )
    )
    events = [
        Event(name, "work", 8, work_name=item)
        for item in ("1", "2")
        for name in ("running", "killed")
    ]

    applied = await engine.publish_many(events)
    await engine.wait_idle()

    fired = [f for fired, _ in applied for f in fired]
    assert [f.work_name for f in fired] == ["1", "2"]
    # In a fleet the replica that decided them holds them (done only under its claim).
    with engine.store.outside_transaction() as db:
        assert db.execute("SELECT count(*) FROM firings").fetchone()[0] == 0


async def test_an_atom_naming_a_job_by_its_label_matches_in_a_group(engine: TriggerEngine) -> None:
    engine.register_job(job(12, label="ribgen", pgrp=3, agenda=agenda("1", "2")))
    engine.register_job(
        job(15, ("complete-work-ribgen-1 && complete-work-ribgen-2", "comp"), label="comp", pgrp=3)
    )

    applied = await engine.publish_many(
        [Event("complete", "work", 12, work_name=name) for name in ("1", "2")]
    )

    assert [[f.callback.job_id for f in fired] for fired, _ in applied] == [[], [15]]


async def test_a_group_keeps_a_plain_callbacks_journal_to_its_limit(either_store: str) -> None:
    made = TriggerEngine(
        TriggerStore(either_store),
        Recorder(),
        limits=LIMITS,
        journal_limits=JournalLimits(entries=2, max_age_s=3600),
    )
    made.start()
    try:
        made.register_job(
            job(
                5,
                ("failed-work-self-*", "x"),
                ("failed-work-self-{work}", "x"),
                agenda=agenda(*"12345"),
            )
        )
        await made.publish_many([Event("failed", "work", 5, work_name=f) for f in "12345"])
        plain, _ = made.explain(5, journal_limit=10).callbacks
        assert [(e.kind, e.work_name) for e in plain.journal] == [
            (EntryKind.FIRED, "4"),
            (EntryKind.FIRED, "5"),
        ]
        (first,) = made.explain(5, 2, work_name="1").callbacks
        assert [(e.kind, e.work_name) for e in first.journal] == [(EntryKind.FIRED, "1")]
    finally:
        await made.close()
        made.store.close()
