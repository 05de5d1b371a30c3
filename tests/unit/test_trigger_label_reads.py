"""What an event's near-miss lookup and a registration read does not grow with the jobs registered.

An event's near misses are the label atoms of its pgrp (and of others naming its job's
label) that no job holds; a registration's checks look up the labels its atoms name.
Each is an index lookup per atom (store_schema.py's partial indexes): registering more jobs,
elsewhere or in the same pgrp, leaves the work of one event or one registration as it
was. The work is counted in SQLite's virtual machine steps, which a given plan on given
rows takes the same number of every time (a table scan's grow with the table).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from executor.model import Event
from executor.triggers.checks import CheckKind, Surroundings, trigger_checks
from executor.triggers.engine import TriggerEngine
from executor.triggers.evaluate import JobPlace
from executor.triggers.journal import EntryKind
from executor.triggers.parser import parse
from executor.triggers.store import TriggerStore
from tests.helpers.trigger_engines import LIMITS, Recorder, job

# The chained pipelines' first job id and length; unrelated jobs take the ids below.
FIRST = 100_000
CHAIN = 30
UNRELATED = 1500
LABEL_KINDS = (CheckKind.UNKNOWN_LABEL, CheckKind.LABEL_SPLIT)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[TriggerEngine]:
    made = TriggerEngine(TriggerStore(str(tmp_path / "triggers.db")), Recorder(), limits=LIMITS)
    made.start()
    try:
        yield made
    finally:
        await made.close()
        made.store.close()


@contextmanager
def steps(engine: TriggerEngine) -> Iterator[Callable[[], int]]:
    """The virtual machine steps the store's connection takes while the block runs."""
    with steps_of(engine.store._db) as taken:  # the SQLite connection whose steps are counted
        yield taken


@contextmanager
def dry_steps(engine: TriggerEngine) -> Iterator[Callable[[], int]]:
    """The steps of the snapshot connections a dry run reads on, while the block runs."""
    real = engine.store.snapshot
    counted: list[Callable[[], int]] = []

    @contextmanager
    def snapshot() -> Iterator[Any]:
        with real() as db, steps_of(db) as taken:
            counted.append(taken)
            yield db

    engine.store.snapshot = snapshot  # type: ignore[method-assign]
    try:
        yield lambda: sum(taken() for taken in counted)
    finally:
        del engine.store.snapshot


@contextmanager
def steps_of(db: object) -> Iterator[Callable[[], int]]:
    assert isinstance(db, sqlite3.Connection)
    taken = 0

    def count() -> int:
        nonlocal taken
        taken += 1
        return 0

    db.set_progress_handler(count, 1)
    try:
        yield lambda: taken
    finally:
        db.set_progress_handler(None, 1)


def chained(job_id: int, pgrp: int, *, level: bool = False) -> dict[str, Any]:
    """A labelled job of a pipeline waiting for the frame 5 of the job before it."""
    before = f"L{job_id - 1}" if job_id > FIRST else "self"
    made = job(job_id, (f"complete-work-{before}-5", "x"), label=f"L{job_id}", pgrp=pgrp)
    if level:
        made["callbacks"].append(
            {"triggers": f"done-job-{before}", "language": "qube", "code": "y", "mode": "level"}
        )
    return made


def unrelated(count: int) -> Iterator[dict[str, Any]]:
    """Jobs of pgrps of their own, ids below the pipelines' (a table scan meets them first)."""
    return (job(job_id, pgrp=job_id) for job_id in range(1, count + 1))


async def test_an_events_near_miss_lookup_reads_no_more_when_more_jobs_are_registered(
    engine: TriggerEngine,
) -> None:
    # Two pgrps with the same labels: the atoms of one name the labels of the other's jobs.
    for job_id in range(FIRST, FIRST + CHAIN):
        engine.register_job(chained(job_id, pgrp=7))
        engine.register_job(chained(job_id + CHAIN, pgrp=8) | {"label": f"L{job_id}"})

    async def publish(event_id: str) -> tuple[int, int]:
        event = Event("complete", "work", FIRST + 10, work_name="5", event_id=event_id)
        with steps(engine) as published:
            await engine.publish_many([event])
        with dry_steps(engine) as dry:
            engine.match(event, dry=True)
        return published(), dry()

    before = await publish("first")
    for other in unrelated(UNRELATED):
        engine.register_job(other)
    after = await publish("second")

    assert after[0] < before[0] * 1.25, (before, after)
    assert after[1] < before[1] * 1.25, (before, after)
    # Every label resolves: the callback waiting for the event's job fired, and the one of
    # pgrp 8 naming its label (which a job of pgrp 8 holds) was no near miss.
    fired = engine.explain(FIRST + 11).callbacks[0].journal
    assert [entry.kind for entry in fired] == [EntryKind.FIRED, EntryKind.FIRED]
    assert not engine.explain(FIRST + CHAIN + 11).callbacks[0].journal


@pytest.mark.parametrize("level", [False, True], ids=["edge", "level"])
async def test_a_registration_reads_no_more_in_a_bigger_pgrp(
    engine: TriggerEngine, level: bool
) -> None:
    def register(job_id: int) -> int:
        with steps(engine) as taken:
            registration = engine.register_job(chained(job_id, pgrp=7, level=level))
        assert not [check for check in registration.checks if check.label], registration.checks
        return taken()

    for job_id in range(FIRST, FIRST + CHAIN):
        register(job_id)
    small = register(FIRST + CHAIN)
    for job_id in range(FIRST + CHAIN + 1, FIRST + 10 * CHAIN):
        engine.register_job(chained(job_id, pgrp=7, level=level))
    for other in unrelated(UNRELATED):
        engine.register_job(other)
    big = register(FIRST + 10 * CHAIN)

    assert big < small * 1.25, (small, big)


@pytest.mark.parametrize(
    "trigger",
    [
        "complete-job-shot-v2-x",  # 'shot' held; splits of 'shot-v2' and 'shot-v2-x'
        "complete-work-shot-v2-5",  # the same, as a work atom
        "complete-job-take-v1",  # 'take' held by no job: all the labels listed
        "complete-job-shoot && done-job-other",  # a typo ('shot'), and a label held
    ],
)
async def test_a_registrations_label_checks_are_those_all_the_pgrps_labels_give(
    engine: TriggerEngine, trigger: str
) -> None:
    for job_id, label in enumerate(["shot-v2-x", "shot", "other", "shot-v2", "take-v1"], 1):
        engine.register_job(job(job_id, label=label, pgrp=4))
    for job_id in range(10, 10 + CHAIN):
        engine.register_job(job(job_id, label=f"L{job_id}", pgrp=4))

    registration = engine.register_job(job(100, (trigger, "x"), label="comp", pgrp=4))

    place = JobPlace(100, pgrp=4, label="comp")
    every = engine.store.labels_in(4)  # comp among them, as the registration's own
    expected = trigger_checks(parse(trigger), 1, Surroundings(place, every, {}))
    assert [(c.kind, c.message) for c in registration.checks if c.kind in LABEL_KINDS] == [
        (c.kind, c.message) for c in expected if c.kind in LABEL_KINDS
    ]
    assert any(c.kind in LABEL_KINDS for c in expected)
