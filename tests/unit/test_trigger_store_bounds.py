"""What the trigger store keeps is bounded: a removed job's rows go with it, event ids by age."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from executor.model import Event
from executor.triggers import event_ids
from executor.triggers.engine import TriggerEngine
from tests.helpers.trigger_engines import Engines, Recorder, job
from tests.helpers.trigger_rows import a_job_in_every_table, rows_of, seen_ids

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


async def _publish_ids(engine: TriggerEngine, *ids: str) -> list[bool]:
    """Whether each event (complete of job 1, one per id) was a repeat."""
    return [
        (await engine.publish(Event("complete", "job", 1, event_id=i), wait=False))[1] for i in ids
    ]


def _after(instant: float) -> None:
    """Until the wall clock has moved past ``instant`` (its resolution is finer than 1 µs)."""
    while time.time() <= instant:
        pass


async def test_event_ids_past_their_retention_are_forgotten_and_recent_ones_are_not(
    engines: Engines,
) -> None:
    now = [time.time()]
    recorder = Recorder()
    engine = engines(recorder, start=False, event_id_retention_s=3600.0, clock=lambda: now[0])
    engine.register_job(job(3, ("complete-job-1", "unblock-self")))
    assert await _publish_ids(engine, "old-1", "old-2") == [False, False]
    between = time.time()
    _after(between)
    assert await _publish_ids(engine, "new-1") == [False]

    now[0] = between + 3600.0  # an hour after the old ones, not yet after the new one
    assert engine.prune_event_ids() == 2

    assert seen_ids(engine.store) == {"new-1"}
    assert await _publish_ids(engine, "new-1", "old-1") == [True, False]


async def test_a_started_engine_prunes_event_ids_by_itself(engines: Engines) -> None:
    engines(Recorder(), start=False).register_job(job(3, ("complete-job-1", "unblock-self")))
    await _publish_ids(engines(Recorder(), start=False), "a", "b")
    later = time.time() + 2 * 3600.0

    engine = engines(Recorder(), event_id_retention_s=3600.0, clock=lambda: later)

    async with asyncio.timeout(10):
        while seen_ids(engine.store):  # noqa: ASYNC110 - a table, no event to wait on
            await asyncio.sleep(0.01)
    assert await _publish_ids(engine, "a") == [False]


async def test_a_prune_goes_batch_by_batch_until_every_old_id_is_gone(engines: Engines) -> None:
    engine = engines(Recorder(), start=False)
    with engine.store.transaction() as db:
        db.executemany(
            "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?)",
            [(f"e{n}", 1000.0 + n) for n in range(2_500)],
        )
    pruner = event_ids.EventIdPruner(engine.store, 100.0, lambda: 1000.0 + 2_100, batch=300)

    assert pruner.prune() == 2_000  # those seen before 2000.0: 7 batches, the last one short

    assert len(seen_ids(engine.store)) == 500
    assert min(seen_ids(engine.store), key=lambda i: int(i[1:])) == "e2000"


async def test_a_stopped_pruner_ends_after_the_batch_it_is_in(engines: Engines) -> None:
    engine = engines(Recorder(), start=False)
    with engine.store.transaction() as db:
        db.executemany(
            "INSERT INTO seen_events (event_id, seen_at) VALUES (?, 0)",
            [(f"e{n}",) for n in range(1_000)],
        )
    pruner = event_ids.EventIdPruner(engine.store, 1.0, time.time, batch=100)
    pruner.stop()

    assert pruner.prune() == 0
    await pruner.run(every_s=3600.0)  # returns at once: stopped


async def test_past_the_most_ids_kept_the_oldest_are_forgotten_first_and_said(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    # A callback's work verbs over a 100,000-frame job left 100,000 ids a call, each kept
    # 72 h: ~25 GB of triggers.db an hour over four slots (probe 75).
    engine = engines(Recorder(), start=False, event_id_max_count=3)
    engine.register_job(job(3, ("complete-job-1", "unblock-self")))
    assert await _publish_ids(engine, "a", "b", "c", "d", "e") == [False] * 5

    with caplog.at_level(logging.WARNING, logger="executor.triggers.event_ids"):
        assert engine.prune_event_ids() == 2

    assert seen_ids(engine.store) == {"c", "d", "e"}
    assert engine.stats.event_ids_forgotten_early == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        "event ids: forgot the 2 oldest before their event_id_retention_hours: the store"
        " keeps at most event_id_max_count (3); a resend of one of them now is applied again"
    )
    assert await _publish_ids(engine, "e", "a") == [True, False]


async def test_ids_past_the_most_kept_go_batch_by_batch(engines: Engines) -> None:
    engine = engines(Recorder(), start=False)
    with engine.store.transaction() as db:
        db.executemany(
            "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?)",
            [(f"e{n}", time.time()) for n in range(2_500)],
        )
    pruner = event_ids.EventIdPruner(engine.store, 3600.0, time.time, max_count=500, batch=300)

    assert pruner.prune() == 2_000  # none past its age: the 2,000 oldest, in 7 batches

    assert seen_ids(engine.store) == {f"e{n}" for n in range(2_000, 2_500)}
    assert pruner.prune() == 0
