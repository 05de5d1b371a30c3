"""Long triggers: what a journal entry and a batch hold, and a dry run's answer and thread."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import tracemalloc
from pathlib import Path

import pytest

from executor.api.triggers import MAX_DRY_RUN_ITEMS, MAX_DRY_RUN_LIST_BYTES, TriggerServicer
from executor.model import Event
from executor.triggers.journal import MAX_ENTRY_TEXT_CHARS, EntryKind
from executor.triggers.snapshots import MOST_READERS
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.servicer_context import FakeContext, as_context
from tests.helpers.trigger_engines import Engines, Recorder, job

pytestmark = pytest.mark.unit


def chain(count: int, name: str = "done-job-{}") -> str:
    return " && ".join(name.format(i) for i in range(1, count + 1))


def journal_rows(tmp_path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(tmp_path / "triggers.db")) as db:
        return [row[0] for row in db.execute("SELECT entry_json FROM journal ORDER BY seq")]


async def test_a_long_residual_is_journaled_cut_saying_how_many_atoms_it_left_out(
    engines: Engines, tmp_path: Path
) -> None:
    engine = engines(Recorder())
    engine.register_job(job(5000, (chain(3000), "x")))

    await engine.publish_many([Event("complete", "job", 1)])

    (stored,) = journal_rows(tmp_path)
    assert len(stored) < 3 * MAX_ENTRY_TEXT_CHARS  # the whole residual is ~45,000
    (entry,) = engine.explain(5000).callbacks[0].journal
    assert entry.kind is EntryKind.MATCHED and entry.latched == ("done-job-1",)
    waiting = entry.waiting_for
    assert len(waiting) <= MAX_ENTRY_TEXT_CHARS
    cut = re.fullmatch(r"(done-job-2 && .* && done-job-(\d+)) … \((\d+) more atoms\)", waiting)
    assert cut is not None, waiting
    shown = cut.group(1).split(" && ")
    assert shown == [f"done-job-{i}" for i in range(2, len(shown) + 2)]
    assert int(cut.group(3)) == 2999 - len(shown)


async def test_a_residual_that_fits_is_journaled_whole(engines: Engines) -> None:
    engine = engines(Recorder())
    engine.register_job(job(5000, ("(done-job-1 || done-job-2) && done-job-3 && done-job-4", "x")))

    await engine.publish(Event("complete", "job", 3), wait=True)

    (entry,) = engine.explain(5000).callbacks[0].journal
    assert entry.waiting_for == "(done-job-1 || done-job-2) && done-job-4"


async def test_a_long_trigger_still_fires_once_when_its_last_atom_latches(
    engines: Engines,
) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(5000, (chain(400, "done-job-{}-" + "w" * 40), "x")))

    await engine.publish_many([Event("complete", "job", i) for i in range(1, 400)])
    assert recorder.runs == []
    (waiting,) = engine.explain(5000).callbacks
    assert waiting.waiting == "done-job-400"
    await engine.publish_many([Event("complete", "job", 400)])
    await recorder.ran(1)
    assert engine.explain(5000).callbacks[0].journal[-1].kind is EntryKind.FIRED


async def test_a_batch_over_long_triggers_holds_no_more_than_its_cut_entries(
    engines: Engines,
) -> None:
    # The probe's shape, smaller: callbacks of 2,000 atoms each, a batch of tiny events.
    # Each event wrote ~35 KB of residual per callback, all held until the commit.
    engine = engines(Recorder())
    for j in range(10):
        engine.register_job(job(5000 + j, (chain(2000), "x"), pgrp=5000))
    events = [Event("complete", "job", i) for i in range(1, 41)]

    tracemalloc.start()
    try:
        await engine.publish_many(events)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 12 << 20, f"peak {peak >> 20} MiB"  # was ~60 MiB
    assert len(engine.explain(5000).callbacks[0].journal) == 20


async def test_a_batch_writes_its_journal_in_parts_and_keeps_the_newest_entries(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(job(7, ("complete-work-self-* && complete-job-9", "x")))
    frames = [str(n) for n in range(1, 2502)]

    await engine.publish_many([Event("complete", "work", 7, work_name=f) for f in frames])

    journal = engine.explain(7).callbacks[0].journal
    assert [entry.seen.event.work_name for entry in journal] == frames[-20:]


# -- DryRun -----------------------------------------------------------------------------


def dry(job_id: int) -> executor_pb2.DryRunRequest:
    return executor_pb2.DryRunRequest(name="complete", type="job", job_id=job_id)


async def test_a_dry_run_answers_at_most_its_items_and_counts_the_others(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    many = MAX_DRY_RUN_ITEMS + 5
    engine.register_job(
        job(9, *[("complete-job-1 && complete-job-2", f"x{i}") for i in range(many)])
    )
    engine.register_job(job(10, *[("complete-job-1", f"y{i}") for i in range(many)]))
    servicer = TriggerServicer(engine)

    reply = await servicer.DryRun(dry(1), as_context(FakeContext()))

    assert (len(reply.would_fire), reply.would_fire_left_out) == (MAX_DRY_RUN_ITEMS, 5)
    assert (len(reply.would_latch), reply.would_latch_left_out) == (MAX_DRY_RUN_ITEMS, 5)
    assert len(reply.explanations) == MAX_DRY_RUN_ITEMS
    assert reply.explanations_left_out == 2 * many - MAX_DRY_RUN_ITEMS
    # The first ones, in firing order.
    assert [f.callback_id for f in reply.would_fire][:2] == [1, 2]
    assert reply.would_fire[0].job_id == 10 and reply.would_latch[0].job_id == 9


async def test_a_dry_run_answer_stays_within_what_a_client_takes(engines: Engines) -> None:
    # 150 callbacks of ~60 KB triggers: their would_latch alone was ~18 MB, past the
    # 16 MiB a client accepts.
    engine = engines(Recorder())
    long_atoms = " && ".join(f"done-work-self-{n}{'w' * 1000}" for n in range(58))
    engine.register_job(job(9, *[(f"complete-job-1 && {long_atoms}", f"x{i}") for i in range(150)]))
    servicer = TriggerServicer(engine)

    reply = await servicer.DryRun(dry(1), as_context(FakeContext()))

    assert reply.ByteSize() < 3 * MAX_DRY_RUN_LIST_BYTES + (1 << 20) < 16 << 20
    assert 0 < len(reply.would_latch) < 150
    assert len(reply.would_latch) + reply.would_latch_left_out == 150
    assert len(reply.explanations) + reply.explanations_left_out == 150


async def test_a_dry_run_reads_off_the_event_loop(engines: Engines) -> None:
    """While every snapshot connection is taken, a dry run waits on its thread; calls go on."""
    engine = engines(Recorder())
    engine.register_job(job(9, ("complete-job-1 && complete-job-2", "x")))
    servicer = TriggerServicer(engine)
    with contextlib.ExitStack() as taken:
        for _ in range(MOST_READERS):  # every connection the store reads snapshots on
            taken.enter_context(engine.store.snapshot())
        pending = asyncio.ensure_future(servicer.DryRun(dry(2), as_context(FakeContext())))
        published = await servicer.PublishEvent(
            executor_pb2.PublishEventRequest(name="complete", type="job", job_id=1),
            as_context(FakeContext()),
        )
        assert published.fired == [] and not pending.done()
    reply = await asyncio.wait_for(pending, 10)
    # Read once the connections were free: the event published meanwhile is in its state.
    assert [f.callback_id for f in reply.would_fire] == [1]
