"""Group commit of published events, on a real PostgreSQL and on SQLite.

Concurrent PublishEvent calls share transactions; each caller is answered only once its
event is committed (read back through a connection of its own); an event that fails
fails only its own call; a repeated event id is a repeat inside one group too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from executor.model import Event
from executor.triggers import event_ids
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.helpers.trigger_engines import LIMITS, Recorder, job

pytestmark = pytest.mark.service

JOB_ID = 3
ITEMS = 40


@pytest.fixture
async def engine(either_store: str) -> AsyncIterator[TriggerEngine]:
    made = TriggerEngine(TriggerStore(either_store), Recorder(), limits=LIMITS)
    made.register_job(
        job(
            JOB_ID,
            ("running-work-self-{work} && killed-work-self-{work}", "x"),
            agenda=[{"name": str(n), "status": "blocked"} for n in range(ITEMS)],
        )
    )
    made.start()
    try:
        yield made
    finally:
        await made.close()
        made.store.close()


def running(n: int, event_id: str = "") -> Event:
    return Event("running", "work", JOB_ID, work_name=str(n), event_id=event_id or f"run-{n}")


class Committed:
    """Reads which event ids are committed, through a connection of its own."""

    def __init__(self, store_path: str) -> None:
        self._store = TriggerStore(store_path)

    def __call__(self, event_id: str) -> bool:
        with self._store.outside_transaction() as db:
            row = db.execute(
                "SELECT 1 FROM seen_events WHERE id_key = ?", (event_ids.key(event_id),)
            )
            return row.fetchone() is not None

    def close(self) -> None:
        self._store.close()


async def test_concurrent_publishes_share_transactions_and_are_answered_once_committed(
    engine: TriggerEngine, either_store: str
) -> None:
    seen = Committed(either_store)
    before = engine.event_transactions
    answered_committed: list[bool] = []

    async def publish(n: int) -> Any:
        answer = await engine.publish(running(n), wait=False)
        answered_committed.append(seen(f"run-{n}"))
        return answer

    try:
        answers = await asyncio.gather(*(publish(n) for n in range(ITEMS)))
    finally:
        seen.close()

    assert all(answered_committed) and len(answered_committed) == ITEMS
    assert [duplicate for _, duplicate in answers] == [False] * ITEMS
    # The first call goes alone; the others came while it was in flight and share the next.
    assert engine.event_transactions - before <= 4
    assert engine.stats.events_published == ITEMS
    assert len(engine.store.callbacks_of(JOB_ID)) == 1


async def test_an_event_that_fails_fails_only_its_own_call(
    engine: TriggerEngine, either_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decide = engine._events.decide

    def failing(db: Any, event: Event, batch: str, **kwargs: Any) -> Any:
        if event.work_name == "13":
            raise ValueError("this event cannot be applied")
        return decide(db, event, batch, **kwargs)

    monkeypatch.setattr(engine._events, "decide", failing)
    answers = await asyncio.gather(
        *(engine.publish(running(n), wait=False) for n in range(ITEMS)), return_exceptions=True
    )

    failed = [n for n, answer in enumerate(answers) if isinstance(answer, BaseException)]
    assert failed == [13]
    assert isinstance(answers[13], ValueError)
    seen = Committed(either_store)
    try:
        assert [n for n in range(ITEMS) if not seen(f"run-{n}")] == [13]
    finally:
        seen.close()
    # A batch is all or none: the batched call with the bad event fails as a whole.
    with pytest.raises(ValueError, match="cannot be applied"):
        await engine.publish_many([running(13, "batch-13"), running(14, "batch-14")])
    assert (await engine.publish_many([running(15, "batch-14")]))[0][1] is False


async def test_a_repeated_event_id_is_a_repeat_within_one_group_too(
    engine: TriggerEngine,
) -> None:
    first = engine.publish(running(1, "same"), wait=False)
    again = engine.publish(running(1, "same"), wait=False)
    batch = engine.publish_many([running(2, "twice"), running(2, "twice")])
    (_, first_repeat), (_, again_repeat), applied = await asyncio.gather(first, again, batch)

    assert (first_repeat, again_repeat) == (False, True)
    assert [duplicate for _, duplicate in applied] == [False, True]
    assert engine.stats.events_published == 2


async def test_a_cancelled_call_still_runs_what_its_committed_event_fired(
    either_store: str,
) -> None:
    recorder = Recorder()
    engine = TriggerEngine(TriggerStore(either_store), recorder, limits=LIMITS)
    engine.register_job(job(JOB_ID, ("complete-work-self-{work}", "fired")))
    engine.start()
    try:
        call = asyncio.create_task(engine.publish(running(1), wait=False))
        await asyncio.sleep(0)  # its event has joined a group
        complete = Event("complete", "work", JOB_ID, work_name="1", event_id="complete-1")
        gone = asyncio.create_task(engine.publish(complete, wait=False))
        await asyncio.sleep(0)
        gone.cancel()  # the client went away while its transaction was in flight

        await call
        await recorder.ran(1)
        assert recorder.codes == ["fired"]
        assert engine.stats.callbacks_fired == 1
    finally:
        await engine.close()
        engine.store.close()
