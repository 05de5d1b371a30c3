"""An event_id reused for another event is refused, on SQLite and on PostgreSQL alike.

The store keeps a fingerprint of each event with its id (event_id_reuse.py): a resend of
the same event is a repeat, as before; another event under the same id (a publisher's
counter reset, ids per job reused across jobs) was answered ``duplicate`` with the first
event's firings and dropped without a trace (probe 116 F3).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Final

import pytest

from executor.errors import AlreadyExistsError
from executor.migrations import _steps, migrate, schema_version
from executor.model import Event
from executor.sql import connect_postgres
from executor.triggers import event_id_reuse, event_ids
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.helpers.postgres import PostgresServer
from tests.helpers.trigger_engines import LIMITS, MakeEngine, Recorder, job

pytestmark = pytest.mark.service

FIRST, SECOND = 1101, 1102


def ran_by(engine: TriggerEngine) -> Recorder:
    """The stand-in runner the ``engines`` fixture gave the engine."""
    run = engine._fired._run
    assert isinstance(run, Recorder)
    return run


def complete(job_id: int, event_id: str) -> Event:
    return Event("complete", "job", job_id, event_id=event_id)


async def test_an_id_reused_for_another_event_is_refused_naming_the_first(
    engines: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engines()
    recorder = ran_by(engine)
    engine.register_job(job(FIRST, ("complete-job-self", "saw A")))
    engine.register_job(job(SECOND, ("complete-job-self", "saw B")))
    fired, duplicate = await engine.publish(complete(FIRST, "reuse-1"), wait=True)
    assert (len(fired), duplicate) == (1, False)

    with caplog.at_level(logging.WARNING), pytest.raises(AlreadyExistsError) as refused:
        await engine.publish(complete(SECOND, "reuse-1"), wait=True)
    message = str(refused.value)
    assert "event_id 'reuse-1' was first used for another event" in message
    assert f"job {FIRST} callback 1" in message  # what the first event fired
    assert f"complete-job-{SECOND}" in message  # the event refused
    assert "a new event_id" in message
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [message]
    assert recorder.codes == ["saw A"]  # callback B never fired

    # The same event again under its id is still a repeat, answered with its firings.
    again, duplicate = await engine.publish(complete(FIRST, "reuse-1"), wait=True)
    assert duplicate
    assert [f.invocation_id for f in again] == [f.invocation_id for f in fired]
    # The refused event, published under an id of its own, fires its callback.
    fired_b, duplicate = await engine.publish(complete(SECOND, "reuse-2"), wait=True)
    assert (len(fired_b), duplicate) == (1, False)
    assert recorder.codes == ["saw A", "saw B"]


async def test_an_event_that_fired_nothing_is_refused_too(engines: MakeEngine) -> None:
    engine = engines()
    await engine.publish(Event("running", "work", 5, work_name="7", event_id="w"), wait=False)
    with pytest.raises(AlreadyExistsError, match=r"it fired nothing.*running-work-5-8"):
        await engine.publish(Event("running", "work", 5, work_name="8", event_id="w"), wait=False)
    # Only the item differs; the same item again is a repeat.
    _, duplicate = await engine.publish(
        Event("running", "work", 5, work_name="7", event_id="w"), wait=False
    )
    assert duplicate


async def test_a_batch_with_a_reused_id_is_refused_whole_naming_the_event(
    engines: MakeEngine,
) -> None:
    engine = engines()
    recorder = ran_by(engine)
    engine.register_job(job(FIRST, ("complete-job-self", "saw A")))
    engine.register_job(job(SECOND, ("complete-job-self", "saw B")))
    # Within the batch: its events[0] is the first use.
    with pytest.raises(AlreadyExistsError) as refused:
        await engine.publish_many([complete(FIRST, "dupX"), complete(SECOND, "dupX")])
    assert getattr(refused.value, "index", None) == 1
    assert f"events[0] of this call: complete-job-{FIRST}" in str(refused.value)
    # All or none: the first event was not applied either.
    applied = await engine.publish_many([complete(FIRST, "dupX"), complete(FIRST, "dupX")])
    assert [(len(fired), duplicate) for fired, duplicate in applied] == [(1, False), (0, True)]
    # Against an id the store remembers: the batch's third event is refused.
    with pytest.raises(AlreadyExistsError) as refused:
        await engine.publish_many(
            [complete(SECOND, "b-0"), complete(FIRST, "dupX"), complete(SECOND, "dupX")]
        )
    assert getattr(refused.value, "index", None) == 2
    await recorder.ran(1)
    assert recorder.codes == ["saw A"]


async def test_a_refused_call_in_a_shared_transaction_fails_alone(engines: MakeEngine) -> None:
    # Calls published at once share a transaction (group commit): the one that reuses an
    # id fails, the others are applied.
    engine = engines()
    recorder = ran_by(engine)
    engine.register_job(job(FIRST, ("complete-job-self", "saw A")))
    engine.register_job(job(SECOND, ("complete-job-self", "saw B")))
    calls = [
        engine.publish(Event("running", "work", 9, work_name=str(n), event_id=f"r{n}"), wait=False)
        for n in range(10)
    ]
    answers = await asyncio.gather(
        *calls[:5],
        engine.publish(complete(FIRST, "shared"), wait=False),
        engine.publish(complete(SECOND, "shared"), wait=False),
        *calls[5:],
        return_exceptions=True,
    )
    refused = [answer for answer in answers if isinstance(answer, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], AlreadyExistsError)
    assert sum(1 for answer in answers if not isinstance(answer, BaseException)) == 11
    await recorder.ran(1)
    assert recorder.codes == ["saw A"]


def engine_on(store: str) -> TriggerEngine:
    engine = TriggerEngine(TriggerStore(store), Recorder(), limits=LIMITS)
    engine.start()
    return engine


async def unknown_ids_are_repeats_and_new_ones_checked(store: str, unknown: list[str]) -> None:
    """Every id of ``unknown`` (kept with no fingerprint) is a repeat of any event."""
    engine = engine_on(store)
    try:
        for n, event_id in enumerate(unknown):
            _, duplicate = await engine.publish(complete(FIRST + n, event_id), wait=False)
            assert duplicate, event_id
        await engine.publish(complete(FIRST, "new"), wait=False)
        with pytest.raises(AlreadyExistsError, match="'new' was first used for another event"):
            await engine.publish(complete(SECOND, "new"), wait=False)
    finally:
        await engine.close()
        engine.store.close()


async def test_an_sqlite_store_of_an_earlier_version_gains_the_column(tmp_path: Path) -> None:
    path = str(tmp_path / "triggers.db")
    TriggerStore(path).close()
    db = sqlite3.connect(path)
    # The table as the version before kept it: ids only.
    db.executescript(
        "DROP TABLE seen_events; CREATE TABLE seen_events (id_key BLOB PRIMARY KEY,"
        " seen_at REAL NOT NULL, fired_json TEXT NOT NULL DEFAULT '');"
    )
    db.execute("INSERT INTO seen_events VALUES (?, ?, '')", (event_ids.key("old"), time.time()))
    db.commit()
    db.close()
    await unknown_ids_are_repeats_and_new_ones_checked(path, ["old"])


# The schema step that adds the events' fingerprints.
FINGERPRINT_STEP: Final = _steps().index(event_id_reuse.PG_COLUMN) + 1


async def test_the_fingerprint_step_keeps_the_ids_and_old_replicas_working(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("fingerprints")
    assert migrate(url) == (0, schema_version())
    db = connect_postgres(url)
    try:
        # The table as the step before left it, with an id remembered.
        db.execute("ALTER TABLE seen_events DROP COLUMN fingerprint")
        db.execute(
            "INSERT INTO seen_events (id_key, seen_at) VALUES (?, ?)",
            (event_ids.key("old"), time.time()),
        )
        db.execute("DELETE FROM cbexec_schema WHERE version >= ?", (FINGERPRINT_STEP,))
    finally:
        db.close()
    assert migrate(url) == (FINGERPRINT_STEP - 1, schema_version())
    # A replica of the version before, still running until restarted, inserts ids without
    # a fingerprint: they read as unknown, repeats of any event.
    old = connect_postgres(url)
    try:
        old.execute(
            "INSERT INTO seen_events (id_key, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (event_ids.key("from-old"), time.time()),
        )
    finally:
        old.close()
    await unknown_ids_are_repeats_and_new_ones_checked(url, ["old", "from-old"])
