"""One callback per work item with ``{work}``: as separate callbacks would behave, and durable."""

from __future__ import annotations

import builtins
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from executor.model import Event
from executor.triggers import why
from executor.triggers.journal import EntryKind
from tests.helpers.trigger_engines import Engines, Recorder

pytestmark = pytest.mark.unit

FRAMES = ("1", "2", "3")
PER_FRAME = "complete-work-ribgen-{work} && complete-work-render-{work}"


def jobs(trigger: str, *, frames: tuple[str, ...] = FRAMES, **cb: Any) -> list[dict[str, Any]]:
    agenda = [{"name": frame, "status": "pending"} for frame in frames]
    blocked = [{"name": frame, "status": "blocked"} for frame in frames]
    return [
        {"id": 10, "pgrp": 10, "label": "ribgen", "agenda": agenda},
        {"id": 11, "pgrp": 10, "label": "render", "agenda": agenda},
        {
            "id": 12,
            "pgrp": 10,
            "label": "comp",
            "agenda": blocked,
            "callbacks": [
                {"triggers": trigger, "language": "qube", "code": "unblock-work-self", **cb}
            ],
        },
    ]


async def complete(engine: Any, job_id: int, frame: str) -> list[str]:
    fired, _ = await engine.publish(Event("complete", "work", job_id, work_name=frame), wait=True)
    return [f.work_name for f in fired]


async def test_the_per_frame_callback_fires_frame_by_frame_like_separate_callbacks(
    engines: Engines,
) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    for job in jobs(PER_FRAME):
        engine.register_job(job)

    assert await complete(engine, 10, "1") == []  # one of two: no frame fires
    assert await complete(engine, 11, "2") == []  # the other half, of another frame
    assert await complete(engine, 11, "1") == ["1"]
    assert await complete(engine, 10, "2") == ["2"]
    assert await complete(engine, 11, "3") == []

    assert [(run.work_name, run.callback.count) for run in recorder.runs] == [("1", 1), ("2", 1)]
    assert all(run.job_id == 12 and run.callback.id == 1 for run in recorder.runs)
    (stored,) = engine._store.callbacks_of(12)
    assert stored.count == 2  # in all; each item counts on its own


async def test_each_item_counts_against_maximum_on_its_own(engines: Engines) -> None:
    engine = engines(Recorder())
    for job in jobs("complete-work-ribgen-{work}", maximum=1):
        engine.register_job(job)

    assert await complete(engine, 10, "1") == ["1"]
    assert await complete(engine, 10, "1") == []  # frame 1 spent
    assert await complete(engine, 10, "2") == ["2"]  # frame 2 has its own count

    (explained,) = engine.explain(12).callbacks
    spent = [work for work in explained.work if work.spent]
    assert [work.work_names for work in spent] == [("1", "2")]


async def test_an_item_outside_the_agenda_is_a_near_miss(engines: Engines) -> None:
    engine = engines(Recorder())
    for job in jobs(PER_FRAME):
        engine.register_job(job)

    assert await complete(engine, 10, "9") == []

    (miss,) = engine.explain(12).callbacks[0].journal
    assert miss.kind is EntryKind.NEAR_MISS
    assert miss.reason.startswith("work '9' is not in the agenda of job 12 (1-3)")


async def test_an_atom_without_the_placeholder_latches_for_every_item(engines: Engines) -> None:
    engine = engines(Recorder())
    for job in jobs("complete-work-ribgen-{work} && complete-job-setup"):
        engine.register_job(job)
    engine.register_job({"id": 13, "pgrp": 10, "label": "setup"})

    assert await complete(engine, 10, "2") == []
    fired, _ = await engine.publish(Event("complete", "job", 13), wait=True)
    assert [f.work_name for f in fired] == ["2"]
    assert await complete(engine, 10, "3") == ["3"]  # setup stays latched for the others


async def test_why_shows_the_items_compactly_and_one_item_in_full(engines: Engines) -> None:
    engine = engines(Recorder())
    for job in jobs(PER_FRAME, frames=tuple(str(n) for n in range(1, 11))):
        engine.register_job(job)
    await complete(engine, 10, "1")
    await complete(engine, 11, "1")
    await complete(engine, 10, "5")

    (explained,) = engine.explain(12).callbacks
    assert explained.per_work
    assert [(w.work_names, w.count, w.latches) for w in explained.work] == [
        (("5",), 0, (True, False)),
        (("2", "3", "4", "6", "7", "8", "9", "10"), 0, (False, False)),
        (("1",), 1, (False, False)),
    ]
    five = explained.work[0]
    assert five.waiting == "complete-work-render-5"
    assert five.waiting_for == (
        "complete-work-render-5: job 11 'render' in pgrp 10, work 5 is pending",
    )
    assert five.atoms[0].latched_by is not None
    assert five.atoms[0].latched_by.event.work_name == "5"

    (one,) = engine.explain(12, 1, work_name="1").callbacks
    (item,) = one.work
    assert (item.work_names, item.count) == (("1",), 1)
    assert [entry.kind for entry in one.journal] == [EntryKind.MATCHED, EntryKind.FIRED]


async def test_item_state_survives_a_restart_and_a_re_registration(engines: Engines) -> None:
    recorder = Recorder()
    first = engines(recorder)
    for job in jobs(PER_FRAME):
        first.register_job(job)
    await complete(first, 10, "2")

    restarted = engines(recorder)
    restarted.register_job(jobs(PER_FRAME)[2])  # the same callback, registered again
    assert await complete(restarted, 11, "2") == ["2"]


async def test_a_big_agenda_costs_no_rows_until_events_name_its_items(
    tmp_path: Path, engines: Engines
) -> None:
    engine = engines(Recorder())
    frames = tuple(str(n) for n in range(1, 10_001))
    for job in jobs(PER_FRAME, frames=frames):
        engine.register_job(job)
    await complete(engine, 10, "5000")

    db = sqlite3.connect(tmp_path / "triggers.db")
    try:
        (rows,) = db.execute("SELECT count(*) FROM work_latches").fetchone()
        (callbacks,) = db.execute("SELECT count(*) FROM callbacks").fetchone()
        (indexed,) = db.execute("SELECT count(*) FROM atoms").fetchone()
    finally:
        db.close()
    assert (rows, callbacks, indexed) == (1, 1, 2)


async def test_many_half_latched_items_are_grouped_by_their_latches(engines: Engines) -> None:
    engine = engines(Recorder())
    for job in jobs(PER_FRAME, frames=tuple(str(n) for n in range(1, 31))):
        engine.register_job(job)
    for frame in range(1, 21):
        await complete(engine, 10, str(frame))

    (explained,) = engine.explain(12).callbacks
    assert [(len(w.work_names), w.latches, w.waiting, len(w.atoms)) for w in explained.work] == [
        (20, (True, False), "complete-work-render-{work}", 0),
        (10, (False, False), PER_FRAME, 0),
    ]


async def test_explaining_a_big_agenda_reads_it_once_however_many_items_are_held(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agenda was made a set again for each held item: 1,000 half-latched frames of a
    # 100,000-frame job took 5 s of each explanation (probe 53, the dashboard's jobs page).
    engine = engines(Recorder())
    for job in jobs(PER_FRAME, frames=tuple(str(n) for n in range(1, 2001))):
        engine.register_job(job)
    for frame in range(1, 51):
        await complete(engine, 10, str(frame))
    big_sets = []

    def counted(items: Any = ()) -> set[Any]:
        made = builtins.set(items)
        if len(made) >= 2000:
            big_sets.append(len(made))
        return made

    monkeypatch.setattr(why, "set", counted, raising=False)
    (explained,) = engine.explain(12).callbacks
    assert [len(w.work_names) for w in explained.work] == [50, 1950]
    assert len(big_sets) <= 1


# -- a job without an agenda: its items are those events name -----------------------------
# Found by probe 42: an atom without {work} latched only the items an earlier event had
# named, so an item named after it (or by the same event) never saw it.


def no_agenda(trigger: str, *, mode: str = "edge") -> dict[str, Any]:
    return {
        "id": 21,
        "pgrp": 20,
        "callbacks": [
            {"triggers": trigger, "language": "qube", "code": "unblock-work-self", "mode": mode}
        ],
    }


async def test_without_an_agenda_an_atom_without_work_latches_for_items_named_later(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job({"id": 20, "pgrp": 20, "label": "lb"})
    engine.register_job(no_agenda("complete-work-self-{work} && complete-job-lb"))

    fired, _ = await engine.publish(Event("complete", "job", 20), wait=True)
    assert fired == []
    (explained,) = engine.explain(21).callbacks
    assert explained.waiting == "complete-work-self-{work}"
    assert [e.latched for e in explained.journal] == [("complete-job-lb",)]

    assert await complete(engine, 21, "1") == ["1"]
    assert await complete(engine, 21, "7") == ["7"]
    assert await complete(engine, 21, "1") == []  # fired and reset, as frame 1's own would
    (item,) = engine.explain(21, work_name="1").callbacks[0].work
    assert item.waiting == "complete-job-lb"


async def test_without_an_agenda_one_event_naming_an_item_latches_its_wildcard_too(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(no_agenda("complete-work-self-{work} && complete-work-self-*"))

    assert await complete(engine, 21, "4") == ["4"]


async def test_without_an_agenda_level_mode_latches_for_every_item_at_registration(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job({"id": 20, "pgrp": 20, "label": "lb", "status": "complete"})
    registration = engine.register_job(
        no_agenda("complete-work-self-{work} && complete-job-lb", mode="level")
    )

    assert registration.fired == []
    assert await complete(engine, 21, "3") == ["3"]


async def test_without_an_agenda_what_latched_for_every_item_is_kept_when_it_is_true_alone(
    engines: Engines,
) -> None:
    # Nothing fires for items no event has named; the first event naming one fires it.
    engine = engines(Recorder())
    engine.register_job({"id": 20, "pgrp": 20, "label": "lb"})
    engine.register_job({"id": 19, "pgrp": 20, "label": "la"})
    engine.register_job(
        no_agenda("(complete-job-la || complete-work-self-{work}) && complete-job-lb")
    )
    for job_id in (19, 20):
        fired, _ = await engine.publish(Event("complete", "job", job_id), wait=True)
        assert fired == []

    assert await complete(engine, 21, "2") == ["2"]
    assert await complete(engine, 21, "2") == []  # item 2 fired and reset
    assert await complete(engine, 21, "5") == ["5"]


# -- an item a registration adds to the agenda -----------------------------------------------
# Found by probe 87: it started without what an atom without {work} had latched for every
# item, whereas an item an event first names (no agenda) starts from it.


def growing(*frames: str, mode: str = "edge", status: str = "pending") -> dict[str, Any]:
    return {
        "id": 22,
        "pgrp": 22,
        "status": status,
        "agenda": [{"name": frame, "status": "pending"} for frame in frames],
        "callbacks": [
            {
                "triggers": "complete-work-self-{work} && running-job-self",
                "language": "qube",
                "code": "unblock-work-self",
                "mode": mode,
            }
        ],
    }


async def test_an_item_a_registration_adds_starts_from_what_latched_for_every_item(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(growing("1"))
    await engine.publish(Event("running", "job", 22), wait=True)

    again = engine.register_job(growing("1", "2"))

    assert again.callbacks[0].latches == (False, True)
    (explained,) = engine.explain(22).callbacks
    assert explained.waiting == "complete-work-self-{work}"
    assert await complete(engine, 22, "2") == ["2"]
    assert await complete(engine, 22, "2") == []  # fired and reset, as frame 2's own would
    assert await complete(engine, 22, "1") == ["1"]


async def test_an_item_a_registration_adds_to_a_level_callback_starts_from_its_level_pass(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    assert engine.register_job(growing("1", mode="level", status="running")).fired == []

    engine.register_job(growing("1", "2", mode="level", status="running"))

    assert await complete(engine, 22, "2") == ["2"]
