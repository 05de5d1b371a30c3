"""What the trigger store keeps is bounded: a removed job's rows go with it, event ids by age, its size."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.errors import StoreFullError
from executor.model import Event
from executor.triggers import decided_firings, event_ids, removals
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.helpers.trigger_engines import LIMITS, Engines, Recorder, engines_made, job
from tests.helpers.trigger_rows import (
    a_job_in_every_table,
    keys,
    rows_of,
    seen_ids,
    seen_in_order,
)

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

    assert seen_ids(engine.store) == keys("new-1")
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
            "INSERT INTO seen_events (id_key, seen_at) VALUES (?, ?)",
            [(event_ids.key(f"e{n}"), 1000.0 + n) for n in range(2_500)],
        )
    pruner = event_ids.EventIdPruner(engine.store, 100.0, lambda: 1000.0 + 2_100, batch=300)

    assert pruner.prune() == 2_000  # those seen before 2000.0: 7 batches, the last one short

    assert seen_ids(engine.store) == keys(*(f"e{n}" for n in range(2_000, 2_500)))


async def test_a_stopped_pruner_ends_after_the_batch_it_is_in(engines: Engines) -> None:
    engine = engines(Recorder(), start=False)
    with engine.store.transaction() as db:
        db.executemany(
            "INSERT INTO seen_events (id_key, seen_at) VALUES (?, 0)",
            [(event_ids.key(f"e{n}"),) for n in range(1_000)],
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

    assert seen_ids(engine.store) == keys("c", "d", "e")
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
            "INSERT INTO seen_events (id_key, seen_at) VALUES (?, ?)",
            [(event_ids.key(f"e{n}"), time.time()) for n in range(2_500)],
        )
    pruner = event_ids.EventIdPruner(engine.store, 3600.0, time.time, max_count=500, batch=300)

    assert pruner.prune() == 2_000  # none past its age: the 2,000 oldest, in 7 batches

    assert seen_ids(engine.store) == keys(*(f"e{n}" for n in range(2_000, 2_500)))
    assert pruner.prune() == 0


# seen_events as the versions before 2026-12-06 made it: keyed by the ids' text.
_TEXT_KEYED = """
CREATE TABLE seen_events (
    event_id TEXT PRIMARY KEY,
    seen_at REAL NOT NULL,
    fired_json TEXT NOT NULL DEFAULT ''
);
CREATE INDEX seen_events_by_age ON seen_events (seen_at);
"""


async def test_ids_kept_as_text_by_an_earlier_version_are_keyed_at_start_and_still_repeats(
    engines: Engines, tmp_path: Path
) -> None:
    fired = '[["inv-1", 3, 1, "complete-job-1", "qube", false, ""]]'
    with sqlite3.connect(tmp_path / "triggers.db") as db:
        db.executescript(_TEXT_KEYED)
        db.executemany(
            "INSERT INTO seen_events (event_id, seen_at, fired_json) VALUES (?, ?, ?)",
            [
                ("old-b", time.time(), fired),
                ("old-a", time.time(), ""),
                ("é" * 1024, time.time(), ""),
            ],
        )
    engine = engines(Recorder(), start=False, event_id_max_count=3)
    engine.register_job(job(3, ("complete-job-1", "unblock-self")))

    assert seen_in_order(engine.store) == [event_ids.key(i) for i in ("old-b", "old-a", "é" * 1024)]
    assert await _publish_ids(engine, "old-a", "é" * 1024, "new") == [True, True, False]
    with engine.store.outside_transaction() as db:
        (firing,) = decided_firings.fired_by(db, "old-b")
    assert (firing.invocation_id, firing.callback.job_id) == ("inv-1", 3)
    # The order they were seen in is kept: the oldest goes first past the count.
    assert engine.prune_event_ids() == 1
    assert seen_ids(engine.store) == keys("old-a", "é" * 1024, "new")


# triggers_max_bytes of the tests below, and what each job of theirs takes (its extra).
MAX_BYTES = 8 << 20
JOB_BYTES = 1 << 20


@pytest.fixture
async def bounded(tmp_path: Path) -> AsyncIterator[Callable[..., TriggerEngine]]:
    """Engines on a store of at most MAX_BYTES (triggers_max_bytes)."""

    def engine(recorder: Recorder, **kwargs: Any) -> TriggerEngine:
        store = TriggerStore(str(tmp_path / "triggers.db"), max_bytes=MAX_BYTES)
        return TriggerEngine(store, recorder, limits=LIMITS, **kwargs)

    async with engines_made(engine) as make:
        yield make


def big_job(job_id: int) -> dict[str, Any]:
    return job(job_id, ("complete-job-self", f"x{job_id}"), pgrp=job_id, blob="y" * JOB_BYTES)


def pages_in_use(path: Path) -> tuple[int, int]:
    """(bytes of pages in use, bytes of the file) of the database at ``path``."""
    db = sqlite3.connect(path)
    try:
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        (count,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
    finally:
        db.close()
    return (count - free) * page_size, os.stat(path).st_size


async def test_registrations_past_triggers_max_bytes_are_refused_and_events_still_apply(
    bounded: Callable[..., TriggerEngine], tmp_path: Path
) -> None:
    recorder = Recorder()
    engine = bounded(recorder)
    registered = []
    refused = None
    for job_id in range(1, 100):
        try:
            await engine.register(big_job(job_id))
        except StoreFullError as err:
            refused = err
            break
        registered.append(job_id)
    # Each job all or nothing: the store stops at the last job that fits in.
    assert 4 <= len(registered) < MAX_BYTES // JOB_BYTES
    assert pages_in_use(tmp_path / "triggers.db")[0] <= MAX_BYTES
    message = str(refused)
    assert f"cannot register job {registered[-1] + 1}:" in message
    assert "triggers_max_bytes = 8.0 MiB" in message
    assert f"{len(registered)} registered jobs" in message
    assert "publish 'removed'" in message
    assert engine.store.job(registered[-1] + 1) is None
    # What a refused transaction spilled into the log (more than SQLite's page cache
    # holds) is not left there either.
    with pytest.raises(StoreFullError):
        await engine.register(dict(big_job(99), blob="y" * 12 * JOB_BYTES))
    assert os.stat(f"{tmp_path / 'triggers.db'}-wal").st_size <= 4 << 20

    # Events of the jobs registered are never refused for it.
    await engine.publish(Event("complete", "job", 1), wait=True)
    await recorder.ran(1)
    assert recorder.codes == ["x1"]
    # Nor is a registration of a job again that takes no more than it did.
    await engine.register(big_job(2))
    with pytest.raises(StoreFullError):
        await engine.register(dict(big_job(2), blob="y" * 2 * JOB_BYTES))


async def test_removed_jobs_give_their_space_to_new_ones_and_the_file_stops_growing(
    bounded: Callable[..., TriggerEngine], tmp_path: Path
) -> None:
    engine = bounded(Recorder())
    for job_id in range(1, 6):
        await engine.register(big_job(job_id))
    _, first_size = pages_in_use(tmp_path / "triggers.db")
    next_id = 6
    for _ in range(10):  # jobs come and go: 30 jobs of 1 MiB through a store of 8 MiB
        for job_id in range(next_id - 5, next_id - 2):
            await engine.publish(Event("removed", "job", job_id), wait=True)
        for job_id in range(next_id, next_id + 3):
            await engine.register(big_job(job_id))
        next_id += 3
    in_use, size = pages_in_use(tmp_path / "triggers.db")
    assert in_use <= 6 * JOB_BYTES
    assert size <= first_size + 2 * JOB_BYTES
    assert os.stat(f"{tmp_path / 'triggers.db'}-wal").st_size <= 4 << 20


async def test_a_big_job_registered_and_removed_leaves_the_log_within_its_bound(
    engines: Engines, tmp_path: Path
) -> None:
    engine = engines(Recorder())
    log = Path(f"{tmp_path / 'triggers.db'}-wal")
    largest = 0
    for job_id in range(1, 6):  # probe 105: 30 jobs of ~14 MB left a 440 MB log
        await engine.register(job(job_id, ("complete-job-self", "x"), blob="y" * (8 << 20)))
        largest = max(largest, log.stat().st_size)
    for job_id in range(1, 6):
        await engine.publish(Event("removed", "job", job_id), wait=True)
        largest = max(largest, log.stat().st_size)
    engine.store.wait_for_checkpoints()
    assert log.stat().st_size <= 4 << 20
    # One job's transaction at most (~8 MiB, twice with SQLite's secure_delete zeroing the
    # pages a removal frees), never the jobs' together.
    assert largest <= 20 << 20


async def test_the_removals_remembered_are_bounded_by_their_number(engines: Engines) -> None:
    engine = engines(Recorder())
    with engine.store.transaction() as db:
        for job_id in range(1, 6):
            removals.remember(db, job_id, 100.0 + job_id)
        assert removals.prune(db, keep=3) == 2
        assert removals.take(db, 1) is None  # the oldest went
        assert removals.take(db, 5) == 105.0
        assert removals.take(db, 5) is None  # taken once
