"""The per-callback journal, near misses and ``why``, on the engine the service runs."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from executor.errors import NotFoundError
from executor.model import Event
from executor.triggers.journal import EntryKind, JournalLimits
from tests.helpers.trigger_engines import Engines, Recorder, job

pytestmark = pytest.mark.unit


def cb(triggers: str, code: str = "x", **extra: Any) -> dict[str, Any]:
    return {"triggers": triggers, "language": "qube", "code": code, **extra}


def registered(
    job_id: int, *callbacks: dict[str, Any], pgrp: int = 3, label: str = "", **extra: Any
) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": pgrp,
        "label": label,
        "user": "alice",
        **extra,
        "callbacks": list(callbacks),
    }


def agenda(*names: str, status: str = "pending") -> list[dict[str, str]]:
    return [{"name": name, "status": status} for name in names]


async def test_each_event_leaves_an_entry_saying_what_it_latched_and_what_is_still_open(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(12, label="ribgen", agenda=agenda("5")))
    engine.register_job(registered(14, label="render", agenda=agenda("5")))
    engine.register_job(registered(15, cb("complete-work-ribgen-5 && complete-work-render-5")))

    await engine.publish(Event("complete", "work", 12, work_name="5", event_id="e1"), wait=True)
    await engine.publish(Event("complete", "work", 12, work_name="5", event_id="e2"), wait=True)
    fired, _ = await engine.publish(Event("complete", "work", 14, work_name="5"), wait=True)

    (explained,) = engine.explain(15).callbacks
    first, again, last = explained.journal
    assert (first.kind, first.latched, first.already) == (
        EntryKind.MATCHED,
        ("complete-work-ribgen-5",),
        (),
    )
    assert first.waiting_for == "complete-work-render-5"
    assert first.seen.event.event_id == "e1"
    assert (again.kind, again.latched, again.already) == (
        EntryKind.MATCHED,
        (),
        ("complete-work-ribgen-5",),
    )
    assert (last.kind, last.latched, last.count) == (
        EntryKind.FIRED,
        ("complete-work-render-5",),
        1,
    )
    assert last.invocation_id == fired[0].invocation_id


async def test_a_spent_callback_says_its_maximum_was_reached(engines: Engines) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(5, cb("complete-work-self-*", maximum=1)))
    for frame in "12":
        await engine.publish(Event("complete", "work", 5, work_name=frame), wait=True)

    (explained,) = engine.explain(5).callbacks
    assert [entry.kind for entry in explained.journal] == [EntryKind.FIRED, EntryKind.SPENT]
    assert explained.journal[-1].reason == "maximum reached: fired 1 of 1 times"
    assert explained.spent and explained.waiting == ""


async def test_the_journal_keeps_the_newest_entries_and_none_past_their_age(
    engines: Engines,
) -> None:
    now = [1_800_000_000.0]
    engine = engines(
        Recorder(),
        clock=lambda: now[0],
        journal_limits=JournalLimits(entries=3, max_age_s=3600),
    )
    engine.register_job(registered(5, cb("complete-work-self-* && complete-job-9")))
    for frame in "123456":
        await engine.publish(Event("complete", "work", 5, work_name=frame), wait=True)
    names = [e.seen.event.work_name for e in engine.explain(5).callbacks[0].journal]
    assert names == ["4", "5", "6"]

    now[0] += 7200  # two hours later: past the maximum age
    await engine.publish(Event("running", "job", 77), wait=True)  # any event prunes
    assert engine.explain(5).callbacks[0].journal == ()


async def test_a_plain_callback_keeps_its_limit_whatever_items_fired_it(engines: Engines) -> None:
    engine = engines(Recorder(), journal_limits=JournalLimits(entries=2, max_age_s=3600))
    engine.register_job(
        registered(
            5, cb("failed-work-self-*"), cb("failed-work-self-{work}"), agenda=agenda(*"12345")
        )
    )
    for frame in "12345":
        await engine.publish(Event("failed", "work", 5, work_name=frame), wait=True)
    plain, _ = engine.explain(5, journal_limit=10).callbacks
    # A FIRED entry names the item that fired it; the callback still keeps only two.
    assert [(e.kind, e.work_name) for e in plain.journal] == [
        (EntryKind.FIRED, "4"),
        (EntryKind.FIRED, "5"),
    ]
    # A {work} callback keeps two per item: the first item's entry is still there.
    (first,) = engine.explain(5, 2, work_name="1").callbacks
    assert [(e.kind, e.work_name) for e in first.journal] == [(EntryKind.FIRED, "1")]


async def test_the_journal_and_the_latches_provenance_survive_a_restart(
    engines: Engines,
) -> None:
    first = engines(Recorder())
    first.register_job(registered(30, cb("complete-job-10 && complete-job-11")))
    await first.publish(Event("complete", "job", 10, event_id="half"), wait=True)

    explained = engines(Recorder()).explain(30).callbacks[0]

    assert [entry.seen.event.event_id for entry in explained.journal] == ["half"]
    latched, waiting = explained.atoms
    assert latched.latched and latched.latched_by is not None
    assert latched.latched_by.event == Event("complete", "job", 10, event_id="half")
    assert not waiting.latched and waiting.latched_by is None
    assert explained.waiting == "complete-job-11"


async def test_a_dry_run_explains_and_writes_nothing(engines: Engines) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(3, cb("complete-job-1 && complete-job-2"), cb("complete-job-2")))

    decision = engine.match(Event("complete", "job", 2), dry=True)

    assert [(e.callback_id, e.kind, e.latched, e.waiting_for) for e in decision.entries] == [
        (1, EntryKind.MATCHED, ("complete-job-2",), "complete-job-1"),
        (2, EntryKind.FIRED, ("complete-job-2",), ""),
    ]
    assert all(explained.journal == () for explained in engine.explain(3).callbacks)


# -- near misses ----------------------------------------------------------------------------


async def test_a_label_typo_is_a_near_miss_of_the_events_it_was_meant_for(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(12, label="ribgen", agenda=agenda("1")))
    engine.register_job(registered(15, cb("complete-work-ribgn-*"), label="comp"))

    decision = engine.match(Event("complete", "work", 12, work_name="1"), dry=False)

    assert decision.fired == []
    (miss,) = engine.explain(15).callbacks[0].journal
    assert miss.kind is EntryKind.NEAR_MISS
    assert miss.waiting_for == "complete-work-ribgn-*"
    assert miss.reason == (
        "label 'ribgn' names no job in pgrp 3 (labels there: comp, ribgen); "
        "this event was job 12 'ribgen' in pgrp 3"
    )


async def test_a_job_in_another_pgrp_is_a_near_miss_explained_with_both_pgrps(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(15, cb("complete-job-ribgen"), pgrp=3, label="comp"))
    engine.register_job(registered(40, pgrp=7, label="ribgen"))  # submitted on its own

    await engine.publish(Event("complete", "job", 40), wait=True)

    (miss,) = engine.explain(15).callbacks[0].journal
    assert miss.kind is EntryKind.NEAR_MISS
    assert miss.reason == (
        "label 'ribgen' names no job in pgrp 3; this event was job 40 'ribgen' in pgrp 7"
    )


async def test_a_label_that_resolves_in_its_own_pgrp_is_no_near_miss_of_other_pgrps(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(12, pgrp=3, label="ribgen"))
    engine.register_job(registered(15, cb("complete-job-ribgen"), pgrp=3))
    engine.register_job(registered(40, pgrp=7, label="ribgen"))

    await engine.publish(Event("complete", "job", 40), wait=True)

    assert engine.explain(15).callbacks[0].journal == ()


# -- why ------------------------------------------------------------------------------------


async def test_why_resolves_every_context_and_says_what_each_open_atom_waits_for(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(12, label="ribgen", agenda=agenda("5")))
    engine.register_job(registered(14, label="render", agenda=agenda("5")))
    engine.register_job(
        registered(
            15,
            cb("(complete-work-ribgen-5 && complete-work-render-5) || done-job-parent"),
            label="comp",
            pid=9,
        )
    )
    await engine.publish(Event("complete", "work", 12, work_name="5"), wait=True)
    await engine.publish(Event("running", "work", 14, work_name="5"), wait=True)

    job = engine.explain(15)
    (explained,) = job.callbacks
    ribgen, render, parent = explained.atoms
    assert (job.job_id, job.label, job.pgrp) == (15, "comp", 3)
    assert (ribgen.job_id, ribgen.pgrp, ribgen.latched) == (12, 3, True)
    assert ribgen.resolution == "job 12 'ribgen' in pgrp 3"
    assert render.state == "work 5 is running"
    assert parent.resolution == "parent: job 9 (not registered here)"
    assert explained.waiting == "complete-work-render-5 || done-job-parent"
    assert explained.waiting_for == (
        "complete-work-render-5: job 14 'render' in pgrp 3, work 5 is running",
        "done-job-parent: parent: job 9 (not registered here)",
    )


async def test_why_says_when_an_edge_atom_waits_for_something_that_already_happened(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(10, status="pending"))
    await engine.publish(Event("complete", "job", 10), wait=True)
    engine.register_job(registered(20, cb("complete-job-10")))  # Qube's documented pitfall

    (line,) = engine.explain(20).callbacks[0].waiting_for
    assert line.startswith("complete-job-10: job 10 in pgrp 3, job 10 is complete (already")
    assert "a level callback latches what has happened when it registers" in line


def test_why_of_a_job_or_callback_that_is_not_registered_is_not_found(
    tmp_path: Path, engines: Engines
) -> None:
    engine = engines(Recorder(), start=False)
    engine.register_job(registered(5, cb("complete-job-1")))
    with pytest.raises(NotFoundError, match="job 6 is not registered"):
        engine.explain(6)
    with pytest.raises(NotFoundError, match=r"job 5 has no callback 2 \(its callbacks: 1\)"):
        engine.explain(5, 2)


async def test_a_removed_job_leaves_the_engine(engines: Engines) -> None:
    engine = engines(Recorder())
    engine.register_job(registered(5, cb("complete-job-1"), label="gone"))
    await engine.publish(Event("removed", "job", 5), wait=True)
    with pytest.raises(NotFoundError):
        engine.explain(5)


async def test_a_database_from_before_the_journal_gains_it_and_keeps_its_latches(
    tmp_path: Path, engines: Engines
) -> None:
    old = engines(Recorder())
    old.register_job(registered(15, cb("complete-job-ribgen && complete-job-9"), label="comp"))
    await old.publish(Event("complete", "job", 9), wait=True)
    await old.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "triggers.db")) as db:
        # As an earlier version left it: none of this round's columns, tables or indexes.
        for statement in (
            "DROP INDEX atoms_unresolved",
            "DROP INDEX atoms_by_label",
            "ALTER TABLE atoms DROP COLUMN pgrp",
            "ALTER TABLE atoms DROP COLUMN label",
            "ALTER TABLE callbacks DROP COLUMN mode",
            "ALTER TABLE callbacks DROP COLUMN latched_by",
            "DROP TABLE journal",
            "DROP TABLE known_states",
            "DROP TABLE trigger_checks",
            "DROP TABLE work_latches",
        ):
            db.execute(statement)
        db.commit()

    engine = engines(Recorder())
    engine.register_job(registered(40, pgrp=7, label="ribgen"))
    await engine.publish(Event("complete", "job", 40), wait=True)

    (explained,) = engine.explain(15).callbacks
    assert [atom.latched for atom in explained.atoms] == [False, True]
    assert explained.atoms[1].latched_by is None  # set before provenance was kept
    (miss,) = explained.journal
    assert miss.kind is EntryKind.NEAR_MISS  # the old label atom found by the new index


async def test_why_does_not_wait_for_a_submission_again(engines: Engines) -> None:
    # "this waits for the next such event" said of a job's own submission, which never recurs.
    engine = engines(Recorder())
    engine.register_job(job(5, ("submit-job-self && complete-job-self", "unblock-self")))
    # Registered, not submitted yet: a scheduler publishes the submit event after (probe 128).
    (explained,) = engine.explain(5).callbacks
    assert not any("already happened" in line for line in explained.waiting_for)

    await engine.publish(Event("submit", "job", 5), wait=True)
    await engine.publish(Event("complete", "job", 5), wait=True)  # it fires
    (explained,) = engine.explain(5).callbacks
    (never, submitted, completed) = explained.waiting_for
    assert never == "it will not fire again: it needs submit-job-self, which will not latch again"
    assert submitted.endswith(
        "(already happened; a job is submitted once, so it will not come again)"
    )
    assert "will not come again" not in completed
